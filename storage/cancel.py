"""The cancel record of a job: ``_state/cancel.json``, written by ``producer cancel``.

Its presence is the one signal every worker checks: on receipt of a shard task (the task is
acked and skipped, never failed) and before each inference batch (a running shard stops without
writing anything). ``producer resume`` removes it. The manifest's ``status`` and
``cancelled_at`` say the same for readers (``status``, ``report``), but this file is the truth:
it is read by workers without parsing the manifest, and it survives a manifest rewrite by a
staging process that was still running when the job was cancelled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from storage.atomic import write_json_atomic
from storage.jobdir import JobDir

CANCEL = "cancel.json"


def cancel_path(job: JobDir) -> Path:
    return job.state_dir / CANCEL


def cancel_record(job: JobDir) -> dict[str, Any] | None:
    """The cancel record (``at``, ``by``), or None when the job is not cancelled."""
    try:
        raw = cancel_path(job).read_text()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(raw or "{}")
    except ValueError:  # torn or garbage: still a cancel (the file exists), time unknown
        rec = {}
    return rec if isinstance(rec, dict) else {}


def is_cancelled(job: JobDir) -> bool:
    """One ``stat``: cheap enough before every batch."""
    return cancel_path(job).exists()


def write_cancel(job: JobDir, by: str) -> dict[str, Any]:
    """Write the record (durably: a worker on another host must see it) and return it."""
    rec = {"at": time.time(), "by": by}
    cancel_path(job).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cancel_path(job), rec)
    return rec


def clear_cancel(job: JobDir) -> bool:
    """Remove the record; True when there was one."""
    try:
        cancel_path(job).unlink()
    except FileNotFoundError:
        return False
    return True
