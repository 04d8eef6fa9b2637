"""A faster encoder for staging's short documents, when it gives exactly the model's ids.

Staging spends most of its time encoding short documents to count (and keep) their token ids.
For WordPiece tokenizers (all-MiniLM-L6-v2, BGE, E5 ...) `nanotoken` produces the same ids as
HuggingFace ``tokenizers`` about ten times faster (benchmarks/token_ids.py prints both). It is
used only when it loads the tokenizer's own ``tokenizer.json`` and then agrees with
``tokenizers`` on every text of a built-in check (real sentences in several scripts and hostile
pieces: control characters, accents, special-token strings, long words); otherwise staging uses
``tokenizers`` itself, so the ids are the model's either way. ``EMBED_FAST_TOKENIZER=0`` turns
it off: the producer's and the worker's settings read it and staging passes it in
(``StageConfig.fast_tokenizer`` -> ``choose``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

Encoder = Callable[[list[str]], list[list[int]]]

_CHECK_PIECES = ["\x00", "\x1c", "\u200b", "\ufeff", "\u00ad", "e\u0301", "\u0300", "ﬁ", "İstanbul",
                 "ǅ", "Ñandú", "日本語の文。", "中文没有空格", "한국어 문장. ", "😀👩‍👧", "[CLS]",
                 "[SEP] [MASK]", "##ing", "<s>", "\t", "\r\n", "\u3000", "\u00a0",
                 "supercalifragilisticexpialidocious" * 4, "U.S.A.", "(see: [1])", "3.14159"]
_CACHE: dict[int, tuple[Any, Encoder, bool]] = {}


def choose(tokenizer: Any, *, fast: bool = True) -> Encoder:
    """Decide once which encoder ``tokenizer`` uses (``fast=False``: ``tokenizers`` itself,
    never nanotoken); later ``encoder_for``/``is_fast`` calls keep the choice."""
    hit = (tokenizer, *_pick(tokenizer, fast))
    _CACHE[id(tokenizer)] = hit
    return hit[1]


def encoder_for(tokenizer: Any) -> Encoder:
    """``texts -> ids`` (special tokens added, no truncation) for ``tokenizer``, the fastest that
    matches it exactly (or as ``choose`` decided). Cached per tokenizer object."""
    return _chosen(tokenizer)[1]


def nanotoken_of(tokenizer: Any) -> Any:
    """The nanotoken tokenizer ``encoder_for(tokenizer)`` uses, or None (``tokenizers``)."""
    return getattr(_chosen(tokenizer)[1], "nanotoken", None)


def is_fast(tokenizer: Any) -> bool:
    """Whether ``encoder_for(tokenizer)`` is the fast encoder (encoding is then cheap)."""
    return _chosen(tokenizer)[2]


def _chosen(tokenizer: Any) -> tuple[Any, Encoder, bool]:
    hit = _CACHE.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        # Holding the tokenizer keeps its id from being reused by another object.
        hit = (tokenizer, *_pick(tokenizer, True))
        _CACHE[id(tokenizer)] = hit
    return hit


def _pick(tokenizer: Any, fast: bool) -> tuple[Encoder, bool]:
    enc = _fast(tokenizer) if fast else None
    return (enc or _reference(tokenizer), enc is not None)


def _reference(tokenizer: Any) -> Encoder:
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    return lambda texts: [e.ids for e in encode_batch(texts)]


def _fast(tokenizer: Any) -> Encoder | None:
    to_str = getattr(tokenizer, "to_str", None)
    if to_str is None or tokenizer.truncation is not None:
        return None
    try:
        import nanotoken
    except ImportError:
        return None
    try:
        nt = nanotoken.Tokenizer.from_json(to_str())
    except Exception:  # nanotoken.UnsupportedTokenizerError: not WordPiece, not for it
        return None

    def enc(texts: list[str]) -> list[list[int]]:
        return nt.encode_batch_list(texts, parallel=False)

    sample = _check_texts()
    if enc(sample) != _reference(tokenizer)(sample):
        log.warning("nanotoken's ids differ from tokenizers' for this tokenizer: staging uses "
                    "tokenizers (slower, same result)")
        return None
    enc.nanotoken = nt  # type: ignore[attr-defined]
    return enc


def _check_texts() -> list[str]:
    from worker.export.samples import SAMPLE_TEXTS

    texts = list(SAMPLE_TEXTS) + _CHECK_PIECES
    texts += [" ".join(_CHECK_PIECES[i:] + _CHECK_PIECES[:i]) for i in range(len(_CHECK_PIECES))]
    texts += [a + b for a in _CHECK_PIECES for b in _CHECK_PIECES[:8]]
    return texts
