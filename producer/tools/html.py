"""``producer report --html``: a self-contained page (summary, worker table, four inline SVG
charts drawn by ``svg.py``, no plotting dependency); the figures come from ``report.py``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from producer.tools import svg
from producer.tools.report import HEAD, format_text, group_cells

BUCKET_S = 5.0
"""Width of the time buckets of the over-time charts."""
HIST_BINS = 32


def write_html(path: str | Path, s: dict[str, Any], rows: Sequence[dict[str, Any]],
               lengths: Sequence[int]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(s, chart_svgs(rows, lengths)), encoding="utf-8")
    return out


def chart_svgs(rows: Sequence[dict[str, Any]], lengths: Sequence[int]) -> list[str]:
    """The four charts of the HTML report, as ``<svg>`` strings."""
    stamped = [r for r in rows if r.get("timestamp") is not None]
    # A row is stamped when its batch ends; the batch ran for total_ms before that.
    t0 = min((r["timestamp"] - (r.get("total_ms") or 0) for r in stamped), default=0)
    last = max((_bucket(r["timestamp"], t0) for r in stamped), default=0)
    per_worker: dict[str, dict[int, float]] = defaultdict(lambda: dict.fromkeys(range(last + 1), 0))
    hit_b: dict[int, float] = dict.fromkeys(range(last + 1), 0)
    new_b: dict[int, float] = dict.fromkeys(range(last + 1), 0)
    for r in stamped:
        series = per_worker[_label(r)]
        fresh = (r.get("chunks") or 0) - (r.get("cache_hits") or 0)
        for b, share in _spread(r["timestamp"] - (r.get("total_ms") or 0), r["timestamp"], t0):
            series[b] += (r.get("real_tokens") or 0) * share
            new_b[b] += fresh * share
        hit_b[_bucket(r["timestamp"], t0)] += r.get("cache_hits") or 0
    def xs(d: dict[int, float]) -> list[tuple[float, float]]:
        return [(b * BUCKET_S, float(v)) for b, v in sorted(d.items())]

    scatter: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        if (r.get("batch_index") or 0) >= 0 and r.get("total_ms") is not None:
            scatter[_label(r)].append((float(r.get("padded_tokens") or 0), float(r["total_ms"])))
    return [
        svg.line_chart({k: xs(v) for k, v in sorted(per_worker.items())},
                       title=f"Throughput per worker (tokens per {BUCKET_S:g} s)",
                       xlabel="seconds since the first batch started",
                       ylabel=f"tokens / {BUCKET_S:g} s"),
        svg.scatter_chart(dict(sorted(scatter.items())), title="Batch latency vs batch size",
                          xlabel="padded tokens in the batch", ylabel="total ms"),
        _histogram(lengths),
        svg.line_chart({"cache hits": xs(hit_b), "embedded": xs(new_b)},
                       title=f"Cache hits over time (chunks per {BUCKET_S:g} s)",
                       xlabel="seconds since the first batch started",
                       ylabel=f"chunks / {BUCKET_S:g} s"),
    ]


def render_html(s: dict[str, Any], charts: Sequence[str]) -> str:
    """A self-contained HTML page: summary, worker table, inline SVG charts."""
    summary = format_text(s).split("\n\n")[0]
    head = "".join(f"<th>{escape(h)}</th>" for h in HEAD)
    body = []
    for g in s["workers"]:
        cls = ' class="fallback"' if g["fallback"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in group_cells(g))
                    + "</tr>")
    figs = "\n".join(f'<figure>{c}</figure>' for c in charts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>embedfleet report {escape(s['job_id'])}</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; max-width: 1180px; }}
pre {{ background: #f6f6f6; padding: 12px; font-size: 13px; line-height: 1.45; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 16px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:nth-child(-n+4), td:nth-child(-n+4) {{ text-align: left; }}
tr.fallback td {{ background: #fde2e2; color: #9b0000; font-weight: bold; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 12px; }}
figure {{ margin: 0; border: 1px solid #ddd; }}
</style></head><body>
<h1>Job {escape(s['job_id'])} <small>[{escape(s['status'])}]</small></h1>
<pre>{escape(summary)}</pre>
<h2>Workers</h2>
<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>
<h2>Charts</h2>
<div class="charts">
{figs}
</div></body></html>
"""



# -- helpers ---------------------------------------------------------------------------------
def _label(r: dict[str, Any]) -> str:
    prov = str(r.get("provider") or "").replace("ExecutionProvider", "")
    tag = " FALLBACK" if r.get("fallback") else ""
    return f"{r.get('hostname') or '?'} ({prov} {r.get('precision') or ''}){tag}"


def _histogram(lengths: Sequence[int]) -> str:
    if not lengths:
        return svg.bar_chart([], [], title="Chunk length", xlabel="", ylabel="")
    hi = max(lengths)
    ticks = svg.nice_ticks(0, hi + 1, HIST_BINS)  # + 1: the longest chunk gets its own bin
    edges = [float(t) for t in ticks] if len(ticks) > 1 else [0.0, float(hi) + 1]
    counts, _ = np.histogram(np.asarray(lengths), bins=np.asarray(edges))
    return svg.bar_chart(edges, [float(c) for c in counts],
                         title=f"Chunk length ({len(lengths):,} chunks)",
                         xlabel="tokens per chunk (special tokens included)", ylabel="chunks")


def _bucket(ts_ms: float, t0_ms: float) -> int:
    return int((ts_ms - t0_ms) / 1000 // BUCKET_S)


def _spread(start_ms: float, end_ms: float, t0_ms: float) -> list[tuple[int, float]]:
    """(bucket, share) pairs: how a batch running start..end splits over the time buckets.

    >>> _spread(0, 7500, 0)
    [(0, 0.6666666666666666), (1, 0.3333333333333333)]
    """
    first, last = _bucket(start_ms, t0_ms), _bucket(end_ms, t0_ms)
    if end_ms <= start_ms or first == last:
        return [(last, 1.0)]
    width = BUCKET_S * 1000
    out = []
    for b in range(first, last + 1):
        lo = max(start_ms, t0_ms + b * width)
        hi = min(end_ms, t0_ms + (b + 1) * width)
        if hi > lo:
            out.append((b, (hi - lo) / (end_ms - start_ms)))
    return out
