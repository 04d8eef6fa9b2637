"""Token start offsets of a long document without `tokenizers`' offsets, where they are exact.

Chunking a long document needs every token's start offset (``tokenwise.token_starts``). Asking
HuggingFace ``tokenizers`` for them costs its full encode plus one Python tuple per token: it
was most of staging's time on real text (long documents). For a WordPiece tokenizer with the
BERT pipeline (``BertNormalizer`` + ``BertPreTokenizer``, the default all-MiniLM-L6-v2, BGE, E5)
and text of printable ASCII plus tab/newline/CR, the offsets follow from the ids alone:

- the normaliser keeps every such character in place (lower-casing ASCII keeps the length);
- the pre-tokenizer starts a word after whitespace and at every ASCII punctuation character;
- a word's first token starts at the word, each ``##`` piece where the previous piece ended.

So the ids come from nanotoken (the fast encoder `fastcount` already proved equal to
``tokenizers``), and the starts are computed with numpy over the whole document. Every piece of
the document (``tokenwise.pieces_of``) is then checked: its word count equals its count of
word-first tokens, each token's text equals the (lower-cased) document text at its start, and
each word's last token ends at the word's end ([UNK] stands for a whole word). A piece holding
any other character, or failing a check (e.g. a literal "[CLS]", which is one added token), is
encoded by ``tokenizers`` as before. The result is the array ``tokenizers`` gives, checked by
tests/unit/worker/staging/test_faststarts.py on real and hostile text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

_UNSAFE = re.compile(r"[^\t\n\r\x20-\x7e]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""A character the fast path does not handle (anything but printable ASCII, tab, LF, CR)."""
_LOWER = bytes.maketrans(bytes(range(65, 91)), bytes(range(97, 123)))
_ASCII_WS = re.compile(r"[\t\n\r ]")
_GAP = 32
_CLASS = bytearray(256)  # 0: a word character, 1: whitespace, 2: punctuation (own word)
for _c in (9, 10, 13, 32):
    _CLASS[_c] = 1
for _lo, _hi in ((33, 47), (58, 64), (91, 96), (123, 126)):  # Rust's is_ascii_punctuation
    _CLASS[_lo:_hi + 1] = b"\x02" * (_hi + 1 - _lo)
_CLASSES = bytes(_CLASS)


@dataclass(frozen=True)
class Vocab:
    """Per id: piece text (ASCII, ``##`` removed) as a slice of ``chars``; whether it continues
    a word; ``bad`` ids (non-ASCII pieces, added tokens) never pass the check."""

    nano: Any
    pieces: np.ndarray
    length: np.ndarray
    cont: np.ndarray
    bad: np.ndarray
    lowercase: bool


_CACHE: dict[int, tuple[Any, Vocab | None]] = {}


def vocab_for(tokenizer: Any) -> Vocab | None:
    """The fast path's tables for ``tokenizer``, or None when it does not apply (not the BERT
    WordPiece pipeline, or staging does not use nanotoken for it). Cached per tokenizer."""
    hit = _CACHE.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, _build(tokenizer))
        _CACHE[id(tokenizer)] = hit
    return hit[1]


def _build(tokenizer: Any) -> Vocab | None:
    from worker.staging.fastcount import nanotoken_of

    nano = nanotoken_of(tokenizer)
    if nano is None:
        return None
    spec = json.loads(tokenizer.to_str())
    model, norm, pre = spec.get("model") or {}, spec.get("normalizer"), spec.get("pre_tokenizer")
    prefix = model.get("continuing_subword_prefix")
    if (model.get("type") != "WordPiece" or not prefix or not pre
            or pre.get("type") != "BertPreTokenizer"
            or (norm is not None and (norm.get("type") != "BertNormalizer"
                                      or not norm.get("clean_text", True)))):
        return None
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    added = {t["id"] for t in spec.get("added_tokens", [])}
    by_id = [""] * size
    for piece, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if 0 <= i < size:
            by_id[i] = piece
    texts, cont, bad = [], np.zeros(size, dtype=bool), np.zeros(size, dtype=bool)
    for i, piece in enumerate(by_id):
        if piece.startswith(prefix) and len(piece) > len(prefix):
            piece, cont[i] = piece[len(prefix):], True
        bad[i] = i in added or not piece or not piece.isascii()
        texts.append(piece if not bad[i] else "")
    unk = tokenizer.token_to_id(model.get("unk_token", "[UNK]"))
    if unk is not None:
        bad[unk] = True  # a word's [UNK] hides its length: tokenizers encodes that piece
    return Vocab(nano, np.array([t.encode("ascii") for t in texts], dtype=bytes),
                 np.fromiter(map(len, texts), dtype=np.int64, count=size), cont, bad,
                 bool(norm is None or norm.get("lowercase", True)))


def all_safe(text: str) -> bool:
    """Whether the fast path handles every character of ``text`` (``isascii`` is O(1))."""
    return text.isascii() and _CONTROL.search(text) is None


def refine(pieces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``pieces`` with each whitespace-delimited word holding a character the fast path does
    not handle made a piece of its own (the BERT pipeline always splits at ASCII whitespace and
    normalises character by character, so a cut next to it changes no token or offset). Words
    less than ``_GAP`` characters apart share a piece."""
    out: list[tuple[int, str]] = []
    for base, piece in pieces:
        m = _UNSAFE.search(piece)
        if m is None:
            out.append((base, piece))
            continue
        units: list[list[int]] = []
        while m is not None:
            p = m.start()
            lo = max(piece.rfind(c, 0, p) for c in " \t\n\r") + 1
            w = _ASCII_WS.search(piece, p)
            hi = len(piece) if w is None else w.start()
            if units and lo - units[-1][1] < _GAP:
                units[-1][1] = hi
            else:
                units.append([lo, hi])
            m = _UNSAFE.search(piece, hi)
        at = 0
        for lo, hi in units:
            if lo > at:
                out.append((base + at, piece[at:lo]))
            out.append((base + lo, piece[lo:hi]))
            at = hi
        if at < len(piece):
            out.append((base + at, piece[at:]))
    return out


def fast_starts(text: str, pieces: list[tuple[int, str]], vocab: Vocab,
                safe_text: bool | None = None) -> tuple[list[np.ndarray | None], np.ndarray]:
    """Per piece: its tokens' start offsets in ``text``, or None where the fast path does not
    hold (the caller encodes that piece with ``tokenizers``). The second array: the pieces'
    start offsets. ``safe_text``: ``all_safe(text)`` when the caller has it."""
    bases = np.fromiter((b for b, _ in pieces), dtype=np.int64, count=len(pieces))
    if safe_text is None:
        safe_text = all_safe(text)
    safe = (list(range(len(pieces))) if safe_text
            else [i for i, (_, p) in enumerate(pieces) if _UNSAFE.search(p) is None])
    out: list[np.ndarray | None] = [None] * len(pieces)
    if not safe:
        return out, bases
    texts = [pieces[i][1] for i in safe]
    ragged = vocab.nano.encode_batch(texts, add_special_tokens=False, parallel=False)
    ids, rows = ragged.ids.astype(np.int64), np.asarray(ragged.offsets, dtype=np.int64)
    # One byte per character (str index = byte index; other pieces' bytes are never used): its
    # class, whitespace, punctuation or other.
    raw = text.encode("ascii") if safe_text else text.encode("latin-1", "replace")
    code = np.frombuffer(raw.translate(_CLASSES), dtype=np.uint8)
    ok, starts, spans = _check(code, bases, np.asarray(safe, dtype=np.int64), ids, rows,
                               vocab)
    if ok.any():
        joined = vocab.pieces[ids].tobytes().translate(None, b"\0")
        table = _LOWER if vocab.lowercase else None
        # All pieces at once when they tile the text (the usual case), else piece by piece.
        if not (ok.all() and safe_text and joined == raw.translate(table, b" \t\n\r")):
            for k, piece in enumerate(texts):
                if ok[k] and joined[spans[k]:spans[k + 1]] != piece.encode("ascii").translate(
                        table, b" \t\n\r"):
                    ok[k] = False
    for k, i in enumerate(safe):
        if ok[k]:
            out[i] = starts[rows[k]:rows[k + 1]]
    return out, bases


def _check(code: np.ndarray, bases: np.ndarray, safe: np.ndarray, ids: np.ndarray,
           rows: np.ndarray, v: Vocab) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(per safe piece: the structural checks hold, every token's start, where each safe
    piece's tokens begin in their joined text). What is left to check: that joined text."""
    n, k = len(code), len(safe)
    ws = code == 1
    brk = np.ones(n, dtype=bool)  # a word may start here if this is not whitespace
    np.not_equal(code[:-1], 0, out=brk[1:])
    brk |= code == 2
    brk[bases] = True
    wpos = np.flatnonzero(brk & ~ws)
    wpiece = np.searchsorted(bases, wpos, side="right") - 1
    in_safe = np.zeros(len(bases), dtype=bool)
    in_safe[safe] = True
    keep = in_safe[wpiece]
    wpos, wpiece = wpos[keep], wpiece[keep]
    nonws = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(~ws, out=nonws[1:])

    tpiece = np.repeat(np.arange(k), np.diff(rows))  # index into ``safe``
    head = ~v.cont[ids]
    n_words = np.bincount(np.searchsorted(safe, wpiece), minlength=k)
    n_heads = np.bincount(tpiece[head], minlength=k)
    ok = n_words == n_heads
    ok[np.unique(tpiece[v.bad[ids]])] = False  # [UNK], added tokens, non-ASCII pieces
    first = rows[:-1][rows[:-1] < rows[1:]]
    ok[tpiece[first]] &= head[first]  # a piece's first token starts a word
    length = v.length[ids]
    csum = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(length, out=csum[1:])
    if not ok.any() or len(wpos) == 0:
        return ok & False, np.zeros(len(ids), dtype=np.int64), csum[rows]
    words_before = np.zeros(k, dtype=np.int64)
    np.cumsum(n_words[:-1], out=words_before[1:])
    heads_before = np.zeros(k, dtype=np.int64)
    np.cumsum(n_heads[:-1], out=heads_before[1:])
    widx = words_before[tpiece] + np.cumsum(head) - 1 - heads_before[tpiece]
    widx = np.clip(widx, 0, len(wpos) - 1)
    # Each head token sits where its word starts in the piece's text without whitespace.
    at = np.flatnonzero(head)
    stream = csum[at] - csum[rows[tpiece[at]]]
    word_stream = nonws[wpos[widx[at]]] - nonws[bases[safe[tpiece[at]]]]
    ok[np.unique(tpiece[at[stream != word_stream]])] = False
    hidx = np.maximum.accumulate(np.where(head, np.arange(len(ids)), 0))
    starts = wpos[widx[hidx]] + csum[:-1] - csum[hidx]
    return ok, starts, csum[rows]
