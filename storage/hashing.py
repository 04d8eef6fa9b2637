"""Stage 9a: content hashes and cache keys (pure)."""

from __future__ import annotations

import hashlib

KEY_VERSION = "emb:v1"


def text_sha256(text: str) -> str:
    """sha256 hex of the exact UTF-8 text that is embedded (prefix included)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_key(fingerprint: str, sha256_hex: str) -> str:
    """``emb:v1:<bundle fingerprint>:<sha256 of the embedded text>``.

    The fingerprint covers the ONNX bytes, tokenizer, pooling, normalisation, max length and
    precision, so a change to any of them never reads a stale vector.

    >>> content_key("abc", "00ff")
    'emb:v1:abc:00ff'
    """
    return f"{KEY_VERSION}:{fingerprint}:{sha256_hex}"
