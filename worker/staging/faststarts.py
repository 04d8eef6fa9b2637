"""Token start offsets of a long document without `tokenizers`' offsets, where they are exact.

Chunking a long document needs every token's start offset (``tokenwise.token_starts``). Asking
HuggingFace ``tokenizers`` for them costs its full encode plus one Python tuple per token: it
was most of staging's time on real text (long documents). For a WordPiece tokenizer with the
BERT pipeline (``BertNormalizer`` + ``BertPreTokenizer``, the default all-MiniLM-L6-v2, BGE, E5)
and text of printable ASCII plus tab/newline/CR, the offsets follow from the ids alone: the
normaliser keeps every such character in place (lower-casing ASCII keeps the length), no token
spans whitespace, and the tokens' texts (``##`` removed) laid end to end are the text without
its whitespace. So token k starts at the text's ``n``-th non-whitespace character, ``n`` the
length of the tokens before it.

The ids come from nanotoken (the encoder `fastcount` already proved equal to ``tokenizers``);
the starts are computed with numpy over the whole document. Each piece of the document
(``tokenwise.pieces_of``) is checked first: its tokens' texts laid end to end must equal its
text without whitespace (lower-cased), and it holds no [UNK] or added token (a literal "[CLS]"
is one, whose text is not what it covers). A piece holding any other character, or failing the
check, is encoded by ``tokenizers`` as before (``refine`` first narrows a non-ASCII character's
piece to its words). The result is the array ``tokenizers`` gives, compared on real and hostile
text by tests/unit/worker/staging/test_faststarts.py.
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
_WS_BYTES = b" \t\n\r"
_NOT_WS = bytes(0 if c in _WS_BYTES else 1 for c in range(256))


@dataclass(frozen=True)
class Vocab:
    """Per id: its text (ASCII, ``##`` removed; ``pieces`` a fixed-width bytes array), its
    length, whether it continues a word; ``bad`` ids ([UNK], added tokens, non-ASCII pieces)
    fail the check."""

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


def safe_pieces(pieces: list[tuple[int, str]]) -> list[int]:
    """The indexes of the pieces the fast path handles."""
    return [i for i, (_, p) in enumerate(pieces) if _UNSAFE.search(p) is None]


def fast_starts(text: str, pieces: list[tuple[int, str]], vocab: Vocab,
                safe_text: bool | None = None, safe: list[int] | None = None
                ) -> tuple[list[np.ndarray | None], np.ndarray, list[np.ndarray | None]]:
    """Per piece: its tokens' start offsets in ``text``, or None where the fast path does not
    hold (the caller encodes that piece with ``tokenizers``). The second array: the pieces'
    start offsets; the third: per piece, its token ids where the first has offsets.
    ``safe_text``: ``all_safe(text)`` when the caller has it; ``safe``: the pieces without a
    character the fast path does not handle, when the caller knows them (``safe_pieces``)."""
    bases = np.fromiter((b for b, _ in pieces), dtype=np.int64, count=len(pieces))
    if safe_text is None:
        safe_text = all_safe(text)
    if safe is None:
        safe = list(range(len(pieces))) if safe_text else safe_pieces(pieces)
    out: list[np.ndarray | None] = [None] * len(pieces)
    out_ids: list[np.ndarray | None] = [None] * len(pieces)
    if not safe:
        return out, bases, out_ids
    texts = [pieces[i][1] for i in safe]
    ragged = vocab.nano.encode_batch(texts, add_special_tokens=False, parallel=False)
    ids, rows = ragged.ids.astype(np.int64), np.asarray(ragged.offsets, dtype=np.int64)
    k = len(safe)
    tpiece = np.repeat(np.arange(k), np.diff(rows))  # index into ``safe``
    ok = np.ones(k, dtype=bool)
    ok[np.unique(tpiece[vocab.bad[ids]])] = False  # [UNK], added tokens, non-ASCII pieces
    first = rows[:-1][rows[:-1] < rows[1:]]
    ok[tpiece[first]] &= ~vocab.cont[ids[first]]  # a piece starts with a word's first token
    length = vocab.length[ids]
    csum = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(length, out=csum[1:])
    if not ok.any():
        return out, bases, out_ids
    # One byte per character (str index = byte index; other pieces' bytes are never used).
    raw = text.encode("ascii") if safe_text else text.encode("latin-1", "replace")
    joined = vocab.pieces[ids].tobytes().translate(None, b"\0")
    table = _LOWER if vocab.lowercase else None
    # The tokens' text must be the pieces' text without whitespace (lower-cased): all pieces at
    # once when they tile the text (the usual case), else piece by piece.
    if not (ok.all() and joined == (raw if safe_text else "".join(texts).encode("ascii")
                                    ).translate(table, _WS_BYTES)):
        for j, piece in enumerate(texts):
            if ok[j] and joined[csum[rows[j]]:csum[rows[j + 1]]] != piece.encode(
                    "ascii").translate(table, _WS_BYTES):
                ok[j] = False
    # Then the token that starts at character c of that text starts at the c-th non-whitespace
    # character of the piece.
    nonws = np.flatnonzero(np.frombuffer(raw.translate(_NOT_WS), dtype=np.uint8))
    before = nonws.searchsorted(bases[np.asarray(safe, dtype=np.int64)])
    at = before[tpiece] + csum[:-1] - csum[rows[tpiece]]
    starts = nonws[np.minimum(at, len(nonws) - 1)] if len(nonws) else at
    for j, i in enumerate(safe):
        if ok[j]:
            out[i] = starts[rows[j]:rows[j + 1]]
            out_ids[i] = ids[rows[j]:rows[j + 1]]
    return out, bases, out_ids
