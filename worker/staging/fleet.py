"""Staging pieces a worker runs (``--stage-on fleet``): one split, and completing staging.

The stage task (``worker/stage_task.py``) calls ``stage_one_split``; the producer's own path
(``producer/ingest.py``) completes staging with the same ``complete_staging``. Shard tasks are
sent with the caller's Celery app (the message is ``worker.contract``'s), so nothing here
imports the app.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker.staging.splits import Split
from worker.staging.shards import StageConfig
from worker.staging.pool import stage_splits
from storage import docindex, ledger
from storage.bundlecache import default_home, job_bundle_dir
from storage.carry import settle
from storage.cancel import is_cancelled
from storage.jobdir import JobDir
from storage.manifest import ShardEntry
from worker.contract import TASK_NAME, ShardTask, task_priority
from worker.fairshare import shard_queue

DUPLICATE_EXAMPLES = 5


def job_stage_config(job: JobDir, home: Path | None = None) -> StageConfig:
    """The staging settings the job recorded: its ``chunking`` and bundle path (manifests
    written before issue 25 also stored them whole as ``staging.config``: read that). A bundle
    URI becomes its local copy under ``home`` (default ``EMBED_HOME``), checked against the
    fingerprints the job recorded (``storage.bundlecache``)."""
    m = job.manifest
    old = (m.staging or {}).get("config")
    since = str(m.delta["since"]) if m.delta and m.delta.get("carry") else ""
    if old:
        return StageConfig(**{**old, "since": since})
    chunking = {k: v for k, v in m.chunking.items() if k != "since"}
    bundle = job_bundle_dir(m.bundle_path, m.model.get("fingerprints"), home or default_home())
    return StageConfig(bundle_path=bundle, since=since, **chunking)


def stage_one_split(job: JobDir, split: int, app: Any, *, fast_tokenizer: bool = True,
                    home: Path | None = None) -> int:
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

    cfg = replace(job_stage_config(job, home), fast_tokenizer=fast_tokenizer)
    stage_splits(m.input["path"], [s], cfg, root=job.root, procs=1, on_shard=on_shard)
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
    kept, losers = docindex.winners(docindex.read_docs(job.root), m.id_policy or "reject")
    docindex.record_duplicates(job.root, losers)
    carried: list[ShardEntry] = []
    if m.delta is not None:
        carried, counts = settle(job.root, m, kept)
        m.delta = {**m.delta, **counts}
        m.shards += carried
    examples = list(dict.fromkeys(str(r["doc_id"]) for r in losers))[:DUPLICATE_EXAMPLES]
    m.totals = {"records": t["records"], "accepted": t["accepted"] - len(losers),
                "rejected": t["rejected"] + len(losers),
                "chunks": t["chunks"] + sum(e.chunks for e in carried),
                "tokens": t["tokens"] + sum(e.tokens for e in carried), "chars": t["chars"],
                "duplicate_ids": len(losers), "duplicate_examples": examples}
    m.staged, m.status = True, "cancelled" if is_cancelled(job) else "running"
    if m.staging is not None:
        m.staging["finished_at"] = time.time()
    job.write_manifest(m)
    job.finalize()  # an empty corpus (or all rejects, or every shard already done)


def _send(app: Any, job: JobDir, shards: list[int], queue: str) -> None:
    priority = task_priority(job.manifest.priority)
    queue = shard_queue(app, queue, job.root.name)  # the job's own queue (fair share)
    with app.producer_or_acquire() as producer:
        for n in shards:
            payload = ShardTask(job_id=job.root.name, job_dir=str(job.root), shard=n).to_dict()
            app.send_task(TASK_NAME, args=[payload], queue=queue, producer=producer, retry=True,
                          priority=priority)
