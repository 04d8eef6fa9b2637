"""``producer cancel JOB`` and its undoing by ``producer resume``.

Cancelling writes the cancel record (storage/cancel.py) that every worker checks on receipt of
a shard or stage task and before each inference batch, then marks the manifest ``cancelled``.
From the moment ``cancel_job`` returns no shard of the job starts anywhere in the fleet: queued
tasks are acked and skipped, a running shard stops at its next batch boundary without writing
(or, in its last batch, finishes). Shards already written stay valid: the partial output reads
with ``storage.readers.read_table(job, require_success=False)``. Nothing is purged from the
broker; the skipped messages drain at the speed of a ``stat`` each.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from storage.cancel import cancel_record, clear_cancel, write_cancel
from storage.jobdir import JobDir


@dataclass
class Cancelled:
    at: float
    done: int
    shards: int
    already: bool = False
    finished: str = ""
    """The job's final status when it had already finished (nothing was cancelled)."""


def cancel_job(jd: JobDir) -> Cancelled:
    """Cancel the job in ``jd`` (idempotent); a finished job is left as it is."""
    m = jd.reload()
    if m.finished:
        return Cancelled(0.0, 0, len(m.shards), finished=m.status)
    old = cancel_record(jd)
    rec = old if old is not None else write_cancel(jd, by=socket.gethostname())
    m = jd.reload()  # re-read: a worker may have finalised it meanwhile
    if not m.finished:
        m.status, m.cancelled_at = "cancelled", float(rec.get("at") or 0.0)
        jd.write_manifest(m)
    done = sum(s.state == "done" for s in jd.shard_states())
    return Cancelled(float(rec.get("at") or 0.0), done, len(jd.shard_entries()),
                     already=old is not None)


def uncancel(jd: JobDir) -> bool:
    """Clear a cancel before the job is continued; True when it was cancelled."""
    had = clear_cancel(jd)
    m = jd.reload()
    if m.status == "cancelled" or m.cancelled_at is not None:
        m.status = m.status if m.finished else ("running" if m.staged else "staging")
        m.cancelled_at = None
        jd.write_manifest(m)
        had = True
    return had
