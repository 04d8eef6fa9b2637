"""Attempts at a shard: counting, in-flight markers, crash detection, poison chunks, giving up.

Redis has no delivery counter and a SIGKILLed process runs no ``except`` block, so everything
here lives in the job directory, where the next attempt can read it:

    _state/attempts/NNNNN.<k>   one file per attempt (O_EXCL): the attempt number is a count
    _state/inflight/NNNNN.<k>   attempt k's batches and the index of the one running; removed
                                when the attempt ends in Python, left behind only when it died
    _state/alive/NNNNN.<k>      attempt k's heartbeat: "<interval_s> <count>", rewritten every
                                interval by a thread while the attempt runs (model load and one
                                long batch included); removed when the attempt ends in Python

A marker left by an earlier attempt means that attempt crashed (SIGKILL, OOM, hard time limit)
with those chunks in flight. They are *suspects*: the next attempt runs them alone and first. A
chunk that was in flight at two crashes, once alone, is *poison*: it becomes a reject with the
reason instead of killing every worker that takes the shard. Past the attempt cap, or when an
error repeats until the cap, the shard is marked failed through :func:`give_up`, the one place
that does it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from billiard.exceptions import SoftTimeLimitExceeded

from storage.atomic import NO_SPACE, write_bytes_atomic
from storage.jobdir import JobDir
from storage.jobfs import StoreError, is_store

log = logging.getLogger(__name__)

MAX_RETRY_COUNTDOWN_S = 30
STORE_RETRY_S = 5
"""Seconds between tries of a shard while its object store does not answer."""
"""Back-off between attempts after an error: 2, 4, 8 ... seconds, at most this."""


class RetryShard(Exception):
    """Not given up yet: run the shard again in ``countdown`` seconds (tasks.py asks Celery)."""

    def __init__(self, countdown: float, cause: BaseException | None = None) -> None:
        super().__init__(f"retry in {countdown}s")
        self.countdown = countdown
        self.cause = cause


@dataclass
class Attempt:
    """One attempt at a shard, and what the attempts that died before it left behind."""

    job: JobDir
    shard: int
    number: int
    max_attempts: int
    crashed: list[set[int]] = field(default_factory=list)

    @property
    def over_cap(self) -> bool:
        return self.number > self.max_attempts

    @property
    def suspects(self) -> set[int]:
        """Every chunk in flight when an earlier attempt died: run alone and first."""
        return set().union(*self.crashed) if self.crashed else set()

    @property
    def poison(self) -> set[int]:
        """Chunks in flight at two crashes, at least one of them alone."""
        alone = {next(iter(s)) for s in self.crashed if len(s) == 1}
        return {i for i in alone if sum(i in s for s in self.crashed) >= 2}

    def poison_reason(self) -> str:
        return (f"worker process died while embedding this chunk ({len(self.crashed)} "
                "crashed attempts); quarantined")

    def cap_reason(self) -> str:
        """Why the shard is given up at the cap, naming the chunks in flight at the crashes."""
        return f"gave up after {self.number - 1} attempts" + _describe(self.job, self.shard,
                                                                       self.crashed)

    @property
    def marker_path(self) -> Path:
        return inflight_dir(self.job) / f"{self.shard:05d}.{self.number}"

    @contextmanager
    def inflight(self, groups: list[list[int]]) -> Iterator[Callable[[int], None]]:
        """Yield ``mark(b)``: "batch ``b`` of ``groups`` is running"; removed on any Python exit.

        Success, a soft time limit and an I/O error all end the attempt cleanly: only a process
        that died (SIGKILL, OOM, hard time limit) leaves the file for the next attempt to read.

        The file is the batch index (fixed width) on the first line and the attempt's batches
        as JSON after it, written once (renamed into place, not fsynced: it only has to outlive
        the process); ``mark`` then rewrites the index in place with one 10-byte ``pwrite``,
        which a SIGKILL cannot tear. Rewriting the whole file with fsyncs before every batch
        was the largest per-task cost with a cheap model: 16 batches × ~20 ms per shard
        (benchmarks/load.py, busy 2-core machine).
        """
        fd = -1

        def mark(b: int) -> None:
            nonlocal fd
            if is_store(self.marker_path):  # no pwrite in a store: one small PUT per batch
                write_bytes_atomic(self.marker_path, _index(b) + json.dumps(groups).encode())
            elif fd < 0:
                write_bytes_atomic(self.marker_path, _index(b) + json.dumps(groups).encode(),
                                   durable=False)
                fd = os.open(self.marker_path, os.O_WRONLY | os.O_NOFOLLOW)
            else:
                os.pwrite(fd, _index(b), 0)

        try:
            yield mark
        finally:
            if fd >= 0:
                os.close(fd)
            self.marker_path.unlink(missing_ok=True)


    @contextmanager
    def heartbeat(self, interval_s: float) -> Iterator[None]:
        """Beat ``_state/alive/NNNNN.<k>`` every ``interval_s`` while the attempt runs.

        A thread rewrites the file's counter in place (one ``pwrite``), so the producer's
        reconciler (``producer/reconcile.py``) sees a shard held by a live process even while one
        8,192-token batch or the model load runs for minutes without touching the in-flight
        marker. The reader compares contents between its own looks, never a clock or an mtime
        of another machine, so the job directory may be on a shared filesystem.
        """
        path = alive_dir(self.job) / f"{self.shard:05d}.{self.number}"
        path.parent.mkdir(parents=True, exist_ok=True)
        store = is_store(path)
        fd = -1 if store else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                                      0o644)
        stop = threading.Event()

        def beat(n: int) -> None:
            if store:  # the whole (28-byte) object, one PUT
                write_bytes_atomic(path, b"%.3f %012d\n" % (interval_s, n))
            else:
                os.pwrite(fd, b"%.3f %012d\n" % (interval_s, n), 0)

        def loop() -> None:
            n = 1
            while not stop.wait(interval_s):
                try:
                    beat(n)
                except OSError as exc:  # a full or vanished disk: the attempt will say so
                    log.warning("heartbeat %s: %s", path, exc)
                n += 1

        beat(0)
        thread = threading.Thread(target=loop, name=f"heartbeat-{self.shard}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            if fd >= 0:
                os.close(fd)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a store that is down: the reader ignores a stale beat
                log.warning("heartbeat %s not removed: %s", path, exc)


def alive_dir(job: JobDir) -> Path:
    return job.state_dir / "alive"


def read_heartbeats(job: JobDir) -> dict[tuple[int, int], tuple[bytes, float]]:
    """(shard, attempt) -> (the heartbeat file's content, its interval in seconds)."""
    out = {}
    for p in alive_dir(job).glob("*.*"):
        shard, _, number = p.name.partition(".")
        try:
            raw = p.read_bytes()  # open+read: NFS revalidates on open (close-to-open)
            out[(int(shard), int(number))] = (raw, float(raw.split()[0]))
        except (OSError, ValueError, IndexError):
            continue  # vanished (the attempt ended) or half-written: no beat this look
    return out


def begin(job: JobDir, shard: int, max_attempts: int, info: dict[str, Any]) -> Attempt:
    """Record one more attempt at ``shard`` and read the markers of attempts that died."""
    number = job.next_attempt(shard, info)
    for old in alive_dir(job).glob(f"{shard:05d}.*"):  # left by attempts that died
        if old.suffix[1:].isdigit() and int(old.suffix[1:]) < number:
            old.unlink(missing_ok=True)
    return Attempt(job, shard, number, max_attempts, crashed_inflight(job, shard, number))


def inflight_dir(job: JobDir) -> Path:
    return job.state_dir / "inflight"


def crashed_inflight(job: JobDir, shard: int, attempt: int) -> list[set[int]]:
    """Positions in flight when earlier attempts of this shard died (one set per crash)."""
    out = []
    for p in inflight_dir(job).glob(f"{shard:05d}.*"):
        if p.suffix[1:].isdigit() and int(p.suffix[1:]) < attempt:
            try:
                head, _, body = p.read_bytes().partition(b"\n")
                out.append(set(json.loads(body)[int(head)]))
            except (ValueError, OSError, IndexError, TypeError):
                continue  # unreadable: that crash names no suspects
    return out


def _index(b: int) -> bytes:
    return b"%09d\n" % b


def after_error(job: JobDir, shard: int, exc: BaseException, max_attempts: int,
                soft_time_limit: float, attempt: int | None = None) -> str:
    """The give-up reason when ``exc`` ended the last allowed attempt; else raise RetryShard.

    A full disk is not the shard's fault, and nothing could be written to fail it: the attempt
    is un-counted, ``exc`` itself is raised (the task ends, no retry loop against a full disk)
    and the shard stays pending until ``producer resume`` once there is space.
    """
    if isinstance(exc, StoreError):
        _store_error(job, shard, exc, attempt)
    if isinstance(exc, OSError) and exc.errno in NO_SPACE:
        if attempt is not None:
            job.drop_attempt(shard, attempt)
        log.error("shard %s of %s: %s; left pending, not counted as an attempt (a full disk is "
                  "not the shard's fault): free space, then `producer resume %s`",
                  shard, job.root, exc, job.root)
        raise exc
    attempts = len(job.attempts(shard))
    soft = isinstance(exc, SoftTimeLimitExceeded)
    if attempts >= max_attempts:
        if soft:  # say why, rather than a bare "gave up" next time
            return (f"soft time limit ({soft_time_limit}s, EMBED_SOFT_TIME_LIMIT) exceeded on "
                    f"attempt {attempts} of {max_attempts}: the shard is too slow for the limit")
        return f"{type(exc).__name__}: {exc}"
    if soft:
        log.warning("shard %s of %s hit the soft time limit; requeueing", shard, job.root)
        raise RetryShard(1) from None
    log.warning("shard %s of %s: attempt %d of %d failed (%s: %s); retrying", shard, job.root,
                attempts, max_attempts, type(exc).__name__, exc)
    raise RetryShard(min(2 ** attempts, MAX_RETRY_COUNTDOWN_S), exc) from exc


def _store_error(job: JobDir, shard: int, exc: StoreError, attempt: int | None) -> None:
    """The object store did not answer, or refused: not the shard's fault, never counted.

    Unreachable: retried after STORE_RETRY_S, for as long as it lasts (an outage costs time,
    never the shard). Refused (access denied, no such bucket): ``exc`` is raised, once; the
    shard stays pending until ``producer resume`` after the store is fixed.
    """
    if attempt is not None:
        try:
            job.drop_attempt(shard, attempt)
        except OSError:  # the store is down: that record stays (at most one per outage)
            pass
    if exc.transient:
        log.warning("shard %s of %s: %s; retrying in %ss, not counted as an attempt", shard,
                    job.root, exc, STORE_RETRY_S)
        raise RetryShard(STORE_RETRY_S, exc) from None
    log.error("shard %s of %s: %s; left pending, not counted as an attempt: fix the store's "
              "permissions, then `producer resume %s`", shard, job.root, exc, job.root)
    raise exc


def give_up(job: JobDir, shard: int, reason: str, attempts: int) -> bool:
    """Mark the shard failed with ``reason``; returns whether the job is now finished."""
    job.mark_failed(shard, reason, attempts=attempts)
    log.error("shard %s of %s failed after %d attempts: %s", shard, job.root, attempts, reason)
    return job.finalize()


def attempt_info(pid: int, hostname: str, queue: str) -> dict[str, Any]:
    """What an attempt file records: who worked on the shard, and when."""
    return {"pid": pid, "host": hostname, "queue": queue, "time": time.time()}


def _describe(job: JobDir, shard: int, crashed: list[set[int]]) -> str:
    if not crashed:
        return ""
    t = pq.read_table(job.input_path(shard), columns=["doc_id", "chunk_index", "line"])
    pos = sorted(set().union(*crashed))[:5]
    who = ", ".join(f"doc {t['doc_id'][i].as_py()!r} chunk {t['chunk_index'][i].as_py()} "
                    f"(line {t['line'][i].as_py()})" for i in pos)
    return f"; the worker died while embedding {who}"
