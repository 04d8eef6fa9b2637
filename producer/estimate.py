"""How long a job will take, before it is submitted (``--dry-run``) and while it runs (ETA).

The rate is one worker process's throughput on tokens that miss the cache, whole-shard wall time
included (read, tokenise, infer, write), taken from the newest metrics shards of earlier jobs
with the same bundle under the output root: a shard's wall is from its attempt's start (the
attempt file) to its embeddings file. With no such shard, the CPU probe's figure for the bundle
(``EMBED_HOME/runtime/*.json``, inference only: an optimistic rate) is used, and the line says
so. Cache hits are counted as free.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RECENT_SHARDS = 64


@dataclass
class Rate:
    tokens_per_s: float
    """Per worker process, on tokens that miss the cache."""
    source: str


def wall_estimate(tokens: int, cached_tokens: int, shards: int, workers: int,
                  rate: float) -> float:
    """Seconds for ``shards`` equal shards over ``workers`` processes at ``rate`` tokens/s each.

    Shards run whole on one process, so the last round may leave processes idle:
    >>> wall_estimate(10_000, 0, 10, 4, 100.0)    # 3 rounds of a 10 s shard
    30.0
    >>> wall_estimate(10_000, 5_000, 10, 10, 100.0)  # half cached, one round
    5.0
    """
    if shards <= 0 or rate <= 0:
        return 0.0
    per_shard = max(0, tokens - cached_tokens) / shards / rate
    return math.ceil(shards / max(1, workers)) * per_shard


def measured_rate(out: Path, bundle_path: str, queue: str = "cpu") -> Rate | None:
    """Tokens/s per worker process from the newest done shards of jobs under ``out`` that ran
    on ``queue`` (a GPU worker's rate says nothing about a CPU one)."""
    import pyarrow.parquet as pq

    shards = []
    for m in out.glob("*/manifest.json") if out.is_dir() else []:
        try:
            if json.loads(m.read_text())["model"]["bundle_path"] != bundle_path:
                continue
        except (OSError, ValueError, KeyError, TypeError):
            continue
        shards += list((m.parent / "metrics").glob("part-*.parquet"))
    tokens, wall, n = 0, 0.0, 0
    for p in sorted(shards, key=lambda p: p.stat().st_mtime)[-RECENT_SHARDS:]:
        t = pq.read_table(p).select(["batch_index", "real_tokens", "attempt", "queue"]
                                    ).to_pylist()
        if t and t[0]["queue"] != queue:
            continue
        emb = p.parent.parent / "embeddings" / p.name
        att = p.parent.parent / "_state" / "attempts" / f"{p.stem[5:]}.{t[0]['attempt']}" \
            if t else None
        if not (t and emb.is_file() and att and att.is_file()):
            continue
        try:
            start = float(json.loads(att.read_text())["time"])
        except (OSError, ValueError, KeyError):
            continue
        tokens += sum(r["real_tokens"] for r in t if r["batch_index"] >= 0)
        wall += max(0.0, emb.stat().st_mtime - start)
        n += 1
    if not n or wall <= 0 or tokens <= 0:
        return None
    return Rate(tokens / wall, f"{n} recent shard(s) on queue {queue!r} under {out}")


def probe_rate(home: Path, bundle_path: str) -> Rate | None:
    """The fastest gate-passing figure the CPU probe stored for this bundle on this machine."""
    best = 0.0
    for p in (home / "runtime").glob("*.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict) or str(Path(str(d.get("bundle"))).resolve()) != str(
                Path(bundle_path).resolve()):
            continue
        for r in d.get("rows") or []:
            if isinstance(r, dict) and not r.get("error"):
                best = max(best, float(r.get("tokens_per_s") or 0))
    if best <= 0:
        return None
    return Rate(best, f"the CPU probe's inference-only figure ({home / 'runtime'}; optimistic)")


def fleet_processes(app: Any, queue: str, timeout_s: float = 1.5) -> int:
    """Worker processes consuming ``queue`` (``inspect``: nodes × pool size); 0 if none."""
    insp = app.control.inspect(timeout=timeout_s)
    nodes = {n for n, qs in (insp.active_queues() or {}).items()
             if any(q.get("name") == queue for q in qs)}
    stats = insp.stats() or {}
    return sum(int(((stats.get(n) or {}).get("pool") or {}).get("max-concurrency") or 1)
               for n in nodes)


def eta_s(tokens: int, tokens_done: int, tokens_per_s: float) -> float | None:
    """Seconds left at the rate so far (None before the first shard).

    >>> eta_s(1000, 250, 50.0)
    15.0
    """
    if tokens_per_s <= 0 or tokens_done <= 0:
        return None
    return max(0, tokens - tokens_done) / tokens_per_s
