"""Staging pieces a worker runs too (``--stage-on fleet``): one split, and completing staging.

Kept apart from ``producer.ingest`` so that the stage task (``worker/stage_task.py``, which
imports this lazily) never reaches ``producer.broker`` and through it the Celery app: no import
cycle. Shard tasks are sent with the worker's own app (the message is ``worker.contract``'s).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from producer.splits import Split
from producer.staging import StageConfig
from producer.streaming import stage_splits
from storage import ledger
from storage.cancel import is_cancelled
from storage.jobdir import JobDir
from storage.manifest import ShardEntry
from worker.contract import TASK_NAME, ShardTask

DUPLICATE_EXAMPLES = 5


def stage_config(job: JobDir) -> StageConfig:
    return StageConfig(**job.manifest.staging["config"])  # type: ignore[index]


def stage_one_split(job: JobDir, split: int, app: Any) -> int:
    """Stage one split (a stage task on a worker); complete staging if it was the last one.
    Re-sends the tasks of the split's shards already staged without output (a redelivered
    stage task does not know whether its predecessor sent them)."""
    m = job.manifest
    if m.staged:
        return 0
    s = next(Split.from_dict(d) for d in m.splits or [] if d["index"] == split)
    done = {st.shard for st in job.shard_states() if st.state != "pending"}
    old = [cp.shard for cp in ledger.read_split(job.root, split)
           if cp.shard is not None and cp.shard not in done]
    if old:
        _send(app, job, old, m.queue)
    sent = len(old)

    def on_shard(cp: ledger.Checkpoint) -> None:
        nonlocal sent
        if cp.shard is not None:
            _send(app, job, [cp.shard], m.queue)
            sent += 1

    stage_splits(Path(m.input["path"]), [s], stage_config(job), root=job.root, procs=1,
                 on_shard=on_shard)
    ledgers = ledger.read_all(job.root)
    if all(ledgers.get(d["index"]) and ledgers[d["index"]][-1].done for d in m.splits or []):
        complete_staging(job)
    return sent


def complete_staging(job: JobDir) -> None:
    """Write the ledger's shards and totals into the manifest, set ``staged``, finalise."""
    ledgers = ledger.read_all(job.root)
    t = ledger.totals(ledgers)
    m = job.reload()
    m.shards = sorted((ShardEntry(cp.shard, cp.chunks, cp.tokens)
                       for cps in ledgers.values() for cp in cps if cp.shard is not None),
                      key=lambda e: e.shard)
    dups, examples = _duplicates(job, m.shards)
    m.totals = {"records": t["records"], "accepted": t["accepted"], "rejected": t["rejected"],
                "chunks": t["chunks"], "tokens": t["tokens"], "chars": t["chars"],
                "duplicate_ids": dups, "duplicate_examples": examples}
    m.staged, m.status = True, "cancelled" if is_cancelled(job) else "running"
    if m.staging is not None:
        m.staging["finished_at"] = time.time()
    job.write_manifest(m)
    job.finalize()  # an empty corpus (or all rejects, or every shard already done)


def _duplicates(job: JobDir, shards: list[ShardEntry]) -> tuple[int, list[str]]:
    """Records sharing an id, in input order: from each record's first chunk."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = []
    for s in shards:
        t = pq.read_table(job.input_path(s.shard), columns=["line", "doc_id", "chunk_index"])
        parts.append(t.filter(pc.equal(t["chunk_index"], 0)).select(["line", "doc_id"]))
    if not parts:
        return 0, []
    ids = pa.concat_tables(parts).sort_by("line")["doc_id"].to_pylist()
    seen: set[str] = set()
    dups = 0
    examples: list[str] = []
    for d in ids:
        if d in seen:
            dups += 1
            if len(examples) < DUPLICATE_EXAMPLES:
                examples.append(d)
        seen.add(d)
    return dups, examples


def _send(app: Any, job: JobDir, shards: list[int], queue: str) -> None:
    from producer.priority import task_priority

    priority = task_priority(job.manifest.priority)
    with app.producer_or_acquire() as producer:
        for n in shards:
            payload = ShardTask(job_id=job.root.name, job_dir=str(job.root), shard=n).to_dict()
            app.send_task(TASK_NAME, args=[payload], queue=queue, producer=producer, retry=True,
                          priority=priority)
