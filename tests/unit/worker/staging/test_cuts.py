"""worker/staging/cuts.py: where a chunk ends inside its window (paragraph, sentence,
whitespace, hard cut), on a text whose tokens are its characters."""

from __future__ import annotations

import numpy as np

from worker.staging.cuts import best_cut


def starts(text: str) -> np.ndarray:
    return np.arange(len(text), dtype=np.int64)


def test_a_paragraph_break_wins_over_a_later_sentence_end() -> None:
    text = "a" * 30 + "\n\n" + "b" * 10 + ". " + "c" * 40
    assert best_cut(text, starts(text), 0, 60) == 30


def test_a_sentence_end_cuts_after_the_mark_then_whitespace() -> None:
    text = "a" * 30 + ". " + "b" * 40
    assert best_cut(text, starts(text), 0, 50) == 31
    text = "a" * 30 + " " + "b" * 40
    assert best_cut(text, starts(text), 0, 50) == 30


def test_a_boundary_in_the_first_half_is_not_taken_a_hard_cut_is() -> None:
    text = "a" * 10 + ". " + "b" * 80  # the sentence end would keep 11 of a 60-token window
    assert best_cut(text, starts(text), 0, 60) == 60
