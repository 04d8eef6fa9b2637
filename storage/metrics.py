"""Metric rows written beside the embeddings, their one summary, and what is measured about the
process.

A shard's ``metrics/part-*.parquet`` has one row per inference batch plus, when the cache served
chunks, one row with ``batch_index == -1`` (the hits, ``padded_tokens == 0``). ``sum_metrics``
is the one place that adds rows up: ``JobDir.finalize`` (the manifest's result),
``producer report`` and ``Job.status`` all use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUMMED_COLUMNS = ("batch_index", "chunks", "real_tokens", "padded_tokens", "cache_hits",
                  "inference_ms")


@dataclass
class MetricTotals:
    """Sums over metric rows; "inference" fields count batch rows only (not cache-hit rows)."""

    rows: int = 0
    chunks: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    cache_hits: int = 0
    inference_ms: float = 0.0
    batches: int = 0
    inference_chunks: int = 0
    inference_real_tokens: int = 0

    def result_fields(self) -> dict[str, Any]:
        """The figures ``manifest.json``'s ``result`` records (``batches`` counts every row)."""
        return {"chunks": self.chunks, "real_tokens": self.real_tokens,
                "padded_tokens": self.padded_tokens, "cache_hits": self.cache_hits,
                "inference_ms": round(self.inference_ms, 1), "batches": self.rows}


def sum_metrics(rows: Iterable[Mapping[str, Any]]) -> MetricTotals:
    """Add up metric rows (missing or null values count as 0).

    >>> t = sum_metrics([{"batch_index": -1, "chunks": 3, "cache_hits": 3, "real_tokens": 30},
    ...                  {"batch_index": 0, "chunks": 2, "real_tokens": 20, "padded_tokens": 24}])
    >>> (t.rows, t.batches, t.chunks, t.cache_hits, t.real_tokens, t.inference_real_tokens)
    (2, 1, 5, 3, 50, 20)
    """
    t = MetricTotals()
    for r in rows:
        t.rows += 1
        chunks, real = int(r.get("chunks") or 0), int(r.get("real_tokens") or 0)
        t.chunks += chunks
        t.real_tokens += real
        t.padded_tokens += int(r.get("padded_tokens") or 0)
        t.cache_hits += int(r.get("cache_hits") or 0)
        t.inference_ms += float(r.get("inference_ms") or 0.0)
        if int(r.get("batch_index") or 0) >= 0:
            t.batches += 1
            t.inference_chunks += chunks
            t.inference_real_tokens += real
    return t


def read_metric_rows(paths: Iterable[Path],
                     columns: Iterable[str] = SUMMED_COLUMNS) -> list[dict[str, Any]]:
    """The rows of metrics Parquet files, as dicts of the given columns (those present)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.integrity import corrupt_metrics

    rows: list[dict[str, Any]] = []
    for p in paths:
        try:
            t = pq.read_table(p)
        except (OSError, pa.ArrowException) as exc:
            raise corrupt_metrics(p, exc) from None
        cols = {c: t[c].to_pylist() for c in columns if c in t.column_names}
        rows.extend(dict(zip(cols, vals)) for vals in zip(*cols.values()))
    return rows


def metrics_totals(paths: Iterable[Path]) -> MetricTotals:
    """``sum_metrics`` over the rows of these metrics files."""
    return sum_metrics(read_metric_rows(paths))


def rss_mb() -> float:
    """Resident set size of this process now, in MB (rounded to 0.1)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
