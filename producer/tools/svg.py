"""Hand-written inline SVG charts for ``producer report --html`` (no matplotlib, no JS).

Each function returns one ``<svg>`` element as a string: axes with "nice" ticks, a title, axis
labels and, for several series, a legend. Everything is escaped; the output is meant to be
pasted into a self-contained HTML page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

WIDTH, HEIGHT = 560, 300
MARGIN = {"left": 64, "right": 16, "top": 34, "bottom": 46}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
"""Colours in series order (the usual tab10 set)."""

Point = tuple[float, float]


def line_chart(series: Mapping[str, Sequence[Point]], *, title: str, xlabel: str,
               ylabel: str, markers: bool = True) -> str:
    """One polyline per series; ``series`` maps a legend label to (x, y) points."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return _empty(title)
    frame = _Frame([p[0] for p in pts], [p[1] for p in pts], y_zero=True, legend=list(series))
    body = []
    for k, (name, s) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        xy = " ".join(f"{frame.x(x):.1f},{frame.y(y):.1f}" for x, y in sorted(s))
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8" '
                    f'points="{xy}"><title>{escape(name)}</title></polyline>')
        if markers and len(s) <= 200:
            body.extend(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.2" '
                        f'fill="{colour}"/>' for x, y in s)
    return frame.render(title, xlabel, ylabel, body)


def scatter_chart(series: Mapping[str, Sequence[Point]], *, title: str, xlabel: str,
                  ylabel: str) -> str:
    """Semi-transparent dots, one colour per series."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return _empty(title)
    # Both axes from zero: latency vs batch size reads as "cost per token" from the origin.
    frame = _Frame([0.0] + [p[0] for p in pts], [p[1] for p in pts], y_zero=True,
                   legend=list(series))
    body = []
    for k, (_name, s) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        body.extend(f'<circle cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="2.6" '
                    f'fill="{colour}" fill-opacity="0.55"/>' for x, y in s)
    return frame.render(title, xlabel, ylabel, body)


def bar_chart(edges: Sequence[float], counts: Sequence[float], *, title: str, xlabel: str,
              ylabel: str, colour: str = PALETTE[0]) -> str:
    """Histogram-style bars: bar ``i`` spans ``edges[i]..edges[i+1]`` with height ``counts[i]``."""
    if not counts or len(edges) != len(counts) + 1:
        return _empty(title)
    frame = _Frame([edges[0], edges[-1]], [0.0, max(counts)], y_zero=True, x_pad=False)
    body = []
    for lo, hi, c in zip(edges, edges[1:], counts):
        x0, x1 = frame.x(lo), frame.x(hi)
        y = frame.y(c)
        body.append(f'<rect x="{x0 + 0.5:.1f}" y="{y:.1f}" width="{max(x1 - x0 - 1, 0.8):.1f}" '
                    f'height="{frame.y(0) - y:.1f}" fill="{colour}">'
                    f'<title>{_num(lo)}–{_num(hi)}: {_num(c)}</title></rect>')
    return frame.render(title, xlabel, ylabel, body)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering ``lo..hi``.

    >>> nice_ticks(0, 97)
    [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    """
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v < hi + step * 0.999:
        ticks.append(float(round(v, 10)))
        v += step
    return ticks


class _Frame:
    """Maps data to pixels inside the margins and draws axes, grid, labels and legend."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, y_zero: bool,
                 x_pad: bool = True, legend: Sequence[str] = ()) -> None:
        x_lo, x_hi = min(xs), max(xs)
        if x_hi == x_lo:
            x_lo, x_hi = x_lo - 1, x_hi + 1
        y_lo = min(0.0, min(ys)) if y_zero else min(ys)
        y_hi = max(ys) if max(ys) > y_lo else y_lo + 1
        self.xt = nice_ticks(x_lo, x_hi) if x_pad else _inner_ticks(x_lo, x_hi)
        self.yt = nice_ticks(y_lo, y_hi)
        self.x_lo, self.x_hi = (self.xt[0], self.xt[-1]) if x_pad else (x_lo, x_hi)
        self.y_lo, self.y_hi = self.yt[0], self.yt[-1]
        self.pw = WIDTH - MARGIN["left"] - MARGIN["right"]
        # The legend sits between the title and the plot, in rows, so it never hides data.
        self.legend = _legend_layout(list(legend) if len(legend) > 1 or any(legend) else [],
                                     MARGIN["left"], self.pw)
        self.top = max(y for _, _, y in self.legend) + 12 if self.legend else MARGIN["top"]
        self.ph = HEIGHT - self.top - MARGIN["bottom"]

    def x(self, v: float) -> float:
        return MARGIN["left"] + (v - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def y(self, v: float) -> float:
        return self.top + self.ph - (v - self.y_lo) / (self.y_hi - self.y_lo) * self.ph

    def render(self, title: str, xlabel: str, ylabel: str, body: list[str]) -> str:
        left, top = MARGIN["left"], self.top
        bottom = top + self.ph
        out = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" '
                f'role="img" aria-label="{escape(title)}">'),
               f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
               (f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14" '
                f'font-weight="bold">{escape(title)}</text>')]
        for t in self.yt:
            y = self.y(t)
            out.append(f'<line x1="{left}" x2="{left + self.pw}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="#e4e4e4"/>')
            out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_num(t)}</text>')
        for t in self.xt:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 5}" '
                       f'stroke="#444"/>')
            out.append(f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle">{_num(t)}</text>')
        out.append(f'<line x1="{left}" x2="{left + self.pw}" y1="{bottom}" y2="{bottom}" '
                   f'stroke="#444"/>')
        out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="#444"/>')
        out.extend(body)
        out.append(f'<text x="{left + self.pw / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
                   f'{escape(xlabel)}</text>')
        out.append(f'<text transform="translate(14 {top + self.ph / 2}) rotate(-90)" '
                   f'text-anchor="middle">{escape(ylabel)}</text>')
        for k, (name, x, y) in enumerate(self.legend):
            colour = PALETTE[k % len(PALETTE)]
            out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
            out.append(f'<text x="{x + 14}" y="{y}">{escape(name)}</text>')
        out.append("</svg>")
        return "\n".join(out)


def _legend_layout(names: list[str], left: int, width: int) -> list[tuple[str, int, int]]:
    """(name, x, baseline y) per legend entry, wrapped into rows under the title."""
    out = []
    x, y = left, 40
    for name in names[:len(PALETTE)]:
        w = 14 + int(len(name) * 6.2) + 14  # swatch + text at ~6.2 px per char at 11 px + gap
        if x > left and x + w > left + width:
            x, y = left, y + 15
        out.append((name, x, y))
        x += w
    return out


def _inner_ticks(lo: float, hi: float) -> list[float]:
    return [t for t in nice_ticks(lo, hi) if lo <= t <= hi] or [lo, hi]


def _empty(title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="80" '
            f'font-family="sans-serif"><text x="10" y="24" font-size="14" font-weight="bold">'
            f'{escape(title)}</text><text x="10" y="54" fill="#777">no data</text></svg>')


def _num(v: float) -> str:
    """Short tick label: 1200 → 1.2k, 0.25 → 0.25."""
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:g}M"
    if a >= 1e4:
        return f"{v / 1e3:g}k"
    if a >= 1 or a == 0:
        return f"{v:g}"
    return f"{v:.3g}"
