"""Where a tokenizer's counts add up, so a chunk's tokens can be counted without re-encoding it.

A tokenizer normalises the text, splits it into pre-tokens (words), then splits each word into
tokens on its own. When the normaliser works character by character and the pre-tokenizer
always splits at a given whitespace character, a chunk cut just before such a character holds
exactly the whole document's tokens of the words it spans: its count is the document's token
count over that range plus a fixed overhead (special tokens and the prefix). That is what lets
the chunker tokenise a long document once (``chunk once``).

Only tokenizers whose pipeline is known to behave so are trusted (an allow-list read from the
tokenizer's own JSON); for any other tokenizer, and for any chunk whose ends are not clean cuts,
the chunker re-encodes the chunk as before. The allow-list covers WordPiece/BERT
(``BertNormalizer`` + ``BertPreTokenizer``: splits at every ASCII whitespace) and
SentencePiece-style Unigram/BPE (``Metaspace``: splits at a space only; a newline or tab stays
inside the word, so a cut there is re-encoded). Verified against re-encoding on the real
all-MiniLM-L6-v2 tokenizer and the test XLM-R Unigram tokenizer
(tests/unit/worker/staging/test_tokenwise.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PIECE_CHARS = 4096
"""The whole-document tokenisation runs on pieces of about this many characters, cut at a clean
split character. One `encode` of a multi-MB string is slow and superlinear (about 1.5 MB/s and
2.6 GB peak for 10 MB of text); small pieces through `encode_batch` are several times faster."""

_CHARWISE_NORMALIZERS = {"BertNormalizer", "NFC", "NFD", "NFKC", "NFKD", "Lowercase",
                         "StripAccents", "Precompiled"}
"""Normalisers that map each character on its own (no look at the neighbours)."""

_BERT_SPLITS = " \t\n\r"
_SPACE = " "
_CANDIDATES = "\t\n\r\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009" \
              "\u200a\u202f\u205f\u3000"
"""Whitespace that a normaliser may map to a plain space (then it splits like one)."""


@dataclass(frozen=True)
class Additivity:
    """How counts add up for one tokenizer and prefix.

    ``splits``: the characters the pre-tokenizer always splits at ("" when counts cannot be
    trusted to add up: every chunk is then re-encoded). ``overhead``: tokens a chunk gets on top
    of its own words (special tokens and the prefix), for a chunk starting with a split character
    and for one starting with a word.
    """

    splits: str
    overhead_at_split: int
    overhead_at_word: int
    verify_all: bool = False
    """Re-encode every chunk all the same, and take token offsets from ``tokenizers`` (never
    ``faststarts``): the reference the tests compare with."""

    @property
    def trusted(self) -> bool:
        return bool(self.splits)

    @property
    def count_from_doc(self) -> bool:
        return self.trusted and not self.verify_all


def additivity(tokenizer: Tokenizer, prefix: str) -> Additivity:
    """What the chunker may assume of ``tokenizer`` with ``prefix`` before every chunk."""
    to_str = getattr(tokenizer, "to_str", None)  # a stand-in without its JSON: not trusted
    norm = getattr(tokenizer, "normalizer", None)
    splits = (_split_chars(json.loads(to_str()), norm.normalize_str if norm else None)
              if to_str is not None else "")
    if splits and prefix and not prefix[-1] in splits:
        splits = ""  # "search_query:" + a word would merge into one pre-token
    if not splits:
        return Additivity("", 0, 0)

    def overhead(body: str) -> int:
        whole = len(tokenizer.encode(prefix + body, add_special_tokens=True).ids)
        return whole - len(tokenizer.encode(body, add_special_tokens=False).ids)

    return Additivity(splits, overhead(splits[0] + "a"), overhead("a"))


def clean_start(text: str, start: int, splits: str) -> bool:
    """A chunk starting at ``start`` tokenises its first word as the whole document does."""
    return start == 0 or text[start] in splits or text[start - 1] in splits


def clean_end(text: str, end: int, splits: str) -> bool:
    """A chunk ending at ``end`` (exclusive) keeps its last word whole and ends before a whole
    run of split characters (so a normaliser collapsing the run sees it whole in the next)."""
    return end >= len(text) or (text[end] in splits and text[end - 1] not in splits)


def token_starts(text: str, tokenizer: Tokenizer, splits: str = "", *, fast: bool = True
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Start offset of every token of ``text`` (no special tokens), non-decreasing, and the char
    offsets where a piece was cut at something other than a ``splits`` character (a chunk that
    spans one of those is re-encoded). ``fast``: offsets from ids where ``faststarts`` applies
    (the same array); False: always ``tokenizers``' offsets (the reference)."""
    starts, unclean, _ = token_starts_ids(text, tokenizer, splits, fast=fast)
    return starts, unclean


def token_starts_ids(text: str, tokenizer: Tokenizer, splits: str = "", *, fast: bool = True
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``token_starts`` and the tokens' ids (the same tokens, no special tokens)."""
    pieces = list(pieces_of(text, splits))
    unclean = _unclean(text, pieces, splits)
    found: list[np.ndarray | None] = [None] * len(pieces)
    ids: list[np.ndarray | None] = [None] * len(pieces)
    if fast:
        from worker.staging.faststarts import all_safe, fast_starts, refine, vocab_for

        vocab = vocab_for(tokenizer)
        if vocab is not None:
            safe = all_safe(text)
            pieces = pieces if safe else refine(pieces)
            found, _, ids = fast_starts(text, pieces, vocab, safe)
    _encode_slow(tokenizer, pieces, found, ids)
    return _sorted(_joined(found)), unclean, _joined(ids)


BATCH_CHARS = 65_536
"""``token_starts_batch`` takes texts up to this long together; a longer one goes alone."""


def token_starts_batch(texts: list[str], tokenizer: Tokenizer, splits: str = "", *,
                       fast: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``token_starts_ids`` of each text (the same arrays), the fast path's texts together:
    one nanotoken call and one numpy pass over them joined by newlines, instead of a few dozen
    small numpy calls per text (most of the time for texts of a few thousand characters)."""
    from worker.staging.faststarts import vocab_for

    vocab = vocab_for(tokenizer) if fast else None
    together = [k for k, t in enumerate(texts) if len(t) <= BATCH_CHARS] if vocab else []
    out: list[Any] = [None] * len(texts)
    if len(together) > 1:
        for k, res in zip(together, _joined_starts([texts[k] for k in together], tokenizer,
                                                   splits, vocab), strict=True):
            out[k] = res
    return [token_starts_ids(t, tokenizer, splits, fast=fast) if r is None else r
            for t, r in zip(texts, out, strict=True)]


def _joined_starts(texts: list[str], tokenizer: Tokenizer, splits: str, vocab: Any
                   ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from worker.staging.faststarts import all_safe, fast_starts, refine, safe_pieces

    pieces: list[tuple[int, str]] = []
    first, bases, uncleans, safe, safe_all, at = [], [], [], [], True, 0
    for text in texts:
        own = list(pieces_of(text, splits))
        uncleans.append(_unclean(text, own, splits))
        first.append(len(pieces))
        if all_safe(text):
            safe += range(len(pieces), len(pieces) + len(own))
        else:
            own, safe_all = refine(own), False
            safe += [len(pieces) + i for i in safe_pieces(own)]
        pieces += [(at + b, p) for b, p in own]
        bases.append(at)
        at += len(text) + 1  # the newline joining the texts: whitespace, no token
    found, _, ids = fast_starts("\n".join(texts), pieces, vocab, safe_all, safe)
    _encode_slow(tokenizer, pieces, found, ids)
    first.append(len(pieces))
    out = []
    for k in range(len(texts)):
        out.append((_sorted(_joined(found[first[k]:first[k + 1]]) - bases[k]), uncleans[k],
                    _joined(ids[first[k]:first[k + 1]])))
    return out


def _unclean(text: str, pieces: list[tuple[int, str]], splits: str) -> np.ndarray:
    """Where a piece after the first starts at something other than a ``splits`` character."""
    return np.fromiter((b for b, _ in pieces[1:] if not (splits and text[b] in splits)),
                       dtype=np.int64)


def _sorted(starts: np.ndarray) -> np.ndarray:
    """Offsets should already be sorted; force it so searchsorted is always valid."""
    return np.maximum.accumulate(starts) if len(starts) else starts


def _joined(parts: list[Any]) -> np.ndarray:
    if len(parts) == 1:
        return parts[0].astype(np.int64, copy=False)
    return np.concatenate([np.zeros(0, dtype=np.int64), *parts]).astype(np.int64, copy=False)


def _encode_slow(tokenizer: Tokenizer, pieces: list[tuple[int, str]],
                 found: list[np.ndarray | None], ids: list[np.ndarray | None]) -> None:
    """Fill the pieces the fast path left (None) from ``tokenizers``' offsets and ids."""
    slow = [i for i, f in enumerate(found) if f is None]
    for i in range(0, len(slow), 256):  # bounded memory: 256 pieces of Encodings at a time
        group = slow[i : i + 256]
        encodings = tokenizer.encode_batch([pieces[j][1] for j in group],
                                           add_special_tokens=False)
        for j, enc in zip(group, encodings, strict=True):
            offs = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
            found[j] = offs[:, 0] + pieces[j][0]
            ids[j] = np.asarray(enc.ids, dtype=np.int64)


def pieces_of(text: str, splits: str = "") -> Iterator[tuple[int, str]]:
    """Yield ``(offset, piece)`` covering ``text``, each cut before a ``splits`` character when
    there is one in the second half of the piece (else before any whitespace, else anywhere)."""
    i = 0
    while i < len(text):
        hi = min(i + PIECE_CHARS, len(text))
        if hi < len(text):
            lo = i + PIECE_CHARS // 2
            found = _last_split_run(text, splits, lo, hi) if splits else None
            if found is None:
                found = _last_run_start(_WS, text, lo, hi)
            if found is not None:
                hi = found
        yield i, text[i:hi]
        i = hi


_WS = re.compile(r"\s+")


def _last_split_run(text: str, splits: str, lo: int, hi: int) -> int | None:
    """The start of the last run of ``splits`` characters that starts in ``text[lo:hi]`` (a
    run reaching back before ``lo`` starts at ``lo``), or None (also when that is ``lo``)."""
    last = max(text.rfind(c, lo, hi) for c in splits)
    while last > lo and text[last - 1] in splits:
        last -= 1
    return last if last > lo else None


def _last_run_start(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> int | None:
    """The start of the last ``pattern`` run that starts in ``text[lo:hi]``, or None."""
    last = None
    for m in pattern.finditer(text, lo, hi):
        last = m.start()
    return last if last is not None and last > lo else None


def _split_chars(spec: dict[str, Any], normalize: Any = None) -> str:
    """The characters this tokenizer pipeline always splits at ("" when not trusted).

    ``normalize``: the tokenizer's ``normalizer.normalize_str``; a whitespace character it maps
    to a plain space splits like one.
    """
    if not _charwise(spec.get("normalizer")):
        return ""
    pre = spec.get("pre_tokenizer")
    parts = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts if p]
    if kinds == ["BertPreTokenizer"] or kinds in (["Whitespace"], ["WhitespaceSplit"]):
        base = _BERT_SPLITS
    elif kinds == ["Metaspace"] and _plain_metaspace(parts[0]):
        base = _SPACE
    else:
        return ""
    if normalize is None:
        return base
    return base + "".join(c for c in _CANDIDATES if c not in base and normalize(c) == " ")


def _plain_metaspace(meta: dict[str, Any]) -> bool:
    return (meta.get("split", True) and meta.get("replacement", "\u2581") == "\u2581"
            and meta.get("prepend_scheme", "always") in ("always", "first"))


def _charwise(norm: dict[str, Any] | None) -> bool:
    if norm is None:
        return True
    if norm.get("type") == "Sequence":
        return all(_charwise(n) for n in norm.get("normalizers", []))
    if norm.get("type") == "Replace":  # XLM-R's collapse of space runs (cuts are at run starts)
        return norm.get("pattern") == {"Regex": " {2,}"} and norm.get("content") in (" ", "\u2581")
    return norm.get("type") in _CHARWISE_NORMALIZERS


def count_tokens(texts: list[str], tokenizer: Tokenizer, prefix: str = "") -> list[int]:
    """Tokens the model sees for each text (prefix, special tokens included)."""
    return [len(ids) for ids in encode_ids(texts, tokenizer, prefix)]


def encode_ids(texts: list[str], tokenizer: Tokenizer, prefix: str = "") -> list[list[int]]:
    """The ids the model sees for each text (prefix, special tokens included): one
    ``encode_batch`` call (no offsets) for a batch of short documents, most of staging's work.
    A document that is one chunk keeps them in the input shard, so the worker skips tokenising."""
    from worker.staging.fastcount import encoder_for

    return encoder_for(tokenizer)([prefix + t for t in texts])
