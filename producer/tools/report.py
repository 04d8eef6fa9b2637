"""``producer report``: what a job did, from its ``metrics/*.parquet`` and ``manifest.json``.

Works on a finished or a running job (only the shards that landed have metrics). The metrics
have one row per inference batch plus, per shard with cache hits, one row with
``batch_index == -1`` (the hits, ``padded_tokens == 0``): latency and padding use inference rows
only, the cache hit rate and end-to-end token counts use both. ``summarize`` and the renderers
are pure; only ``load_job`` and ``write_html`` touch files.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from producer.tools import svg
from storage.jobdir import JobDir

BUCKET_S = 5.0
"""Width of the time buckets of the over-time charts."""
HIST_BINS = 32
GROUP_KEYS = ("hostname", "queue", "provider", "precision")
METRIC_COLUMNS = ("shard", "batch_index", "hostname", "queue", "provider", "precision",
                  "fallback", "chunks", "real_tokens", "padded_tokens", "cache_hits",
                  "total_ms", "timestamp")


def load_job(job_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """The manifest, the metrics rows of every landed shard, and the chunk lengths in tokens.

    Chunk lengths come from the staged input shards (every chunk of the job), else from the
    embeddings shards written so far.
    """
    job = JobDir.open(job_dir)
    manifest = dict(job.manifest)
    manifest["_rejects_so_far"] = _count_lines(job.ingest_rejects_path) + sum(
        _count_lines(p) for p in (job.state_dir / "rejects").glob("*.jsonl"))
    tables = [pq.read_table(p) for p in sorted(job.metrics_dir.glob("part-*.parquet"))]
    rows: list[dict[str, Any]] = []
    for t in tables:
        cols = {c: (t[c].cast(pa.int64()) if c == "timestamp" else t[c]).to_pylist()
                for c in METRIC_COLUMNS if c in t.column_names}
        rows.extend(dict(zip(cols, vals)) for vals in zip(*cols.values()))
    lengths: list[int] = []
    for d in (job.input_dir, job.embeddings_dir):
        files = sorted(d.glob("part-*.parquet"))
        if files:
            for p in files:
                lengths.extend(pq.read_table(p, columns=["n_tokens"])["n_tokens"].to_pylist())
            break
    return manifest, rows, lengths


def summarize(manifest: dict[str, Any], rows: Sequence[dict[str, Any]],
              now: float | None = None) -> dict[str, Any]:
    """Job-level figures and the per-worker breakdown, as JSON-ready plain data."""
    now = time.time() if now is None else now
    totals = manifest.get("totals", {})
    result = manifest.get("result") or {}
    inf = [r for r in rows if (r.get("batch_index") or 0) >= 0]
    real_inf = sum(r.get("real_tokens") or 0 for r in inf)
    padded_inf = sum(r.get("padded_tokens") or 0 for r in inf)
    tokens_done = sum(r.get("real_tokens") or 0 for r in rows)
    chunks_done = sum(r.get("chunks") or 0 for r in rows)
    hits = sum(r.get("cache_hits") or 0 for r in rows)
    finished = manifest.get("status") in ("succeeded", "failed") and "wall_s" in result
    if finished:
        wall = float(result["wall_s"])
    elif manifest.get("submitted_at"):
        wall = max(now - float(manifest["submitted_at"]), 0.0)
    else:
        stamps = [r["timestamp"] for r in rows if r.get("timestamp") is not None]
        wall = (max(stamps) - min(stamps)) / 1000 if stamps else 0.0
    accepted = int(totals.get("accepted", 0))
    chunks_total = int(totals.get("chunks", 0))
    docs_done = accepted if finished else accepted * chunks_done / max(chunks_total, 1)
    lat = [float(r["total_ms"]) for r in inf if r.get("total_ms") is not None]
    groups = _groups(rows)
    return {
        "job_id": manifest.get("job_id", ""),
        "status": manifest.get("status", "staging"),
        "model": (manifest.get("model") or {}).get("source", ""),
        "documents": {"accepted": accepted, "rejected": int(totals.get("rejected", 0))},
        "chunks": {"total": chunks_total, "done": chunks_done},
        "rejects": int(result.get("rejects", manifest.get("_rejects_so_far", 0))),
        "tokens": {"total": int(totals.get("tokens", 0)), "done": tokens_done,
                   "inference_real": real_inf, "inference_padded": padded_inf,
                   "cached": tokens_done - real_inf},
        "padding_fraction": round(1 - real_inf / padded_inf, 4) if padded_inf else 0.0,
        "wall_s": round(wall, 3),
        "finished": finished,
        "tokens_per_s": round(tokens_done / wall, 1) if wall else 0.0,
        "docs_per_s": round(docs_done / wall, 2) if wall else 0.0,
        "docs_per_s_estimated": not finished,
        "batches": len(inf),
        "latency_ms": {f"p{q}": _pct(lat, q) for q in (50, 95, 99)},
        "cache": {"hits": hits, "chunks": chunks_done,
                  "hit_rate": round(hits / chunks_done, 4) if chunks_done else 0.0},
        "workers": groups,
        "fallback_workers": [g["hostname"] for g in groups if g["fallback"]],
    }


def format_text(s: dict[str, Any]) -> str:
    """The plain-text report ``producer report`` prints."""
    tok, lat, cache = s["tokens"], s["latency_ms"], s["cache"]
    est = " (est., running)" if s["docs_per_s_estimated"] else ""
    lines = [
        f"job        {s['job_id']}  [{s['status']}]  {s['model']}",
        (f"documents  {s['documents']['accepted']:,} accepted, "
         f"{s['documents']['rejected']:,} rejected"),
        (f"chunks     {s['chunks']['done']:,}/{s['chunks']['total']:,} done, "
         f"rejects {s['rejects']:,}"),
        (f"tokens     {tok['inference_real']:,} real / {tok['inference_padded']:,} padded in "
         f"inference batches (padding {s['padding_fraction']:.1%}); "
         f"{tok['cached']:,} from the cache"),
        f"wall       {s['wall_s']:,.1f} s" + ("" if s["finished"] else " so far"),
        (f"throughput {s['tokens_per_s']:,.0f} tokens/s, {s['docs_per_s']:,.1f} docs/s "
         f"end to end{est}"),
        (f"latency    p50 {_ms(lat['p50'])}  p95 {_ms(lat['p95'])}  p99 {_ms(lat['p99'])}  "
         f"({s['batches']:,} inference batches, total_ms)"),
        (f"cache      {cache['hit_rate']:.1%} hit rate ({cache['hits']:,}/{cache['chunks']:,} "
         "chunks)"),
    ]
    if s["fallback_workers"]:
        lines.append(f"FALLBACK   {len(s['fallback_workers'])} worker(s) asked for CUDA and ran "
                     f"on CPU: {', '.join(s['fallback_workers'])}")
    lines.append("")
    lines.extend(_table(_HEAD, [_group_cells(g) for g in s["workers"]]) or ["no metrics yet"])
    return "\n".join(lines)


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
    head = "".join(f"<th>{escape(h)}</th>" for h in _HEAD)
    body = []
    for g in s["workers"]:
        cls = ' class="fallback"' if g["fallback"] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(c)}</td>" for c in _group_cells(g))
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


def write_html(path: str | Path, s: dict[str, Any], rows: Sequence[dict[str, Any]],
               lengths: Sequence[int]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(s, chart_svgs(rows, lengths)), encoding="utf-8")
    return out


# -- helpers ---------------------------------------------------------------------------------
_HEAD = ("host", "queue", "provider", "precision", "batches", "chunks", "hits", "tokens",
         "tok/s busy", "p50 ms", "fallback")


def _groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[tuple(str(r.get(k) or "") for k in GROUP_KEYS)].append(r)
    out = []
    for key, rs in sorted(by.items()):
        inf = [r for r in rs if (r.get("batch_index") or 0) >= 0]
        busy_s = sum(r.get("total_ms") or 0.0 for r in inf) / 1000
        real = sum(r.get("real_tokens") or 0 for r in inf)
        out.append({
            **dict(zip(GROUP_KEYS, key)),
            "batches": len(inf),
            "chunks": sum(r.get("chunks") or 0 for r in inf),
            "cache_hits": sum(r.get("cache_hits") or 0 for r in rs),
            "tokens": real,
            "tokens_per_s": round(real / busy_s, 1) if busy_s else 0.0,
            "p50_ms": _pct([float(r["total_ms"]) for r in inf if r.get("total_ms") is not None],
                           50),
            "fallback": any(bool(r.get("fallback")) for r in rs),
        })
    return out


def _group_cells(g: dict[str, Any]) -> list[str]:
    return [g["hostname"], g["queue"], g["provider"].replace("ExecutionProvider", ""),
            g["precision"], f"{g['batches']:,}", f"{g['chunks']:,}", f"{g['cache_hits']:,}",
            f"{g['tokens']:,}", f"{g['tokens_per_s']:,.0f}", _ms(g["p50_ms"]),
            "FALLBACK" if g["fallback"] else "no"]


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < 4 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    return [fmt(head)] + [fmt(r) for r in rows]


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


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else None


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _count_lines(p: Path) -> int:
    try:
        with open(p, "rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0
