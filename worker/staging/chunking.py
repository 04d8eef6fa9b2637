"""Stage 2: cut one document into token-bounded chunks at natural boundaries (pure).

The document is tokenised once, without special tokens, to get each token's start offset. The
walk then takes the next ``budget`` tokens as a window and cuts at the last paragraph break in
it, else the last sentence end, else the last whitespace, else hard at a token boundary. A kind
of boundary is used only if the chunk keeps at least half the window, so chunks don't get tiny.
A chunk cut at a clean split (``worker.staging.tokenwise``: the tokenizer's counts add up there) is
counted from the document's tokens, without encoding it again ("chunk once"); any other chunk
is re-encoded exactly as the model will see it (``prefix + chunk``, special tokens added). Either
way a chunk that a boundary effect pushed over is shrunk, so ``n_tokens <= max_tokens``.

Spans are character ranges in Python ``str`` indices (code points), which is what
``tokenizers`` offsets are. With ``overlap=0`` they tile the text exactly; whitespace between
two chunks belongs to the following chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from storage.errors import UsageError
from worker.staging.cuts import WHITESPACE, best_cut
from worker.staging.tokenwise import (Additivity, additivity, clean_end, clean_start, count_tokens,
                                token_starts_ids)

if TYPE_CHECKING:
    from tokenizers import Tokenizer

DEFAULT_OVERLAP = 0
"""Tokens shared by consecutive chunks. 0: chunks tile the document, no text is repeated."""

SHORT_CHARS_PER_TOKEN = 16
"""Texts up to this many characters per window token first try the one-chunk fast path."""

VERIFY_BLOCK = (8, 256)
"""Chunks planned ahead and counted together (those to re-encode in one `encode_batch` call):
the block doubles after a block with no over-budget chunk and halves after one that shrank."""



@dataclass(frozen=True)
class Span:
    """One chunk of a document: ``text[char_start:char_end]``.

    ``n_tokens`` counts what the model sees: special tokens, the prefix and the chunk.
    """

    index: int
    char_start: int
    char_end: int
    n_tokens: int


def chunk_budget(
    tokenizer: Tokenizer, max_length: int, max_tokens: int | None, prefix: str = ""
) -> int:
    """Return how many content tokens fit in one chunk.

    Args:
        tokenizer: The model's tokenizer, with truncation and padding disabled.
        max_length: The model's window, special tokens included (256 for all-MiniLM-L6-v2).
        max_tokens: An optional smaller window asked for by the user; ``None`` uses max_length.
        prefix: Text the model sees before every chunk (e.g. ``"passage: "``).

    Returns:
        The window minus the special tokens and the prefix tokens.

    Raises:
        UsageError: If nothing is left for content (a ValueError, like the next one).
        ValueError: If the tokenizer truncates or pads.
    """
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        raise ValueError(
            "the tokenizer must not truncate or pad: call no_truncation() and no_padding()"
        )
    window = max_length if max_tokens is None else min(max_tokens, max_length)
    overhead = len(tokenizer.encode(prefix, add_special_tokens=True).ids)
    if window - overhead < 1:
        raise UsageError(
            f"--max-tokens {window}: leaves no room for content after {overhead} "
            f"special and prefix tokens; raise --max-tokens or use a shorter --prefix"
        )
    return window - overhead


def chunk_document(
    text: str,
    tokenizer: Tokenizer,
    *,
    max_tokens: int,
    overlap: int = DEFAULT_OVERLAP,
    prefix: str = "",
    budget: int | None = None,
    whole: int | None = None,
    add: Additivity | None = None,
) -> list[Span]:
    """Split ``text`` into spans whose encoding fits in ``max_tokens``.

    Time is linear in ``len(text)``: one tokenisation of the whole document; only chunks that
    do not end at clean splits (``worker.staging.tokenwise``) are encoded again to count them.

    Args:
        text: The document. The caller rejects empty or whitespace-only text before this.
        tokenizer: The model's tokenizer, with truncation and padding disabled.
        max_tokens: The whole window per chunk, special tokens and prefix included.
        overlap: Tokens the next chunk repeats from the end of the previous one (default 0).
            The repeated part is moved forward to a word start when there is one, so the
            actual overlap can be a little smaller. At most half the content budget, so every
            chunk moves the window forward.
        prefix: Text the model sees before every chunk; its tokens count against the window.
        budget: ``chunk_budget(tokenizer, max_tokens, None, prefix)`` when the caller has it.
        whole: ``count_tokens`` of the whole text when the caller has it (batched).
        add: ``additivity(tokenizer, prefix)`` when the caller has it (it reads the tokenizer's
            JSON: worth computing once per job).

    Returns:
        Spans in document order, at least one. With ``overlap=0`` they tile ``text`` exactly.

    Raises:
        ValueError: If the window has no room for content, ``overlap`` is out of range, or a
            single character encodes to more tokens than the window holds.
    """
    return _chunk(text, tokenizer, max_tokens, overlap, prefix, budget, whole, add, None)[0]


def chunk_with_ids(text: str, tokenizer: Tokenizer, *, wrap: tuple[list[int], list[int]] | None,
                   max_tokens: int, overlap: int = DEFAULT_OVERLAP, prefix: str = "",
                   budget: int | None = None, whole: int | None = None,
                   add: Additivity | None = None,
                   pre: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                   ) -> tuple[list[Span], list[list[int] | None]]:
    """``chunk_document`` and, per span, the ids the model sees where they follow from the
    document's own tokens (else None: the caller encodes that chunk). ``wrap``: the ids before
    and after a chunk's tokens (special tokens and the prefix, ``id_wrap``), or None for no ids.
    Only for a tokenizer whose words are tokenised on their own (``id_wrap`` says which).
    ``pre``: the text's ``token_starts_ids`` when the caller has them (``token_starts_batch``)."""
    spans, ranges, ids = _chunk(text, tokenizer, max_tokens, overlap, prefix, budget, whole, add,
                                pre)
    out: list[list[int] | None] = [None] * len(spans)
    if wrap is not None and ids is not None:
        head, tail = wrap
        for i, (sp, rng) in enumerate(zip(spans, ranges, strict=True)):
            if rng is not None and len(head) + rng[1] - rng[0] + len(tail) == sp.n_tokens:
                out[i] = head + ids[rng[0]:rng[1]].tolist() + tail
    return spans, out


def id_wrap(tokenizer: Tokenizer, prefix: str, add: Additivity) -> tuple[list[int], list[int]] | None:
    """The ids around a chunk's own tokens (``[CLS]`` + prefix, ``[SEP]``) when a cleanly cut
    chunk's ids are the document's ids over its range: the BERT WordPiece pipeline (no token
    covers whitespace, each word tokenised alone), counts trusted; else None."""
    from worker.staging.faststarts import vocab_for

    if not add.count_from_doc or vocab_for(tokenizer) is None:
        return None
    word = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode(prefix + " a", add_special_tokens=True).ids
    for k in range(len(full) - len(word), -1, -1):
        if full[k:k + len(word)] == word:
            return full[:k], full[k + len(word):]
    return None


def _chunk(text: str, tokenizer: Tokenizer, max_tokens: int, overlap: int, prefix: str,
           budget: int | None, whole: int | None, add: Additivity | None,
           pre: tuple[np.ndarray, np.ndarray, np.ndarray] | None
           ) -> tuple[list[Span], list[tuple[int, int] | None], np.ndarray | None]:
    """Spans, per span the document token range it was counted from (None: re-encoded or
    shrunk), and the document's token ids (None for a one-span short text)."""
    if budget is None:
        budget = chunk_budget(tokenizer, max_tokens, None, prefix)
    if not 0 <= overlap <= budget // 2:
        raise ValueError(
            f"overlap must be in [0, {budget // 2}] (half the content budget), got {overlap}"
        )
    if whole is None and is_short(text, max_tokens):
        whole = count_tokens([text], tokenizer, prefix)[0]  # most documents: one span
    if whole is not None and whole <= max_tokens:
        return [Span(0, 0, len(text), whole)], [None], None
    if add is None:
        add = additivity(tokenizer, prefix)
    starts, unclean, ids = pre or token_starts_ids(text, tokenizer, add.splits,
                                                   fast=not add.verify_all)
    # Counting needs no offsets: encode_batch_fast (tokenizers >= 0.20) skips them.
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    spans: list[Span] = []
    ranges: list[tuple[int, int] | None] = []
    pos, char_start, block = 0, 0, VERIFY_BLOCK[0]
    while True:
        plan = []  # optimistic: plan a block of chunks, then count them all at once
        p, c = pos, char_start
        for _ in range(block):
            cut, end = _plan(text, starts, p, budget)
            plan.append((c, cut, p, end))
            if cut >= len(text):
                break
            c, p = _next_start(text, starts, overlap, c, cut, p, end)
        in_doc = [_doc_range(add, text, starts, unclean, a, cut) for a, cut, _, _ in plan]
        counts = [None if r is None else r[2] for r in in_doc]
        redo = [i for i, n in enumerate(counts) if n is None]
        if redo:
            found = encode_batch([prefix + text[plan[i][0]:plan[i][1]] for i in redo])
            for i, e in zip(redo, found, strict=True):
                counts[i] = len(e.ids)
        assert None not in counts
        for (a, cut, p, end), n, r in zip(plan, counts, in_doc, strict=True):
            shrunk = n > max_tokens
            if shrunk:
                cut, end, n = _shrink(text, tokenizer, starts, prefix, a, p, end, n, max_tokens)
            spans.append(Span(len(spans), a, cut, n))
            ranges.append(None if shrunk or r is None else (r[0], r[1]))
            if cut >= len(text):
                return spans, ranges, ids
            char_start, pos = _next_start(text, starts, overlap, a, cut, p, end)
            if shrunk:  # the rest of the plan started from the old cut: replan from here
                block = max(VERIFY_BLOCK[0], block // 2)
                break
        else:
            block = min(VERIFY_BLOCK[1], block * 2)


def _doc_range(add: Additivity, text: str, starts: np.ndarray, unclean: np.ndarray, a: int,
               cut: int) -> tuple[int, int, int] | None:
    """The chunk ``text[a:cut]``'s first and end token in the document and its count from the
    document's tokens, or None: re-encode it."""
    if not add.count_from_doc or not (clean_start(text, a, add.splits)
                               and clean_end(text, cut, add.splits)):
        return None
    k = int(unclean.searchsorted(a, side="right"))
    if k < len(unclean) and unclean[k] < cut:
        return None  # a piece was cut inside a word somewhere in this chunk
    at_split = a < len(text) and text[a] in add.splits
    # A word's first token may start at the space before it (Metaspace's "▁word").
    first = a - 1 if a > 0 and not at_split else a
    lo, hi = int(starts.searchsorted(first)), int(starts.searchsorted(cut, side="left"))
    return lo, hi, hi - lo + (add.overhead_at_split if at_split else add.overhead_at_word)


def is_short(text: str, max_tokens: int) -> bool:
    """Worth counting whole first: it most likely fits in one chunk."""
    return len(text) <= SHORT_CHARS_PER_TOKEN * max_tokens


def _plan(text: str, starts: np.ndarray, pos: int, window: int) -> tuple[int, int]:
    """Return ``(cut, end)``: the chunk whose first token is ``pos`` ends at char ``cut``,
    before token ``end``. Trailing characters after the last token join the last chunk."""
    n_total = len(starts)
    cut = len(text) if n_total - pos <= window else best_cut(text, starts, pos, window)
    end = int(starts.searchsorted(cut, side="left"))
    if end >= n_total:
        cut = len(text)
    return cut, end


def _next_start(
    text: str, starts: np.ndarray, overlap: int, char_start: int, cut: int, pos: int, end: int
) -> tuple[int, int]:
    """Return ``(char_start, pos)`` of the chunk after ``text[char_start:cut]``."""
    if overlap:
        back = int(starts[max(end - overlap, pos + 1)])
        if back > 0 and not text[back - 1].isspace():  # inside a word: go to the next word start
            m = WHITESPACE.search(text, back, cut)
            back = m.end() if m is not None and m.end() < cut else back
        back_pos = int(starts.searchsorted(back, side="left"))
        if back_pos > pos and back > char_start:  # else there is no room to overlap
            return back, back_pos
    return cut, end


def _shrink(
    text: str, tokenizer: Tokenizer, starts: np.ndarray, prefix: str,
    char_start: int, pos: int, end: int, n: int, max_tokens: int,
) -> tuple[int, int, int]:
    """Re-cut an over-budget chunk with a smaller window until it fits; return (cut, end, n)."""
    window = end - pos
    while n > max_tokens:
        window -= n - max_tokens
        if window < 1:
            raise ValueError(
                f"text[{char_start}:] cannot be cut to fit {max_tokens} tokens "
                f"(one character encodes to more than the window holds)"
            )
        cut, end = _plan(text, starts, pos, window)
        n = len(tokenizer.encode(prefix + text[char_start:cut], add_special_tokens=True).ids)
    return cut, end, n
