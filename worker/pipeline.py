"""The worker flow for one shard, in stage order: the one place to read it top to bottom.

The numbers are the README's stage table (stages 1-4 run in the producer):

    already done? (a redelivered task whose shard landed has nothing to do) → one more attempt
    5  load the model (once per process) and read ``input/part-NNNNN.parquet``
    9  cache lookup: one MGET for the whole shard; hits skip stages 6-8
    6  tokenise the misses once, sort by tokens, cut batches under the token budget
    7  run ONNX Runtime; a failing batch is split down to single chunks
    8  pool and normalise (inside ``model.run``: worker/model/session.py → pooling.py); a job
       with BGE-M3 outputs also keeps sparse and ColBERT rows (worker/extra_outputs.py)
    9  cache store: pipelined SET of the new vectors
    10 write rejects, metrics, embeddings (last; write-once in a store); the last finalises

Crash safety lives in worker/attempts.py: an in-flight marker names the batch running, chunks
left in flight by a crashed attempt run alone and first, a chunk in flight at two crashes
becomes a reject; every way of giving up goes through ``attempts.give_up``."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from billiard.exceptions import SoftTimeLimitExceeded

from storage.atomic import write_bytes_atomic
from storage.jobdir import JobDir
from storage.metrics import rss_mb
from storage.shards import embeddings_table, metrics_table, shard_is_valid, write_table
from worker import attempts, cancel
from worker import faults as failpoints
from worker.errors import InferenceError
from worker.dense import DenseSpec
from worker.extra_outputs import DENSE
from worker.rows import ShardRows
from worker.model.batching import Batch, encode, pad_rows, plan_batches

log = logging.getLogger(__name__)


@dataclass
class ShardContext:
    """Everything one shard task needs, built from the message by worker/tasks.py."""

    job: JobDir
    shard: int
    queue: str
    hostname: str
    max_attempts: int
    max_batch_tokens: int  # 0: the model's own (``LoadedModel.batch_tokens``)
    load_model: Callable[[], Any]
    cache_for: Callable[[int], Any]
    faults: str = ""
    soft_time_limit: float = 0
    heartbeat_s: float = 5.0


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
    """Stages 5-10 for one shard; an error either retries the shard or gives it up."""
    t0 = time.perf_counter()
    job, shard, attempt = ctx.job, ctx.shard, None
    try:
        if cancel.skip_on_receipt(job, shard):
            return ShardResult(shard, "cancelled")
        if shard_is_valid(job.embeddings_path(shard), job.expected_chunks(shard)):
            return ShardResult(shard, "already done", finalized=job.finalize())
        attempt = attempts.begin(job, shard, ctx.max_attempts,
                                 attempts.attempt_info(os.getpid(), ctx.hostname, ctx.queue))
        if cancel.skip_on_receipt(job, shard):  # cancelled between the check and the record
            job.drop_attempt(shard, attempt.number)
            return ShardResult(shard, "cancelled")
        if attempt.over_cap:
            return _give_up(ctx, attempt.cap_reason(), attempt.number - 1, attempt.number)
        with attempt.heartbeat(ctx.heartbeat_s):  # "held by a live process", for the producer
            return _run_attempt(ctx, attempt, t0)
    except cancel.ShardCancelled:  # nothing written; a cancel is not the shard's fault
        if attempt is not None:
            job.drop_attempt(shard, attempt.number)
        return ShardResult(shard, "cancelled")
    except Exception as exc:  # attempts decides: RetryShard propagates, or the shard fails
        reason = attempts.after_error(job, shard, exc, ctx.max_attempts, ctx.soft_time_limit,
                                      attempt.number if attempt else None)
        n = len(job.attempts(shard))
        return _give_up(ctx, reason, n, n)


def _run_attempt(ctx: ShardContext, attempt: attempts.Attempt, t0: float) -> ShardResult:
    """Stages 5-10 of one attempt (errors go to ``embed_shard``'s handler)."""
    job, shard = ctx.job, ctx.shard
    # 5. The model (one session per process) and the staged chunks.
    model = ctx.load_model()
    cfg = model.bundle.config
    rows = ShardRows.read(job.input_path(shard), cfg.dim, job.manifest.outputs or DENSE)
    model = rows.outputs.bind(model)  # BGE-M3 outputs come from the same session run
    dense = DenseSpec.for_job(job.manifest, cfg.dim)  # --dim/--dtype: cast at stage 10
    rows.outputs.dense_bytes = dense.bytes_per_vector
    base = _metric_base(ctx, model, attempt.number)
    # 9. One MGET for the whole shard (keys name the output set).
    cache = ctx.cache_for(cfg.dim)
    keys = rows.outputs.keys(model.fingerprint, rows.inputs["text_sha256"].to_pylist())
    metrics = _fill_from_cache(rows, rows.outputs.lookup(cache, keys), base)
    for i in sorted(attempt.poison & set(rows.todo())):
        rows.reject(i, attempt.poison_reason())
    # 6. Tokenise the misses once; suspects alone and first, the rest by token budget.
    todo = rows.todo()
    t_tok = time.perf_counter()
    ids = _token_ids(rows, todo, model.tokenizer, cfg.max_length, shard)
    tok_ms_per_chunk = (time.perf_counter() - t_tok) * 1000 / max(1, len(todo))
    groups = plan_groups(ids, attempt.suspects, ctx.max_batch_tokens or model.batch_tokens)
    faults, fresh = failpoints.parse(ctx.faults), []
    with attempt.inflight(groups) as mark:
        # 7-8. Run, pool, normalise; a failing batch is split down to single chunks.
        for b, group in enumerate(groups):
            cancel.check_batch(job, shard, b, len(groups))
            mark(b)
            done, inf_ms = _embed_group(model, rows, group, ids, faults)
            fresh += done
            metrics.append(_batch_metric(base, b, group, ids, tok_ms_per_chunk, inf_ms,
                                         rows.output_bytes(group)))
        # 9. Store the new vectors (a Redis outage only costs future hits).
        rows.outputs.store(cache, keys, rows.vectors, fresh)
        # 10. Rejects, metrics, the embeddings last (their presence means "done"). A late
        # finisher (paused past the visibility timeout while a redelivered copy landed the
        # shard) discards its result; in a store the embeddings' conditional PUT decides too.
        if (shard_is_valid(job.embeddings_path(shard), job.expected_chunks(shard))
                or not _write_shards(job, shard, model, rows, metrics, dense)):
            log.warning("shard %d landed while attempt %d ran (redelivered elsewhere): "
                        "discarding this attempt's result", shard, attempt.number)
            return ShardResult(shard, "already done", attempt=attempt.number,
                               finalized=job.finalize())
    return _done(ctx, model, attempt.number, rows, t0, finalized=job.finalize())


def _token_ids(rows: ShardRows, todo: list[int], tokenizer: Any, max_length: int,
               shard: int) -> dict[int, Any]:
    """Ids per position to embed: staged ids where the input shard has valid ones, else the
    text tokenised here (same ids: staging encodes ``text`` with the bundle's tokenizer)."""
    stored = rows.stored_ids(tokenizer.get_vocab_size(), max_length)
    if stored is None:
        log.warning("shard %d: staged token ids do not match the bundle; tokenising instead",
                    shard)
        stored = {}
    need = [i for i in todo if i not in stored]
    fresh = dict(zip(need, encode(tokenizer, [rows.texts[i] for i in need]), strict=True))
    return {i: stored[i] if i in stored else fresh[i] for i in todo}


def plan_groups(ids: dict[int, list[int]], suspects: set[int], budget: int) -> list[list[int]]:
    """Batches of positions: each suspect alone and first, then token-budget batches.

    >>> plan_groups({0: [1, 2], 1: [1, 2, 3], 2: [1]}, {1}, 100)
    [[1], [2, 0]]
    """
    alone = [[i] for i in ids if i in suspects]
    rest = [i for i in ids if i not in suspects]
    return alone + [[rest[j] for j in b] for b in plan_batches([len(ids[i]) for i in rest],
                                                               budget)]


def _fill_from_cache(rows: ShardRows, hits: list[np.ndarray | None],
                     base: dict[str, Any]) -> list[dict[str, Any]]:
    """Copy cache hits into ``rows``; one metric row (batch -1) when there were any."""
    for i, vec in enumerate(hits):
        if vec is not None:
            rows.vectors[i], rows.cached[i] = vec, True
    if not rows.cached.any():
        return []
    n = int(rows.cached.sum())
    tokens = int(sum(t for t, c in zip(rows.inputs["n_tokens"].to_pylist(), rows.cached) if c))
    hit_bytes = rows.output_bytes([int(i) for i in np.flatnonzero(rows.cached)])
    return [_metric(base, -1, n, tokens, 0, n, 0.0, 0.0, hit_bytes)]


def _embed_group(model: Any, rows: ShardRows, group: list[int], ids: dict[int, list[int]],
                 faults: dict[str, str]) -> tuple[list[int], float]:
    """Embed one batch into ``rows``; chunks that fail alone become rejects.

    Returns the positions embedded (for the cache) and the inference time in ms.
    """
    t_inf = time.perf_counter()
    done: list[int] = []
    batch = pad_rows([ids[i] for i in group], group, model.pad_id)
    for part, vecs, err in _run_split(model, batch, rows.texts, faults):
        if err is not None:
            rows.reject(part.positions[0], f"inference failed: {err}")
            continue
        rows.vectors[part.positions] = vecs
        done += part.positions
    return done, (time.perf_counter() - t_inf) * 1000


def _run_split(model: Any, batch: Batch, texts: list[str], faults: dict[str, str]
               ) -> Iterator[tuple[Batch, np.ndarray | None, str | None]]:
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


def _write_shards(job: JobDir, shard: int, model: Any, rows: ShardRows,
                  metrics: list[dict[str, Any]], dense: DenseSpec) -> bool:
    if rows.rejects:
        write_bytes_atomic(job.shard_rejects_path(shard),
                           b"".join(json.dumps(r).encode() + b"\n" for r in rows.rejects))
    meta = {"fingerprint": model.fingerprint, "precision": model.precision,
            "provider": model.provider, "dim": dense.dim, "dtype": dense.dtype,
            "rejected": int((~rows.ok).sum()), "source": model.bundle.config.source}
    write_table(job.metrics_path(shard), metrics_table(metrics), meta)
    return write_table(job.embeddings_path(shard),
                       embeddings_table(inputs=rows.inputs, cached=rows.cached, keep=rows.ok,
                                        **dense.columns(job, shard, rows.vectors, rows.ok),
                                        **rows.outputs.table_columns()), meta,
                       expected_chunks=job.expected_chunks(shard))


def _done(ctx: ShardContext, model: Any, attempt: int, rows: ShardRows, t0: float,
          finalized: bool) -> ShardResult:
    return ShardResult(
        ctx.shard, "done", chunks=int(rows.ok.sum()),
        tokens=int(sum(rows.inputs["n_tokens"].to_pylist())),
        cache_hits=int(rows.cached.sum()), rejected=int((~rows.ok).sum()),
        provider=model.provider, precision=model.precision, attempt=attempt,
        ms=round((time.perf_counter() - t0) * 1000, 1), finalized=finalized,
        extra={"fallback": model.fallback} if model.fallback else {},
    )


def _give_up(ctx: ShardContext, reason: str, attempts_made: int, attempt: int) -> ShardResult:
    finalized = attempts.give_up(ctx.job, ctx.shard, reason, attempts_made)
    return ShardResult(ctx.shard, "failed", attempt=attempt, finalized=finalized,
                       extra={"reason": reason})


def _metric_base(ctx: ShardContext, model: Any, attempt: int) -> dict[str, Any]:
    return {"shard": ctx.shard, "hostname": ctx.hostname, "queue": ctx.queue,
            "provider": model.provider, "precision": model.precision,
            "fallback": model.fallback, "attempt": attempt}


def _batch_metric(base: dict[str, Any], b: int, group: list[int], ids: dict[int, list[int]],
                  tok_ms_per_chunk: float, inf_ms: float, out_bytes: int) -> dict[str, Any]:
    """One metric row per batch: real tokens, padded tokens (rows × longest), times, bytes."""
    real = sum(len(ids[i]) for i in group)
    padded = max(len(ids[i]) for i in group) * len(group)
    return _metric(base, b, len(group), real, padded, 0, tok_ms_per_chunk * len(group), inf_ms,
                   out_bytes)


def _metric(base: dict[str, Any], b: int, chunks: int, real: int, padded: int, hits: int,
            tok_ms: float, inf_ms: float, out_bytes: int = 0) -> dict[str, Any]:
    total_ms = tok_ms + inf_ms
    return {**base, "batch_index": b, "chunks": chunks, "real_tokens": real,
            "padded_tokens": padded, "cache_hits": hits, "tokenize_ms": round(tok_ms, 3),
            "inference_ms": round(inf_ms, 3), "total_ms": round(total_ms, 3),
            "tokens_per_s": round(real / (total_ms / 1000), 1) if total_ms > 0 else 0.0,
            "rss_mb": rss_mb(), "output_bytes": out_bytes,
            "timestamp": datetime.now(timezone.utc)}
