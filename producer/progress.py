"""What a user sees of a job: one progress display for staging (input MB read of total, MB/s,
ETA, shards staged) and embedding (shards done, tokens, tok/s, cache hits) side by side while
both run, the summary at the end, and the ``producer status`` lines.

Given ``no_worker`` (a callable asking the broker whether any worker consumes the job's queue),
the line says "waiting for a worker" instead of showing 0 tok/s while no shard finishes; it
asks at most every ``CHECK_S`` seconds, and only while nothing has finished since the last ask.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import ledger
from storage.jobdir import JobDir
from storage.jobfs import job_path
from storage.manifest import Manifest

CHECK_S = 5.0


@dataclass
class JobStatus:
    job_dir: str
    status: str  # staging, running, succeeded, failed, cancelled
    shards: int
    done: int
    failed: int
    chunks: int
    chunks_done: int
    tokens: int
    tokens_done: int
    rejects: int
    cache_hits: int
    elapsed_s: float
    failed_shards: list[dict[str, Any]] = field(default_factory=list)
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    reject_examples: list[dict[str, Any]] = field(default_factory=list)
    """Chunks the workers quarantined or could not embed (line, doc_id, chunk_index, reason)."""
    delta: dict[str, Any] | None = None
    """``--since``: the manifest's ``delta`` record (base job; counts once staged)."""
    staging: dict[str, Any] = field(default_factory=dict)
    """Staging progress from the ledger: bytes (input read), bytes_total, records, chunks,
    tokens, shards (staged), splits_done, splits, done (staging finished), mb_per_s."""

    @property
    def finished(self) -> bool:
        """Nothing more will happen without a user (a cancelled job waits for a resume)."""
        return self.status in ("succeeded", "failed", "cancelled")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far, while running (None before the first shard)."""
        from producer.estimate import eta_s

        return eta_s(self.tokens, self.tokens_done, self.tokens_per_s) if (
            self.status == "running") else None


def staging_progress(job: JobDir, m: Manifest) -> dict[str, Any]:
    """Staging figures from the ledger (cheap: one small file per split)."""
    t = ledger.totals(ledger.read_all(job.root))
    total = int(m.input.get("bytes", 0))
    t.update(bytes_total=total, splits=len(m.splits or [0]), done=m.staged)
    if m.staged:
        t["bytes"] = total
    end = (m.staging or {}).get("finished_at") or time.time()
    wall = max(end - float(m.created_at or end), 1e-9)
    t["mb_per_s"] = round(t["bytes"] / wall / 1e6, 2)
    return t


def describe(st: Any, rate: str | None = None) -> str:
    """The one-line summary of a JobStatus (also the non-tty log line); ``rate`` replaces the
    tok/s figure (e.g. "waiting for a worker")."""
    parts = []
    sg = st.staging or {}
    if sg and not sg.get("done"):
        total, read = sg.get("bytes_total", 0), sg.get("bytes", 0)
        mb_s = sg.get("mb_per_s", 0.0)
        eta = (total - read) / (mb_s * 1e6) if mb_s and total > read else 0.0
        of = f"/{total / 1e6:,.1f}" if total else ""
        parts.append(f"staging {read / 1e6:,.1f}{of} MB {mb_s:.1f} MB/s "
                     f"eta {_clock(eta)}  staged {sg.get('shards', 0)} shards "
                     f"{sg.get('records', 0):,} records")
    hit = st.cache_hits / st.chunks_done if st.chunks_done else 0.0
    speed = rate or f"{st.tokens_per_s:,.0f} tok/s"
    parts.append(f"shards {st.done}/{st.shards}  chunks {st.chunks_done}/{st.chunks}  "
                 f"{speed}  cache {hit:.0%}")
    return "  |  ".join(parts)


class Progress:
    def __init__(self, enabled: bool, no_worker: Callable[[], bool] | None = None) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.no_worker = no_worker
        self.waiting = False
        self._checked: tuple[float, int] = (-CHECK_S, -1)
        self._last: Any = None
        self._last_t = 0.0

    def update(self, st: Any) -> None:
        staging = bool(st.staging) and not st.staging.get("done")
        if not self.enabled or not (st.chunks or staging):
            return
        self._check_workers(st.done + st.failed)
        wait = "waiting for a worker" if self.waiting else None
        if not sys.stderr.isatty():
            # Logs and CI: a line per finished shard (at most one per 2 s while staging).
            key = (st.done, st.failed, st.shards, self.waiting)
            now = time.monotonic()
            if key != self._last and (not staging or now - self._last_t >= 2):
                self._last, self._last_t = key, now
                sys.stderr.write(describe(st, wait) + "\n")
            return
        if self.bar is None:
            import click

            self.bar = click.progressbar(length=max(st.chunks, 1), label="embedding",
                                         file=sys.stderr, show_eta=not staging,
                                         show_percent=True, width=30)
            self.bar.__enter__()
        self.bar.length = max(st.chunks, 1)  # grows while staging streams shards in
        self.bar.show_eta = not staging
        self.bar.pos = 0
        self.bar.label = describe(st, wait)
        self.bar.update(st.chunks_done)

    def _check_workers(self, finished: int) -> None:
        last_t, last_finished = self._checked
        if finished != last_finished:
            self.waiting = False
        if self.no_worker is None or time.monotonic() - last_t < CHECK_S:
            return
        if finished == last_finished or last_finished < 0:
            self.waiting = self.no_worker()
        self._checked = (time.monotonic(), finished)

    def note(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\n{msg}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def fleet_progress(app: Any, queue: str, broker_label: str,
                   warn: Callable[[str], Any]) -> Progress:
    """Before sending to a fleet: ``warn`` when no worker consumes ``queue``, and a Progress
    that says "waiting for a worker" while none does."""
    from producer.routing import no_worker_warning

    warning = no_worker_warning(app, queue, broker_label)
    if warning:
        warn(warning)
    return Progress(True, no_worker=lambda: no_worker_warning(app, queue, "") is not None)


def summary_lines(job: Any, st: Any) -> list[str]:
    """What `producer run` and `submit --wait` print when the job finishes."""
    m = job.dir.reload()
    res = m.result or {}
    tot = m.totals
    wall = res.get("wall_s", st.elapsed_s)
    hits = res.get("cache_hits", st.cache_hits)
    chunks = res.get("embedded_chunks", st.chunks_done)
    out = [
        f"\n{st.status}: {tot.get('accepted', 0)} documents ({tot.get('rejected', 0)} rejected), "
        f"{chunks} chunks embedded, {st.tokens:,} tokens in {wall:.1f}s "
        f"({st.tokens / wall if wall else 0:,.0f} tokens/s), cache hits {hits}/{st.chunks}"]
    if delta_line(m.delta):
        out.append(f"delta:      {delta_line(m.delta)}")
    if res.get("rejects"):
        out.append(f"rejects:    {res['rejects']} in {job.dir.rejects_path}")
    out.extend(_failed_lines(st))
    out.append(f"output:     {job.dir.embeddings_dir}/*.parquet")
    out.append(f"read it:    python -c \"import pandas as pd; "
               f"print(pd.read_parquet('{job.dir.embeddings_dir}'))\"")
    out.append(f"report:     producer report {job.dir.root}")
    return out


def status_lines(st: Any) -> list[str]:
    """What `producer status` prints."""
    out = [f"job        {Path(st.job_dir).name}  [{st.status}]",
           f"shards     {st.done}/{st.shards} done, {st.failed} failed",
           f"chunks     {st.chunks_done}/{st.chunks}   tokens {st.tokens_done:,}/{st.tokens:,}",
           f"rejects    {st.rejects}   cache hits {st.cache_hits}",
           f"throughput {st.tokens_per_s:,.0f} tokens/s over {st.elapsed_s:.1f}s"]
    if getattr(st, "eta_s", None) is not None:
        out.append(f"eta        {_clock(st.eta_s)} at that rate")
    if st.duplicate_ids:
        out.append(f"duplicate ids {st.duplicate_ids} rejected (e.g. "
                   f"{', '.join(st.duplicate_examples)}; rejects.jsonl names both lines)")
    if delta_line(st.delta):
        out.append(f"delta      {delta_line(st.delta)}")
    for r in st.reject_examples:
        out.append(f"rejected   doc {r.get('doc_id')!r} chunk {r.get('chunk_index')} "
                   f"(line {r.get('line')}): {r.get('reason')}")
    return out + _failed_lines(st)


def delta_line(d: dict[str, Any] | None) -> str | None:
    """``since JOB: 5 added, 3 changed, 2 deleted, 90 unchanged (120 rows carried over)``.

    >>> delta_line({"since_job": "v1", "added": 1, "changed": 2, "deleted": 3,
    ...             "unchanged": 4, "carried_rows": 5})
    'since v1: 1 added, 2 changed, 3 deleted, 4 unchanged (5 rows carried over)'
    """
    if not d:
        return None
    if "added" not in d:
        return f"since {d.get('since_job')}: staging"
    return (f"since {d['since_job']}: {d['added']} added, {d['changed']} changed, "
            f"{d['deleted']} deleted, {d['unchanged']} unchanged "
            f"({d['carried_rows']} rows carried over)")


def _failed_lines(st: Any) -> list[str]:
    """Each failed shard with its reason, and what to do when its staged input is damaged."""
    from storage.integrity import damaged_inputs

    shards = [f["shard"] for f in st.failed_shards]
    return ([f"failed shard {f['shard']}: {f['reason']}" for f in st.failed_shards]
            + [f"what to do: {line}" for line in damaged_inputs(job_path(st.job_dir), shards)])


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
