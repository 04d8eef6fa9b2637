"""Corrupt job state: read the files every stage trusts, and say what to do when one is damaged.

A job directory can be damaged outside embedfleet (a full disk, a bad copy, a hand edit). Each
reader here raises ``CorruptFile`` with the path and the remedy that loses nothing: a manifest
that is not JSON cannot be rebuilt from the shards (restore it or submit again); a metrics shard
with a bad footer is recomputed with its embeddings by ``producer resume``; a garbage or
truncated input shard fails its task with the path, and ``producer status`` says to submit the
corpus again (the staged chunks are the only copy the workers read).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import CorruptFile
from storage.shards import shard_name


def read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json`` as a dict; CorruptFile naming it when it is not a JSON object."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise CorruptFile(
            f"{path}: not valid JSON ({exc}); restore it from a copy, or submit the corpus "
            "again as a new job (without the manifest the shards cannot be checked)") from None
    if not isinstance(manifest, dict):
        raise CorruptFile(f"{path}: a JSON {type(manifest).__name__}, not an object; restore it "
                          "from a copy, or submit the corpus again as a new job")
    return manifest


def corrupt_metrics(metrics: Path, exc: BaseException) -> CorruptFile:
    """The error for a metrics shard that cannot be read (``job/metrics/part-N.parquet``)."""
    root = metrics.parent.parent
    embeddings = root / "embeddings" / metrics.name
    attempts = root / "_state" / "attempts" / f"{metrics.name.split('.')[0][5:]}.*"
    return CorruptFile(
        f"{metrics}: unreadable metrics shard ({exc}); delete it, {embeddings} and {attempts}, "
        f"then `producer resume {root}` recomputes that shard")


def input_problem(path: Path) -> str | None:
    """Why an input shard cannot be read (missing, bad footer), or None when it can."""
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as exc:
        return str(exc) if path.exists() else "missing"
    return None


def damaged_inputs(job_root: Path, shards: Iterable[int]) -> list[str]:
    """For ``producer status``: one line per failed shard whose staged input is unreadable.

    >>> damaged_inputs(Path("/nonexistent-job"), [2])  # doctest: +ELLIPSIS
    ['input shard 2 (/nonexistent-job/input/part-00002.parquet) is damaged (missing): ...']
    """
    out = []
    for n in shards:
        path = job_root / "input" / shard_name(n)
        if why := input_problem(path):
            out.append(f"input shard {n} ({path}) is damaged ({why}): submit the corpus again "
                       "as a new job; `producer resume` cannot repair staged input")
    return out
