"""The Python API behind the CLI: submit a corpus, get a ``Job`` with status/wait/resume.

    from producer import submit
    job = submit("corpus.jsonl", out="out")  # broker: EMBED_BROKER_URL or the local Redis
    job.wait(progress=True)
    ids, matrix = job.read_matrix()
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import replace
from collections.abc import Collection, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from worker.staging.corpus import Record, Reject, judge_object
from producer.errors import JobConflict, UsageError
from producer.ingest import run_staging, send_stage_tasks
from producer.broker import connect, send_shards
from producer.progress import JobStatus, staging_progress
from producer.routing import choose_queue
from producer.settings import ProducerSettings
from producer.spec import JobOptions, JobSpec, job_spec
from storage.objread import input_location, location_size
from worker.staging.splits import auto_split_bytes, plan_splits
from worker.staging.pool import default_procs
from storage.jobdir import JobDir
from storage.manifest import Manifest
from storage.metrics import metrics_totals
from storage.readers import read_matrix, read_table
from storage.urls import DEFAULT_BROKER_URL, mask_url


class Job:
    """A handle on a job directory (and the broker, to resubmit shards)."""

    def __init__(self, path: str | os.PathLike[str], broker: str | None = None, *,
                 settings: ProducerSettings | None = None) -> None:
        self.dir = JobDir.open(path)
        self.settings = settings or ProducerSettings.from_env(os.environ)  # the API's edge
        self.broker = broker or self.settings.broker or _usable_hint(
            self.dir.manifest.broker_hint)
        self._done: dict[int, tuple[int, int]] = {}  # shard -> (tokens, cache hits)

    @property
    def path(self) -> Path:
        return self.dir.root

    def status(self) -> JobStatus:
        """Progress from the job directory; finalises a job whose shards are all done."""
        m = self.dir.reload()
        if m.staged and not self.dir.success_path.exists() and not m.finished:
            if self.dir.finalize():
                m = self.dir.reload()
        staging = staging_progress(self.dir, m)
        states = self.dir.shard_states(set(self._done))
        for s in states:
            if s.state == "done" and s.shard not in self._done:
                hits = metrics_totals([self.dir.metrics_path(s.shard)]).cache_hits
                self._done[s.shard] = (s.tokens, hits)
        done = [s for s in states if s.state == "done"]
        failed = [s for s in states if s.state == "failed"]
        totals = m.totals if m.staged else staging
        rejects = totals.get("rejected", 0)
        if m.result:
            rejects = m.result.get("rejects", rejects)
        status = m.status or ("running" if m.staged else "staging")
        end = (m.result or {}).get("finished_at") or time.time()
        start = float(m.submitted_at or m.created_at or end)
        return JobStatus(
            job_dir=str(self.path), status=status, shards=len(states), done=len(done),
            failed=len(failed), chunks=totals.get("chunks", 0),
            chunks_done=sum(s.chunks for s in done), tokens=totals.get("tokens", 0),
            tokens_done=sum(self._done[s.shard][0] for s in done),
            rejects=rejects, cache_hits=sum(self._done[s.shard][1] for s in done),
            elapsed_s=max(0.0, end - start),
            failed_shards=[{"shard": s.shard, "reason": s.reason} for s in failed],
            duplicate_ids=totals.get("duplicate_ids", 0),
            duplicate_examples=totals.get("duplicate_examples", []),
            reject_examples=self._chunk_rejects(), staging=staging, delta=m.delta,
        )

    def _chunk_rejects(self, limit: int = 5) -> list[dict[str, Any]]:
        """The first chunk-level rejects written by workers (small per-shard files)."""
        out: list[dict[str, Any]] = []
        d = self.dir.state_dir / "rejects"
        for p in sorted(d.glob("part-*.jsonl")) if d.is_dir() else []:
            try:
                lines = p.read_text(encoding="utf-8").splitlines()
            except OSError:
                continue
            for line in lines:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
                if len(out) >= limit:
                    return out
        return out

    def resume(self, *, stage_procs: int | None = None, progress: Any = None,
               skip: Collection[int] = ()) -> int:
        """Finish staging if it stopped, re-send every shard without valid output that is not
        failed (nor in ``skip``: held by a live worker); return the tasks sent. Safe to
        repeat."""
        if not self.dir.reload().staged:
            from producer.ingest import continue_staging

            tick = (lambda: progress.update(self.status())) if progress is not None else None
            return continue_staging(self.dir, self._connect(), tick=tick,
                                    fast_tokenizer=self.settings.fast_tokenizer,
                                    home=self.settings.home,
                                    procs=stage_procs or default_procs())
        pending = [s.shard for s in self.dir.shard_states()
                   if s.state == "pending" and s.shard not in skip]
        if pending:
            send_shards(self._connect(), self.dir, pending, self.dir.manifest.queue)
        self.dir.finalize()
        return len(pending)

    def _connect(self) -> Any:
        return connect(self.broker, events=self.settings.events,
                       fair_share=self.settings.fair_share)

    def wait(self, *, progress: Any = False, poll_s: float = 1.0,
             stall_s: float | None = 120.0, timeout_s: float | None = None) -> JobStatus:
        """Block until the job finishes; re-sends shards whose messages were lost and that no
        live worker holds (``producer.reconcile.wait_reconciling``). ``progress`` is a bool or a
        ``producer.progress.Progress`` to draw with."""
        from producer.reconcile import wait_reconciling

        return wait_reconciling(self, progress=progress, poll_s=poll_s, stall_s=stall_s,
                                timeout_s=timeout_s)

    def read_table(self) -> Any:
        return read_table(self.path)

    def read_matrix(self) -> Any:
        return read_matrix(self.path)


def _usable_hint(hint: str | None) -> str | None:
    """The broker recorded at submit time, unless its password was masked out."""
    return None if not hint or "***" in hint else hint


def new_job_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def submit(corpus: str | os.PathLike[str] | Iterable[dict[str, Any]],
           out: str | os.PathLike[str], *, job_id: str | None = None,
           broker: str | None = None, cpu_queue: str = "cpu", gpu_queue: str = "gpu",
           home: str | os.PathLike[str] | None = None, log: Any = None,
           made_by: str = "producer submit", progress: Any = False,
           stage_on: str = "producer", settings: ProducerSettings | None = None,
           **options: Any) -> Job:
    """Stream, chunk and stage ``corpus`` into ``out/<job_id>``, sending each shard's task as
    soon as the shard is durable (workers start within seconds, whatever the corpus size).

    ``options``: ``producer.spec.JobOptions`` (the CLI's flags). ``stage_on="fleet"``: only
    cut splits here; workers on the ``stage`` queue stage them (they must read the corpus).

    Raises:
        BrokerUnreachable: the broker cannot be reached (checked before anything is written).
        UsageError: a bad option value (``--prefix``, ``--overlap``, ``--max-tokens``...).
        JobConflict: ``out/<job_id>`` already holds a job.
    """
    say = log or (lambda *_: None)
    s = settings or ProducerSettings.from_env(os.environ)  # the API's edge; the CLI passes it
    s = replace(s, home=Path(home)) if home else s  # staging finds a bucket bundle's copy there
    broker = broker or s.broker or DEFAULT_BROKER_URL
    app = connect(broker, events=s.events, fair_share=s.fair_share)  # fail fast, before staging
    spec = job_spec(JobOptions(**options), s.home)
    queue = choose_queue(app, spec.options.queue, cpu_queue=cpu_queue, gpu_queue=gpu_queue,
                         log=say)
    job = _new_job_dir(out, job_id)
    source, splits, records = _source(corpus, spec, stage_on)
    job.write_manifest(_manifest(job, spec, source, splits, queue=queue, broker=broker,
                                 made_by=made_by, stage_on=stage_on))  # resumable from here
    say(f"staging {source['path']} into {job.root} ({_procs(spec)} staging process(es)); "
        f"tasks go to queue {queue!r} as shards land")
    handle = Job(job.root, broker=broker, settings=s)
    if stage_on == "fleet":
        say(f"sent {send_stage_tasks(app, job)} stage task(s) to the fleet")
    else:
        _stage_here(handle, app, _procs(spec), records, progress)
        _say_totals(job, queue, say)
    return handle


def _procs(spec: JobSpec) -> int:
    return spec.options.stage_procs or default_procs()


def _new_job_dir(out: str | os.PathLike[str], job_id: str | None) -> JobDir:
    job = JobDir.create(out, job_id or new_job_id())
    if job.manifest_path.exists():
        raise JobConflict(f"{job.root} already holds a job; pick another --job-id "
                          f"or run `producer resume {job.root}`")
    return job


def _source(corpus: str | os.PathLike[str] | Iterable[dict[str, Any]], spec: JobSpec,
            stage_on: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None,
                                    Iterable[Record | Reject] | None]:
    """The manifest's ``input`` record, the split plan (fleet staging) and the records of a
    Python iterable."""
    if not isinstance(corpus, (str, os.PathLike)):
        if stage_on == "fleet":
            raise UsageError("--stage-on fleet needs a corpus file the workers can read")
        return ({"path": "<iterable>", "sha256": "", "bytes": 0}, None,
                _records_from_dicts(corpus, spec.stage.text_field, spec.stage.id_field))
    digest, splits = "", None  # on the producer, the plan and checksum are made while staging
    size = location_size(corpus)
    if stage_on == "fleet":
        plan, digest = plan_splits(corpus, spec.options.split_bytes or auto_split_bytes(size))
        splits = [sp.to_dict() for sp in plan]
    return ({"path": input_location(corpus), "sha256": digest,  # a URI without credentials
             "bytes": size}, splits, None)


def _manifest(job: JobDir, spec: JobSpec, source: dict[str, Any],
              splits: list[dict[str, Any]] | None, *, queue: str, broker: str, made_by: str,
              stage_on: str) -> Manifest:
    bundle, cfg, o = spec.bundle, spec.bundle.config, spec.options
    now = time.time()
    return Manifest(
        job_id=job.root.name, created_at=now, created_by=socket.gethostname(), input=source,
        model={"source": cfg.source, "bundle_path": bundle.source_location, "dim": cfg.dim,
               "max_length": cfg.max_length, "pooling": cfg.pooling.value,
               "normalize": cfg.normalize,
               "fingerprints": {p: bundle.fingerprint(p) for p in bundle.variants}},
        precision=o.precision, queue=queue, broker_hint=mask_url(broker),
        chunking=spec.chunking(), outputs=list(spec.outputs),
        colbert_dim=cfg.colbert_dim if "colbert" in spec.outputs else 0, made_by=made_by,
        dense=spec.dense,
        max_batch_tokens=o.max_batch_tokens, max_attempts=o.max_attempts,
        id_policy=o.on_duplicate_id, delta=spec.delta, priority=o.priority,
        staged=False, status="staging", submitted_at=now, splits=splits,
        staging={"procs": _procs(spec), "on": stage_on,
                 "split_bytes": o.split_bytes or auto_split_bytes(int(source.get("bytes") or 0))},
    )


def _stage_here(handle: Job, app: Any, procs: int, records: Iterable[Record | Reject] | None,
                progress: Any) -> None:
    """Stage on this machine, sending each shard's task as it lands."""
    from producer.progress import Progress

    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    run_staging(handle.dir, app, procs=procs, records=records,
                fast_tokenizer=handle.settings.fast_tokenizer, home=handle.settings.home,
                tick=(lambda: bar.update(handle.status())) if progress else None)
    bar.close()


def _say_totals(job: JobDir, queue: str, say: Any) -> None:
    t = job.reload().totals
    say(f"{t['accepted']} accepted, {t['rejected']} rejected, {t['chunks']} chunks, "
        f"{t['tokens']} tokens in {len(job.manifest.shards)} shards → queue {queue!r}")
    if t["duplicate_ids"]:
        say(f"{t['duplicate_ids']} record(s) rejected for a repeated id (e.g. "
            f"{t['duplicate_examples']}; --on-duplicate-id {job.manifest.id_policy or 'reject'}"
            "; rejects.jsonl names both lines)")
    if job.manifest.delta:
        from producer.progress import delta_line

        say(delta_line(job.manifest.delta))


def _records_from_dicts(items: Iterable[dict[str, Any]], text_field: str,
                        id_field: str) -> Iterable[Record | Reject]:
    for line, item in enumerate(items, 1):
        yield judge_object(line, item, text_field, id_field)
