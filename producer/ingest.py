"""Stages 1-4 for one job: stage its splits, send each shard's task as soon as it is durable.

``run_staging`` is what ``submit`` does after writing the manifest; ``continue_staging`` is what
``resume`` does for a job whose producer died while staging: it checks the corpus is the one the
manifest names (same checksum, same split plan), re-sends the tasks of staged shards without
output, then stages from each split's last checkpoint. ``complete_staging`` turns the ledger
into the manifest's shard list and totals and sets ``staged``; only then may the job finalise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from producer import faults
from producer.corpus import Record, Reject
from producer.splits import Planner, Split, plan_splits
from producer.staging import StageConfig, stage_split
from producer.streaming import stage_splits
from producer.broker import send_shards
from storage import ledger
from producer.errors import CorpusError
from storage.jobdir import JobDir
from storage.manifest import ShardEntry

DUPLICATE_EXAMPLES = 5
Tick = Callable[[], None]


def stage_config(job: JobDir) -> StageConfig:
    return StageConfig(**job.manifest.staging["config"])  # type: ignore[index]


def run_staging(job: JobDir, app: Any, *, procs: int, tick: Tick | None = None,
                records: Iterable[Record | Reject] | None = None) -> int:
    """Stage every unfinished split of ``job`` (or ``records``, the Python API's iterable);
    return the shard tasks sent."""
    m = job.manifest
    cfg = stage_config(job)
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

    if records is not None:
        tok = _tokenizer(cfg)
        stage_split(((i, r) for i, r in enumerate(records)), tok, cfg, split=0, end=0,
                    root=job.root, on_shard=on_shard)
    elif m.splits is None:  # a fresh job: stage while the plan is being made, then record it
        planner = Planner(m.input["path"], int((m.staging or {})["split_bytes"]))
        planned: list[Split] = []
        stage_splits(Path(m.input["path"]), _recorded(planner, planned), cfg, root=job.root,
                     procs=procs, on_shard=on_shard)
        m = job.reload()
        m.splits, m.input["sha256"] = [s.to_dict() for s in planned], planner.digest
        job.write_manifest(m)
    else:
        splits = [Split.from_dict(d) for d in m.splits]
        stage_splits(Path(m.input["path"]), splits, cfg, root=job.root, procs=procs,
                     on_shard=on_shard)
    complete_staging(job)
    return sent[0]


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
        send_shards(app, job, old, m.queue)
    sent = len(old)

    def on_shard(cp: ledger.Checkpoint) -> None:
        nonlocal sent
        if cp.shard is not None:
            send_shards(app, job, [cp.shard], m.queue)
            sent += 1

    stage_splits(Path(m.input["path"]), [s], stage_config(job), root=job.root, procs=1,
                 on_shard=on_shard)
    ledgers = ledger.read_all(job.root)
    if all(ledgers.get(d["index"]) and ledgers[d["index"]][-1].done for d in m.splits or []):
        complete_staging(job)
    return sent


def continue_staging(job: JobDir, app: Any, *, procs: int, tick: Tick | None = None) -> int:
    """Finish staging a job whose producer stopped; return the shard tasks re-sent."""
    m = job.manifest
    if m.input.get("path") == "<iterable>":
        raise CorpusError(f"{job.root}: staged from a Python iterable, which cannot be read "
                           "again; submit it as a new job")
    path = Path(m.input["path"])
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
    return len(pending) + run_staging(job, app, procs=procs, tick=tick)


def _recorded(splits: Iterable[Split], into: list[Split]) -> Iterator[Split]:
    for s in splits:
        into.append(s)
        yield s


def _check_ledger(job: JobDir, splits: list[Split], path: Path) -> None:
    """Without a recorded checksum, at least every staged split must still be in the plan and
    its last checkpoint inside it (the file's size and line starts unchanged there)."""
    by_index = {s.index: s for s in splits}
    for i, cps in ledger.read_all(job.root).items():
        s = by_index.get(i)
        if s is None or not all(s.start <= cp.pos <= s.end for cp in cps):
            raise CorpusError(f"{path} changed since {job.root} was submitted (split {i} "
                              "no longer matches); submit it as a new job")


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
    m.staged, m.status = True, "running"
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


def _tokenizer(cfg: StageConfig) -> Any:
    from storage.bundle import load_bundle

    return load_bundle(cfg.bundle_path).load_tokenizer(truncate=False)
