"""Where a shard task honours ``producer cancel`` (the record: storage/cancel.py).

On receipt, before an attempt is counted, and again right after (a cancel that landed in
between): the task returns ``cancelled`` and is acked, never failed or retried. Before each
inference batch: ``ShardCancelled`` stops the attempt; nothing of the shard is written and the
attempt is un-counted (a cancel is not the shard's fault), so ``producer resume`` starts it
afresh.
"""

from __future__ import annotations

import logging

from storage.cancel import is_cancelled
from storage.jobdir import JobDir

log = logging.getLogger(__name__)


class ShardCancelled(Exception):
    """The job was cancelled while this shard ran (raised at a batch boundary)."""


def skip_on_receipt(job: JobDir, shard: int) -> bool:
    """True (after one log line) when the job is cancelled: the task does nothing."""
    if not is_cancelled(job):
        return False
    log.info("shard %s of %s: job cancelled; skipped (acked, not failed)", shard, job.root)
    return True


def check_batch(job: JobDir, shard: int, batch: int, batches: int) -> None:
    """Raise ShardCancelled before batch ``batch`` when the job was cancelled."""
    if is_cancelled(job):
        log.info("shard %s of %s: job cancelled; stopped before batch %d of %d, nothing "
                 "written", shard, job.root, batch, batches)
        raise ShardCancelled(f"{job.root} cancelled")
