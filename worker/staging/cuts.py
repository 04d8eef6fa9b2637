"""Where to end a chunk inside its token window: the last paragraph break, else the last
sentence end, else the last whitespace, else a hard cut at a token boundary (pure; the walk
over a document is ``worker.staging.chunking``)."""

from __future__ import annotations

import re

import numpy as np

MIN_FILL = 0.5
"""A paragraph/sentence/whitespace cut must keep at least this share of the window."""

# Blank line (possibly holding spaces/tabs/CR): cut before it.
_PARAGRAPH = re.compile(r"\n[^\S\n]*\n")
# Sentence end: Latin punctuation followed by whitespace or CJK/fullwidth enders (cut after the
# mark), or a single newline (cut before it).
_SENTENCE = re.compile(r"[.!?](?=\s)|[。！？．]|\n")
WHITESPACE = re.compile(r"\s+")


def best_cut(text: str, starts: np.ndarray, pos: int, window: int) -> int:
    """Return the char index to end the chunk; always past ``starts[pos]``, so never empty."""
    first = int(starts[pos])
    hi = int(starts[pos + window])  # first character of the first token that doesn't fit
    lo = int(starts[pos + max(1, int(window * MIN_FILL))])
    for pattern, after in ((_PARAGRAPH, False), (_SENTENCE, True), (WHITESPACE, False)):
        cut = _last_cut(pattern, text, lo, hi, after)
        if cut is not None and cut > first:
            return cut
    # No boundary in reach: hard cut at a token boundary, or after the first character when the
    # whole window sits on it (one character split into many pieces).
    return hi if hi > first else first + 1


def _last_cut(pattern: re.Pattern[str], text: str, lo: int, hi: int, after: bool) -> int | None:
    """Return the cut for the last ``pattern`` match starting in ``text[lo:hi]``, or None."""
    cut = None
    # One extra character so the lookahead of "[.!?](?=\s)" can see a space at hi.
    for m in pattern.finditer(text, lo, min(hi + 1, len(text))):
        if m.start() >= hi:
            break
        if after and text[m.start()] != "\n":
            cut = m.end()
        else:
            cut = m.start()
            while cut > lo and text[cut - 1].isspace():  # e.g. the "\r" of "\r\n"
                cut -= 1
    return cut
