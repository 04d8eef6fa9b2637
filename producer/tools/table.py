"""The plain-text table of ``producer report`` and ``producer bench``: padded columns, two
spaces apart, the first ``left`` columns left-aligned and the rest right-aligned."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Lines of a table; a row shorter than ``head`` ends in one free-width cell (a note).

    >>> print("\\n".join(text_table(["name", "n", "ms"], [["a", "10", "1.5"], ["bb", "skipped"]])))
    name   n   ms
    a     10  1.5
    bb    skipped
    """
    widths = [max([len(h)] + [len(r[i]) for r in rows if i < len(r) and (
        len(r) == len(head) or i < len(r) - 1)]) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        short = len(cells) < len(head)
        return "  ".join(c if short and i == len(cells) - 1 else
                         c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(head)] + [fmt(r) for r in rows]
