"""``--since OUT/JOB`` (issue 27): check the base job a delta job carries unchanged rows from.

The base must be a finished, successful job with a document index (``docs/index.parquet``,
written at finalize since issue 27) made with the same model (every variant's fingerprint), the
same row-changing chunking (window, overlap, prefix) and the same outputs. A mismatch is an
error naming both values; ``--full-reembed`` embeds every document instead (the change list
and ``producer load``'s delta still come from the base's index).
"""

from __future__ import annotations

from typing import Any

from producer.errors import UsageError
from storage.carry import base_mismatch
from storage.docindex import INDEX
from storage.errors import StorageError
from storage.jobdir import JobDir
from storage.jobfs import job_path


def since_record(since: str, full_reembed: bool, chunking: dict[str, Any],
                 fingerprints: dict[str, str], outputs: list[str]) -> dict[str, Any]:
    """The manifest's ``delta`` record of a job made ``--since`` the job at ``since``.

    Raises:
        UsageError: not a job, not finished, no document index, or made with another model,
            chunking or outputs (without ``--full-reembed``).
    """
    try:
        base = JobDir.open(since)
        m = base.manifest
    except StorageError as exc:
        raise UsageError(f"--since {since}: {exc}") from None
    if m.status != "succeeded" or not base.success_path.exists():
        raise UsageError(f"--since {since}: job {m.job_id} is {m.status}, not finished "
                         "successfully; wait for it (`producer status`) or resume it")
    if not (base.root / INDEX).is_file():
        raise UsageError(f"--since {since}: job {m.job_id} has no document index ({INDEX}; "
                         "jobs made before issue 27 have none): embed the corpus in full once")
    why = base_mismatch(m, chunking, fingerprints, outputs)
    if why and not full_reembed:
        raise UsageError(f"--since {since}: {why}; use the same settings, or --full-reembed "
                         "to embed every document again")
    return {"since": str(base.root), "since_job": m.job_id, "carry": why is None
            and not full_reembed}


def since_root(record: dict[str, Any] | None) -> str:
    """The directory staging carries rows from ('' when none)."""
    return str(job_path(record["since"])) if record and record.get("carry") else ""
