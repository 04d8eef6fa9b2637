"""Stage 9: content hashes and cache keys (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

KEY_VERSION = "emb:v1"


def text_sha256(text: str) -> str:
    """sha256 hex of the exact UTF-8 text that is embedded (prefix included)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_key(fingerprint: str, sha256_hex: str, outputs: Sequence[str] = ("dense",)) -> str:
    """``emb:v1:<bundle fingerprint>:<sha256 of the embedded text>``.

    The fingerprint covers the ONNX bytes, tokenizer, pooling, normalisation, max length and
    precision, so a change to any of them never reads a stale vector. A job that wants more
    than the dense vector keys on its output set too, so a dense-only entry is not its hit.

    >>> content_key("abc", "00ff")
    'emb:v1:abc:00ff'
    >>> content_key("abc", "00ff", ("dense", "sparse"))
    'emb:v1:abc+dense,sparse:00ff'
    """
    if tuple(outputs) == ("dense",):
        return f"{KEY_VERSION}:{fingerprint}:{sha256_hex}"
    return f"{KEY_VERSION}:{fingerprint}+{','.join(outputs)}:{sha256_hex}"
