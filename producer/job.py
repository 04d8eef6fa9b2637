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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from producer.corpus import Record, Reject, judge_object
from producer.errors import JobConflict, UsageError
from producer.broker import broker_backlog, connect, send_shards
from producer.models import embedfleet_home, resolve_model
from producer.outputs import parse_outputs
from producer.progress import JobStatus, staging_progress
from producer.splits import DEFAULT_SPLIT_BYTES, plan_splits
from producer.staging import DEFAULT_SHARD_MAX_CHUNKS, DEFAULT_SHARD_TOKENS, StageConfig
from producer.streaming import default_procs
from storage.bundle import load_bundle
from storage.jobdir import JobDir
from storage.manifest import Manifest
from storage.metrics import metrics_totals
from storage.readers import read_matrix, read_table
from worker.settings import DEFAULT_BROKER_URL, env_broker, mask_url


class Job:
    """A handle on a job directory (and the broker, to resubmit shards)."""

    def __init__(self, path: str | os.PathLike[str], broker: str | None = None) -> None:
        self.dir = JobDir.open(path)
        self.broker = broker or env_broker(os.environ) or _usable_hint(
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
            reject_examples=self._chunk_rejects(), staging=staging,
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
            return continue_staging(self.dir, connect(self.broker), tick=tick,
                                    procs=stage_procs or default_procs())
        pending = [s.shard for s in self.dir.shard_states()
                   if s.state == "pending" and s.shard not in skip]
        if pending:
            send_shards(connect(self.broker), self.dir, pending, self.dir.manifest.queue)
        self.dir.finalize()
        return len(pending)

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


def submit(
    corpus: str | os.PathLike[str] | Iterable[dict[str, Any]],
    out: str | os.PathLike[str],
    *,
    model: str | None = None,
    job_id: str | None = None,
    precision: str = "auto",
    queue: str = "cpu",
    broker: str | None = None,
    text_field: str = "text",
    id_field: str = "id",
    max_line_bytes: int = 64 * 2**20,
    max_tokens: int | None = None,
    overlap: int = 0,
    prefix: str = "passage",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    shard_max_chunks: int = DEFAULT_SHARD_MAX_CHUNKS,
    max_batch_tokens: int | None = None,
    max_attempts: int = 3,
    outputs: str | Sequence[str] = "dense",
    cpu_queue: str = "cpu",
    gpu_queue: str = "gpu",
    home: str | os.PathLike[str] | None = None,
    log: Any = None,
    made_by: str = "producer submit",
    stage_procs: int | None = None,
    split_bytes: int = DEFAULT_SPLIT_BYTES,
    progress: Any = False,
    stage_on: str = "producer",
) -> Job:
    """Stream, chunk and stage ``corpus`` into ``out/<job_id>``, sending each shard's task as
    soon as the shard is durable (workers start within seconds, whatever the corpus size).

    ``stage_procs``: staging processes (default: the cores of this machine).
    ``stage_on="fleet"``: only cut splits here; workers consuming the ``stage`` queue stage
    them (they must be able to read the corpus path).

    Raises:
        BrokerUnreachable: the broker cannot be reached (checked before anything is written).
        UsageError: a bad option value (``--prefix``, ``--overlap``, ``--max-tokens``...).
        JobConflict: ``out/<job_id>`` already holds a job.
    """
    from producer.chunking import chunk_budget, chunking_settings, prefix_text
    from producer.routing import choose_queue

    say = log or (lambda *_: None)
    broker = broker or env_broker(os.environ) or DEFAULT_BROKER_URL
    app = connect(broker)  # fail fast, before staging anything
    queue = choose_queue(app, queue, cpu_queue=cpu_queue, gpu_queue=gpu_queue, log=say)
    bundle = load_bundle(resolve_model(model, Path(home) if home else embedfleet_home()))
    cfg = bundle.config
    wanted = parse_outputs(outputs, cfg, str(bundle.path))  # before anything is staged
    pfx = prefix_text(prefix, cfg.passage_prefix, cfg.query_prefix)
    chunking = chunking_settings(max_length=cfg.max_length, max_tokens=max_tokens,
                                 overlap=overlap, prefix=pfx, text_field=text_field,
                                 id_field=id_field, shard_tokens=shard_tokens,
                                 shard_max_chunks=shard_max_chunks)
    window = chunking["max_tokens"]
    tokenizer = bundle.load_tokenizer(truncate=False)
    budget = chunk_budget(tokenizer, cfg.max_length, max_tokens, pfx)  # raises if nothing fits
    if not 0 <= overlap <= budget // 2:
        raise UsageError(f"--overlap {overlap}: must be between 0 and {budget // 2} "
                         f"(half of the {budget} content tokens per chunk)")
    job = JobDir.create(out, job_id or new_job_id())
    if job.manifest_path.exists():
        raise JobConflict(f"{job.root} already holds a job; pick another --job-id "
                              f"or run `producer resume {job.root}`")
    records = None
    splits: list[dict[str, Any]] | None = None
    if isinstance(corpus, (str, os.PathLike)):
        digest = ""  # on the producer, the plan and checksum are made while staging runs
        if stage_on == "fleet":
            plan, digest = plan_splits(corpus, split_bytes)
            splits = [sp.to_dict() for sp in plan]
        source = {"path": str(Path(corpus).resolve()), "sha256": digest,
                  "bytes": os.path.getsize(corpus)}
    elif stage_on == "fleet":
        raise UsageError("--stage-on fleet needs a corpus file the workers can read")
    else:
        source = {"path": "<iterable>", "sha256": "", "bytes": 0}
        records = _records_from_dicts(corpus, text_field, id_field)
    procs = stage_procs or default_procs()
    stage = StageConfig(bundle_path=str(bundle.path), max_tokens=window, overlap=overlap,
                      prefix=pfx, text_field=text_field, id_field=id_field,
                      max_line_bytes=max_line_bytes, shard_tokens=shard_tokens,
                      shard_max_chunks=shard_max_chunks)
    now = time.time()
    manifest = Manifest(
        job_id=job.root.name, created_at=now, created_by=socket.gethostname(), input=source,
        model={"source": cfg.source, "bundle_path": str(bundle.path), "dim": cfg.dim,
               "max_length": cfg.max_length, "pooling": cfg.pooling.value,
               "normalize": cfg.normalize,
               "fingerprints": {p: bundle.fingerprint(p) for p in bundle.variants}},
        precision=precision, queue=queue, broker_hint=mask_url(broker),
        chunking=chunking, outputs=list(wanted),
        colbert_dim=cfg.colbert_dim if "colbert" in wanted else 0, made_by=made_by,
        max_batch_tokens=max_batch_tokens, max_attempts=max_attempts,
        staged=False, status="staging", submitted_at=now, splits=splits,
        staging={"procs": procs, "on": stage_on, "split_bytes": split_bytes,
                 "config": asdict(stage)},
    )
    job.write_manifest(manifest)  # a valid job from here on: `producer resume` finishes it
    say(f"staging {source['path']} into {job.root} ({procs} staging process(es)); "
        f"tasks go to queue {queue!r} as shards land")
    handle = Job(job.root, broker=broker)
    from producer.ingest import run_staging, send_stage_tasks
    from producer.progress import Progress

    if stage_on == "fleet":
        say(f"sent {send_stage_tasks(app, job)} stage task(s) to the fleet")
        return handle
    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    run_staging(job, app, procs=procs, records=records,
                tick=(lambda: bar.update(handle.status())) if progress else None)
    bar.close()
    t = job.reload().totals
    say(f"{t['accepted']} accepted, {t['rejected']} rejected, {t['chunks']} chunks, "
        f"{t['tokens']} tokens in {len(job.manifest.shards)} shards → queue {queue!r}")
    if t["duplicate_ids"]:
        say(f"warning: {t['duplicate_ids']} duplicate ids (e.g. {t['duplicate_examples']}); "
            "each record is embedded separately")
    return handle


def _records_from_dicts(items: Iterable[dict[str, Any]], text_field: str,
                        id_field: str) -> Iterable[Record | Reject]:
    for line, item in enumerate(items, 1):
        yield judge_object(line, item, text_field, id_field)
