"""Stage 3 on the producer, and stage 4's sending: stage a job's splits, send each shard's
task as soon as it is durable.

``run_staging`` is what ``submit`` does after writing the manifest; ``continue_staging`` is what
``resume`` does for a job whose producer died while staging: it checks the corpus is the one the
manifest names (same checksum, same split plan), re-sends the tasks of staged shards without
output, then stages from each split's last checkpoint. ``complete_staging`` turns the ledger
into the manifest's shard list and totals and sets ``staged``; only then may the job finalise.
A write that finds the disk full (``DiskFull``) stops staging with a message naming the job, the
file and the command that continues it; the ledger holds only whole lines and durable shards.
"""

from __future__ import annotations

import time
from dataclasses import replace
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from worker.staging import faults
from worker.staging.corpus import Record, Reject
from worker.staging.splits import Planner, Split, plan_splits
from worker.staging.shards import StageConfig, stage_split
from worker.staging.pool import stage_splits, staging_tokenizer
from producer.broker import send_shards
from storage import ledger
from producer.errors import BrokerFull, CorpusError
from storage.atomic import remove_stale_tmp
from storage.errors import DiskFull
from storage.jobdir import JobDir
from worker.staging.fleet import complete_staging, job_stage_config

Tick = Callable[[], None]


def run_staging(job: JobDir, app: Any, *, procs: int, tick: Tick | None = None,
                records: Iterable[Record | Reject] | None = None,
                fast_tokenizer: bool = True, home: Path | None = None) -> int:
    """Stage every unfinished split of ``job`` (or ``records``, the Python API's iterable);
    return the shard tasks sent. ``home``: where a bucket bundle's local copy is
    (``EMBED_HOME`` by default).

    Raises:
        DiskFull: a write found no space left; names the job, the file and how to continue.
    """
    m = job.manifest
    cfg = replace(job_stage_config(job, home), fast_tokenizer=fast_tokenizer)
    last = [0.0]
    sent = [0]

    def on_shard(cp: ledger.Checkpoint) -> None:
        if cp.shard is not None:
            send_shards(app, job, [cp.shard], m.queue)
            sent[0] += 1
            faults.hit("after_send")
        if tick is not None and time.monotonic() - last[0] > 0.5:
            last[0] = time.monotonic()
            tick()

    try:
        _stage(job, cfg, procs, on_shard, records)
        complete_staging(job)
    except BrokerFull:  # the staged shards stay recorded; `resume` sends them
        remove_stale_tmp(job.root)
        raise
    except DiskFull as exc:  # the staging processes are gone: their temporary files go too
        remove_stale_tmp(job.root)
        raise DiskFull(exc.errno, f"no space left on device while staging {job.root} (free "
                       f"space on its filesystem, then `{m.continue_command(job.root)}`)",
                       exc.filename) from exc
    return sent[0]


def _stage(job: JobDir, cfg: StageConfig, procs: int, on_shard: Callable[..., None],
           records: Iterable[Record | Reject] | None) -> None:
    m = job.manifest
    if records is not None:
        tok = staging_tokenizer(cfg)
        stage_split(((i, r) for i, r in enumerate(records)), tok, cfg, split=0, end=0,
                    root=job.root, on_shard=on_shard)
    elif m.splits is None:  # a fresh job: stage while the plan is being made, then record it
        planner = Planner(m.input["path"], int((m.staging or {})["split_bytes"]))
        planned: list[Split] = []
        stage_splits(m.input["path"], _recorded(planner, planned), cfg, root=job.root,
                     procs=procs, on_shard=on_shard)
        m = job.reload()
        m.splits, m.input["sha256"] = [s.to_dict() for s in planned], planner.digest
        job.write_manifest(m)
    else:
        splits = [Split.from_dict(d) for d in m.splits]
        stage_splits(m.input["path"], splits, cfg, root=job.root, procs=procs,
                     on_shard=on_shard)


def send_stage_tasks(app: Any, job: JobDir, splits: list[int] | None = None) -> int:
    """``--stage-on fleet``: one stage task per split not yet done, to the stage queue."""
    from worker.contract import STAGE_QUEUE, STAGE_TASK_NAME, StageTask

    m = job.manifest
    todo = [d["index"] for d in m.splits or [] if splits is None or d["index"] in splits]
    ledgers = ledger.read_all(job.root)
    todo = [i for i in todo if not (ledgers.get(i) and ledgers[i][-1].done)]
    with app.producer_or_acquire() as producer:
        for i in todo:
            payload = StageTask(job_id=job.root.name, job_dir=str(job.root), split=i).to_dict()
            app.send_task(STAGE_TASK_NAME, args=[payload], queue=STAGE_QUEUE, producer=producer,
                          retry=True)
    return len(todo)


def continue_staging(job: JobDir, app: Any, *, procs: int, tick: Tick | None = None,
                     fast_tokenizer: bool = True, home: Path | None = None) -> int:
    """Finish staging a job whose producer stopped; return the shard tasks re-sent."""
    m = job.manifest
    if m.input.get("path") == "<iterable>":
        raise CorpusError(f"{job.root}: staged from a Python iterable, which cannot be read "
                           "again; submit it as a new job")
    path = str(m.input["path"])  # a path or an object URI
    split_bytes = int((m.staging or {}).get("split_bytes", 0))
    try:
        splits, digest = plan_splits(path, split_bytes)
    except OSError as exc:
        raise CorpusError(f"{job.root}: cannot read its corpus {path}: {exc}") from None
    if m.splits is None:  # the producer died before its plan was recorded: record it now
        _check_ledger(job, splits, path)
        m.splits, m.input["sha256"] = [s.to_dict() for s in splits], digest
        job.write_manifest(m)
    elif digest != m.input.get("sha256") or [s.to_dict() for s in splits] != m.splits:
        raise CorpusError(f"{path} changed since {job.root} was submitted (checksum "
                           "differs); submit it as a new job")
    pending = [s.shard for s in job.shard_states() if s.state == "pending"]
    if pending:
        send_shards(app, job, pending, m.queue)
    if (m.staging or {}).get("on") == "fleet":
        send_stage_tasks(app, job)  # redelivery usually does this; a lost message does not
        return len(pending)
    return len(pending) + run_staging(job, app, procs=procs, tick=tick,
                                      fast_tokenizer=fast_tokenizer, home=home)


def _recorded(splits: Iterable[Split], into: list[Split]) -> Iterator[Split]:
    for s in splits:
        into.append(s)
        yield s


def _check_ledger(job: JobDir, splits: list[Split], path: str) -> None:
    """Without a recorded checksum, at least every staged split must still be in the plan and
    its last checkpoint inside it (the file's size and line starts unchanged there)."""
    by_index = {s.index: s for s in splits}
    for i, cps in ledger.read_all(job.root).items():
        s = by_index.get(i)
        if s is None or not all(s.start <= cp.pos <= s.end for cp in cps):
            raise CorpusError(f"{path} changed since {job.root} was submitted (split {i} "
                              "no longer matches); submit it as a new job")



