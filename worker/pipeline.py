"""The worker flow for one shard, in stage order: the one place to read it top to bottom.

1 already done? → 2 read the staged input → 3 cache MGET → 4 tokenise misses, sort, cut token-
budget batches → 5 run, pool, normalise → 6 cache SET → 7 write embeddings + metrics shards →
8 finalise the job if this was the last shard → 9 return a small summary.

Crash safety: before each batch the chunk positions in flight are written to
``_state/inflight/NNNNN.<attempt>`` and the file is removed when the attempt ends. A file left
behind means that attempt died (SIGKILL, OOM). The next attempt runs those chunks one by one,
first; a chunk in flight at two crashes, the last one alone, is a poison chunk and becomes a
reject instead of killing the worker forever.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from billiard.exceptions import SoftTimeLimitExceeded

from storage.atomic import write_bytes_atomic
from storage.hashing import content_key
from storage.jobdir import JobDir
from storage.metrics import rss_mb
from storage.shards import embeddings_table, metrics_table, shard_is_valid, write_table
from worker import faults as failpoints
from worker.model.batching import Batch, encode, pad_rows, plan_batches
from worker.errors import InferenceError

log = logging.getLogger(__name__)


@dataclass
class ShardContext:
    job: JobDir
    shard: int
    queue: str
    hostname: str
    max_attempts: int
    max_batch_tokens: int
    load_model: Callable[[], Any]
    cache_for: Callable[[int], Any]
    faults: str = ""


@dataclass
class ShardResult:
    """What the task returns (and Flower shows): counts and timings, never vectors."""

    shard: int
    status: str
    chunks: int = 0
    tokens: int = 0
    cache_hits: int = 0
    rejected: int = 0
    provider: str = ""
    precision: str = ""
    attempt: int = 0
    ms: float = 0.0
    finalized: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embed_shard(ctx: ShardContext) -> ShardResult:
    t0 = time.perf_counter()
    job, shard = ctx.job, ctx.shard
    expected = job.expected_chunks(shard)
    if expected is None:
        raise ValueError(f"shard {shard} is not in {job.manifest_path}")
    # 1. A redelivered task whose shard already landed has nothing to do.
    if shard_is_valid(job.embeddings_path(shard), expected):
        return ShardResult(shard, "already done", finalized=job.finalize())
    attempt = job.next_attempt(shard, {"pid": os.getpid(), "host": ctx.hostname,
                                       "queue": ctx.queue, "time": time.time()})
    crashed = _crashed_inflight(job, shard, attempt)
    if attempt > ctx.max_attempts:
        reason = f"gave up after {attempt - 1} attempts" + _describe(job, shard, crashed)
        job.mark_failed(shard, reason, attempts=attempt - 1)
        return ShardResult(shard, "failed", attempt=attempt, finalized=job.finalize(),
                           extra={"reason": reason})
    # 2. Read the staged chunks.
    inputs = pq.read_table(job.input_path(shard))
    texts: list[str] = inputs["text"].to_pylist()
    n = len(texts)
    model = ctx.load_model()
    dim = model.bundle.config.dim
    vectors = np.zeros((n, dim), dtype=np.float32)
    cached = np.zeros(n, dtype=bool)
    ok = np.ones(n, dtype=bool)
    rejects: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    common = {"shard": shard, "hostname": ctx.hostname, "queue": ctx.queue,
              "provider": model.provider, "precision": model.precision,
              "fallback": model.fallback, "attempt": attempt}
    # 3. One MGET for the whole shard.
    cache = ctx.cache_for(dim)
    keys = [content_key(model.fingerprint, h) for h in inputs["text_sha256"].to_pylist()]
    for i, vec in enumerate(cache.get_many(keys)):
        if vec is not None:
            vectors[i], cached[i] = vec, True
    n_tokens = inputs["n_tokens"].to_pylist()
    if cached.any():
        hit_tokens = int(sum(t for t, c in zip(n_tokens, cached) if c))
        metrics.append(_metric(common, -1, int(cached.sum()), hit_tokens, 0, int(cached.sum()),
                               0.0, 0.0, 0.0))
    # 4. Tokenise the misses once; sort; cut batches under the token budget.
    todo = [i for i in range(n) if not cached[i]]
    poison = _poison(crashed)
    for i in sorted(poison & set(todo)):
        ok[i] = False
        rejects.append(_reject(inputs, i, "worker process died while embedding this chunk "
                                          f"({len(crashed)} crashed attempts); quarantined"))
    todo = [i for i in todo if ok[i]]
    t_tok = time.perf_counter()
    ids = encode(model.tokenizer, [texts[i] for i in todo])
    tokenize_ms = (time.perf_counter() - t_tok) * 1000
    suspects = set().union(*crashed) if crashed else set()
    groups = [[k] for k, i in enumerate(todo) if i in suspects]  # alone and first
    rest = [k for k, i in enumerate(todo) if i not in suspects]
    groups += [[rest[j] for j in b] for b in plan_batches([len(ids[k]) for k in rest],
                                                           ctx.max_batch_tokens)]
    inflight = job.state_dir / "inflight" / f"{shard:05d}.{attempt}"
    fault_spec = failpoints.parse(ctx.faults)
    fresh: list[tuple[str, np.ndarray]] = []
    try:  # until the attempt ends, _state/inflight/NNNNN.<attempt> names the batch running
        for b, group in enumerate(groups):
            # 5. Run, pool, normalise; a failing batch is split down to single chunks.
            write_bytes_atomic(inflight, json.dumps([todo[k] for k in group]).encode())
            batch = pad_rows([ids[k] for k in group], [todo[k] for k in group], model.pad_id)
            t_inf = time.perf_counter()
            for part, vecs, err in _run_split(model, batch, texts, fault_spec):
                if err is not None:
                    i = part.positions[0]
                    ok[i] = False
                    rejects.append(_reject(inputs, i, f"inference failed: {err}"))
                    continue
                vectors[part.positions] = vecs
                fresh.extend((keys[i], vectors[i]) for i in part.positions)
            inf_ms = (time.perf_counter() - t_inf) * 1000
            tok_ms = tokenize_ms * len(group) / max(1, len(todo))
            metrics.append(_metric(common, b, len(group), batch.real_tokens,
                                   batch.padded_tokens, 0, tok_ms, inf_ms, tok_ms + inf_ms))
        # 6. Store the new vectors (a Redis outage only costs future hits).
        cache.put_many(fresh)
        # 7. Write the shards: rejects first, the embeddings last (their presence means "done").
        if rejects:
            job.shard_rejects_path(shard).parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(job.shard_rejects_path(shard),
                               b"".join(json.dumps(r).encode() + b"\n" for r in rejects))
        meta = {"fingerprint": model.fingerprint, "precision": model.precision,
                "provider": model.provider, "dim": dim, "rejected": int((~ok).sum()),
                "source": model.bundle.config.source}
        write_table(job.metrics_path(shard), metrics_table(metrics), meta)
        write_table(job.embeddings_path(shard), embeddings_table(inputs, vectors, cached, ok),
                    meta)
    finally:
        # Any Python-level exit (success, soft time limit, an I/O error) ends the attempt
        # cleanly: only a process that died (SIGKILL, OOM, hard time limit) leaves the file.
        inflight.unlink(missing_ok=True)
    # 8. The last shard to land finalises the job (idempotent, race-safe).
    finalized = job.finalize()
    # 9. A small summary for Flower and the logs.
    return ShardResult(
        shard, "done", chunks=int(ok.sum()), tokens=int(sum(n_tokens)),
        cache_hits=int(cached.sum()), rejected=int((~ok).sum()), provider=model.provider,
        precision=model.precision, attempt=attempt,
        ms=round((time.perf_counter() - t0) * 1000, 1), finalized=finalized,
        extra={"fallback": model.fallback} if model.fallback else {},
    )


def _run_split(model: Any, batch: Batch, texts: list[str], faults: dict[str, str]):
    """Yield (sub-batch, vectors, None) or (single-row batch, None, error) — halving on error."""
    try:
        failpoints.before_batch(faults, [texts[i] for i in batch.positions])
        yield batch, model.run(batch), None
        return
    except (InferenceError, MemoryError) as exc:
        if isinstance(exc.__cause__, SoftTimeLimitExceeded):
            # The session wraps every exception; the time limit is not the batch's fault.
            raise exc.__cause__ from None
        if len(batch.positions) == 1:
            yield batch, None, str(exc)[:500]
            return
        log.warning("batch of %d failed (%s); splitting", len(batch.positions), exc)
    half = len(batch.positions) // 2
    for lo, hi in ((0, half), (half, len(batch.positions))):
        rows = [list(batch.input_ids[k, : int(batch.attention_mask[k].sum())])
                for k in range(lo, hi)]
        yield from _run_split(model, pad_rows(rows, batch.positions[lo:hi], model.pad_id),
                              texts, faults)


def _crashed_inflight(job: JobDir, shard: int, attempt: int) -> list[set[int]]:
    """Positions in flight when earlier attempts of this shard died."""
    out = []
    for p in (job.state_dir / "inflight").glob(f"{shard:05d}.*"):
        if p.suffix[1:].isdigit() and int(p.suffix[1:]) < attempt:
            try:
                out.append(set(json.loads(p.read_text())))
            except (ValueError, OSError):
                continue
    return out


def _poison(crashed: list[set[int]]) -> set[int]:
    """Chunks in flight at two crashes, at least one of them alone."""
    alone = {next(iter(s)) for s in crashed if len(s) == 1}
    return {i for i in alone if sum(i in s for s in crashed) >= 2}


def _describe(job: JobDir, shard: int, crashed: list[set[int]]) -> str:
    if not crashed:
        return ""
    t = pq.read_table(job.input_path(shard), columns=["doc_id", "chunk_index", "line"])
    pos = sorted(set().union(*crashed))[:5]
    who = ", ".join(f"doc {t['doc_id'][i].as_py()!r} chunk {t['chunk_index'][i].as_py()} "
                    f"(line {t['line'][i].as_py()})" for i in pos)
    return f"; the worker died while embedding {who}"


def _reject(inputs: Any, i: int, reason: str) -> dict[str, Any]:
    return {"line": inputs["line"][i].as_py(), "doc_id": inputs["doc_id"][i].as_py(),
            "chunk_index": inputs["chunk_index"][i].as_py(), "reason": reason}


def _metric(common: dict[str, Any], b: int, chunks: int, real: int, padded: int, hits: int,
            tok_ms: float, inf_ms: float, total_ms: float) -> dict[str, Any]:
    return {**common, "batch_index": b, "chunks": chunks, "real_tokens": real,
            "padded_tokens": padded, "cache_hits": hits, "tokenize_ms": round(tok_ms, 3),
            "inference_ms": round(inf_ms, 3), "total_ms": round(total_ms, 3),
            "tokens_per_s": round(real / (total_ms / 1000), 1) if total_ms > 0 else 0.0,
            "rss_mb": rss_mb(), "timestamp": datetime.now(timezone.utc)}
