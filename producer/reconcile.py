"""Wait for a job and re-send the shards whose messages were lost, and only those.

``wait_reconciling`` (``submit --wait``, ``run``, ``resume --wait``) counts a shard as moving
while its attempt beats its heartbeat file (``_state/alive/``, written by
``worker/attempts.py``): a shard held by a live worker is never re-sent, however long its
batch; a shard whose worker died stops beating and is re-sent as before.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from producer.errors import UsageError
from storage.jobdir import JobDir
from storage.jobfs import StoreError

RECONCILE_ENV = "EMBED_RECONCILE_S"
"""Seconds with no shard finished and no heartbeat before the producer re-sends (default 120)."""
HELD_BEATS = 6
"""A shard is held while its heartbeat changed within this many of its intervals."""


class Heartbeats:
    """The shards live workers hold, from their heartbeat files (``worker/attempts.py``).

    A beat is a file whose content differs from this process's previous look, timed on this
    process's monotonic clock: no clock or mtime of another machine is ever compared, so the
    job directory may be on a shared filesystem.
    """

    def __init__(self, job: JobDir, clock: Callable[[], float] = time.monotonic) -> None:
        self.job, self.clock = job, clock
        self._seen: dict[tuple[int, int], tuple[bytes, float, float]] = {}

    def look(self) -> bool:
        """Read the heartbeat files; True when any of them beat since the last look."""
        now, beat = self.clock(), False
        from worker.attempts import read_heartbeats

        current = read_heartbeats(self.job)
        for key, (raw, interval) in current.items():
            old = self._seen.get(key)
            if old is None or old[0] != raw:
                self._seen[key] = (raw, now, interval)
                beat = True
        for key in set(self._seen) - set(current):
            del self._seen[key]
        return beat

    def held(self) -> set[int]:
        """Shards whose heartbeat changed within ``HELD_BEATS`` of its intervals."""
        now = self.clock()
        return {shard for (shard, _), (_, t, every) in self._seen.items()
                if now - t <= HELD_BEATS * every}


def held_now(job: JobDir, sleep: Callable[[float], Any] = time.sleep) -> set[int]:
    """Shards a live worker holds, for a one-shot ``producer resume``: two looks a little more
    than the longest heartbeat interval apart (no wait when no attempt is running)."""
    from worker.attempts import read_heartbeats

    first = read_heartbeats(job)
    if not first:
        return set()
    sleep(1.5 * max(every for _, every in first.values()))
    return {shard for (shard, a), (raw, _) in read_heartbeats(job).items()
            if first.get((shard, a), (b"", 0.0))[0] != raw}


def reconcile_seconds(env: Mapping[str, str] = os.environ) -> float:
    """``EMBED_RECONCILE_S`` (seconds), else 120."""
    raw = env.get(RECONCILE_ENV, "").strip()
    try:
        value = float(raw) if raw else 120.0
    except ValueError:
        raise UsageError(f"{RECONCILE_ENV}={raw!r}: expected seconds, e.g. 120") from None
    if value <= 0:
        raise UsageError(f"{RECONCILE_ENV}={raw!r}: must be more than 0 seconds")
    return value


def wait_reconciling(job: Any, *, progress: Any = False, poll_s: float = 1.0,
                     stall_s: float | None = 120.0, timeout_s: float | None = None) -> Any:
    """Block until ``job`` (a ``producer.job.Job``) finishes; its final ``JobStatus``.

    Messages count as lost when the broker (Redis) holds no queued or unacked message for three
    looks while shards are pending, or when nothing moved for ``stall_s`` seconds (no shard
    finished, no heartbeat beat). Then the pending shards that no live worker holds are re-sent:
    a duplicate is harmless (shards are idempotent), a loss is not, and a slow shard is neither.
    """
    from producer.broker import broker_backlog, job_backlog
    from producer.progress import Progress

    bar = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    beats = Heartbeats(job.dir)
    t0 = last_change = time.monotonic()
    last_done, idle_checks, outage = -1, 0, False
    st = job.status()
    while not st.finished:
        try:
            bar.update(st)
            finished = st.done + st.failed
            if beats.look() or finished != last_done:
                last_change = time.monotonic()
            if finished != last_done:
                last_done, idle_checks = finished, 0
            elif st.status == "running":
                backlog = broker_backlog(job.broker, job.dir.manifest.queue)
                idle_checks = idle_checks + 1 if backlog == 0 else 0
                stalled = stall_s is not None and time.monotonic() - last_change > stall_s
                if stalled and job_backlog(job.broker, job.dir.manifest.queue, job.path.name):
                    stalled, last_change = False, time.monotonic()  # queued behind other jobs
                if idle_checks >= 3 or stalled:
                    n = job.resume(skip=beats.held())
                    if n:
                        bar.note(f"re-sent {n} shard(s) whose messages were lost (no live "
                                 "worker held them)")
                    last_change, idle_checks = time.monotonic(), 0
        except StoreError as exc:  # the job's object store does not answer: look again later
            if not exc.transient:
                raise
            if not outage:
                bar.note(f"{exc}: waiting for the object store")
            outage = True
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"{job.path}: not finished after {timeout_s:.0f}s")
        time.sleep(poll_s)
        try:
            st, outage = job.status(), False
        except StoreError as exc:
            if not exc.transient:
                raise
    bar.update(st)
    bar.close()
    return st
