"""``producer report``: what a job did, from its ``metrics/*.parquet`` and ``manifest.json``.

Works on a finished or a running job (only the shards that landed have metrics). The metrics
have one row per inference batch plus, per shard with cache hits, one row with
``batch_index == -1`` (the hits, ``padded_tokens == 0``): latency and padding use inference rows
only, the cache hit rate and end-to-end token counts use both. ``summarize`` and the renderers
are pure; only ``load_report`` touches files. The HTML page with its charts is ``html.py``; the
totals come from ``storage.metrics.sum_metrics`` (the same sums as the manifest's result).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from producer.progress import delta_line
from producer.tools.evaluate import evaluation_lines
from producer.tools.table import text_table
from storage import ledger
from storage.bundle import load_bundle
from storage.errors import BundleError
from storage.jobdir import JobDir
from storage.metrics import sum_metrics
from storage.quantize import bytes_per_vector
from storage.shards import output_sizes

GROUP_KEYS = ("hostname", "queue", "provider", "precision")
METRIC_COLUMNS = ("shard", "batch_index", "hostname", "queue", "provider", "precision",
                  "fallback", "chunks", "real_tokens", "padded_tokens", "cache_hits",
                  "total_ms", "timestamp")


def load_report(job_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[int]]:
    """The manifest, the metrics rows of every landed shard, and the chunk lengths in tokens.

    Chunk lengths come from the staged input shards (every chunk of the job), else from the
    embeddings shards written so far.
    """
    job = JobDir.open(job_dir)
    manifest = job.manifest.to_dict()
    manifest["_rejects_so_far"] = sum(
        _count_lines(p) for p in [*(job.state_dir / "rejects").glob("*.jsonl"),
                                  *ledger.reject_files(job.root)])
    manifest["_evaluation"] = bundle_evaluation(manifest.get("model") or {})
    manifest["_output_bytes"] = output_sizes(sorted(job.embeddings_dir.glob("part-*.parquet")))
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


def bundle_evaluation(model: dict[str, Any]) -> dict[str, Any] | None:
    """The eval-gate figures (``producer export --eval-data``) of the job's bundle, if it is
    still there and unchanged (same fp32 fingerprint as in the manifest)."""
    try:
        bundle = load_bundle(model["bundle_path"])
        same = bundle.fingerprint("fp32") == (model.get("fingerprints") or {}).get("fp32")
    except (KeyError, OSError, BundleError):
        return None
    return bundle.config.evaluation if same else None


def summarize(manifest: dict[str, Any], rows: Sequence[dict[str, Any]],
              now: float | None = None) -> dict[str, Any]:
    """Job-level figures and the per-worker breakdown, as JSON-ready plain data."""
    now = time.time() if now is None else now
    totals = manifest.get("totals", {})
    result = manifest.get("result") or {}
    inf = [r for r in rows if (r.get("batch_index") or 0) >= 0]
    tot = sum_metrics(rows)
    real_inf, padded_inf = tot.inference_real_tokens, tot.padded_tokens  # hit rows pad 0
    tokens_done, chunks_done, hits = tot.real_tokens, tot.chunks, tot.cache_hits
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
        "batches": tot.batches,
        "latency_ms": {f"p{q}": _pct(lat, q) for q in (50, 95, 99)},
        "cache": {"hits": hits, "chunks": chunks_done,
                  "hit_rate": round(hits / chunks_done, 4) if chunks_done else 0.0},
        "workers": groups,
        "fallback_workers": [g["hostname"] for g in groups if g["fallback"]],
        "evaluation": manifest.get("_evaluation"),
        "bytes_per_chunk": bytes_per_chunk(manifest),
        "delta": manifest.get("delta"),
    }


def bytes_per_chunk(manifest: dict[str, Any]) -> dict[str, Any]:
    """Per output: bytes per chunk in the written shards (``disk``, compressed; ``encoded``,
    before compression); dense also its stored form and raw value bytes (``--dim``/``--dtype``)."""
    out: dict[str, Any] = {}
    for name, d in (manifest.get("_output_bytes") or {}).items():
        rows = max(int(d["rows"]), 1)
        out[name] = {"disk": round(d["disk"] / rows, 1), "encoded": round(d["encoded"] / rows, 1)}
    if "dense" in out:
        dense = manifest.get("dense") or {}
        dim = int(dense.get("dim") or (manifest.get("model") or {}).get("dim") or 0)
        dtype = str(dense.get("dtype") or "float32")
        out["dense"].update(dim=dim, dtype=dtype, raw=bytes_per_vector(dtype, dim) if dim else 0)
    return out


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
        *([f"delta      {delta_line(s['delta'])}"] if s.get("delta") else []),
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
    if s.get("bytes_per_chunk"):
        lines.append("bytes      per chunk on disk: " + ", ".join(
            f"{k} {v['disk']:,.1f}" + (f" ({v['dtype']}, {v['dim']} dims, {v['raw']} raw)"
                                       if k == "dense" else "")
            for k, v in s["bytes_per_chunk"].items()))
    lines.extend(evaluation_lines(s.get("evaluation")))
    lines.append("")
    lines.extend(text_table(HEAD, [group_cells(g) for g in s["workers"]], left=4)
                 if s["workers"] else ["no metrics yet"])
    return "\n".join(lines)


HEAD = ("host", "queue", "provider", "precision", "batches", "chunks", "hits", "tokens",
         "tok/s busy", "p50 ms", "fallback")


def _groups(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[tuple(str(r.get(k) or "") for k in GROUP_KEYS)].append(r)
    out = []
    for key, rs in sorted(by.items()):
        inf = [r for r in rs if (r.get("batch_index") or 0) >= 0]
        busy_s = sum(r.get("total_ms") or 0.0 for r in inf) / 1000
        tot = sum_metrics(rs)
        real = tot.inference_real_tokens
        out.append({
            **dict(zip(GROUP_KEYS, key)),
            "batches": tot.batches,
            "chunks": tot.inference_chunks,
            "cache_hits": tot.cache_hits,
            "tokens": real,
            "tokens_per_s": round(real / busy_s, 1) if busy_s else 0.0,
            "p50_ms": _pct([float(r["total_ms"]) for r in inf if r.get("total_ms") is not None],
                           50),
            "fallback": any(bool(r.get("fallback")) for r in rs),
        })
    return out


def group_cells(g: dict[str, Any]) -> list[str]:
    return [g["hostname"], g["queue"], g["provider"].replace("ExecutionProvider", ""),
            g["precision"], f"{g['batches']:,}", f"{g['chunks']:,}", f"{g['cache_hits']:,}",
            f"{g['tokens']:,}", f"{g['tokens_per_s']:,.0f}", _ms(g["p50_ms"]),
            "FALLBACK" if g["fallback"] else "no"]


def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values), q)), 2) if values else None


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def _count_lines(p: Path) -> int:
    try:  # read whole: the job may be in an object store (a report's files are small)
        return sum(1 for line in p.read_bytes().splitlines() if line.strip())
    except OSError:
        return 0
