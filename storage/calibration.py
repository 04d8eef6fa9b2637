"""A job's int8/uint8 ranges: one file, written once, read by every shard of the job.

The first shard of an int8/uint8 job to finish embedding calibrates on its own float32 vectors
(truncated to the job's dim; at most ``CALIBRATION_MAX`` evenly spaced) and *claims*
``_state/calibration.json``: the file is written to a temporary name and hard-linked onto the
final one, which fails if it exists. A shard that loses the race (or runs later) quantizes
with the winner's ranges, so every shard of the job uses the same ranges whatever the
order, the number of workers or their precisions. ``JobDir.finalize`` copies the file into the
manifest (``calibration``: ``min``, ``max``, ``sample_size``, ``shard``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from storage.atomic import fsync_dir, tmp_name
from storage.jobfs import AnyPath, StorePath, job_path, write_once
from storage.quantize import Calibration

FILE = "calibration.json"


def path(root: AnyPath) -> AnyPath:
    return job_path(root) / "_state" / FILE


def read(root: Path) -> dict[str, Any] | None:
    """The job's recorded calibration (its JSON form), or None before the first shard."""
    p = path(root)
    try:
        return json.loads(p.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); delete it only if no shard of the "
                         "job has been written yet") from exc


def claim(root: Path, mine: Calibration) -> Calibration:
    """Record ``mine`` unless the job already has ranges; returns the job's ranges."""
    p = path(root)
    if isinstance(p, StorePath):  # a conditional PUT: the first claim wins
        if write_once(p, json.dumps(mine.to_dict()).encode()):
            return mine
        got = read(root)
        assert got is not None
        return Calibration.from_dict(got)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(p)
    try:
        with open(tmp, "x") as f:
            json.dump(mine.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, p)  # atomic and refuses to replace: the first claim wins
        fsync_dir(p.parent)
        return mine
    except FileExistsError:
        got = read(root)
        assert got is not None
        return Calibration.from_dict(got)
    finally:
        tmp.unlink(missing_ok=True)

