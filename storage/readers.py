"""Read a job's output: a pyarrow Table, or ``(ids, matrix)`` streamed shard by shard.

Nothing here is needed to read the output: ``pandas.read_parquet``, ``polars.read_parquet``,
DuckDB's ``read_parquet('OUT/job/embeddings/*.parquet')`` and ``pyarrow.dataset`` all work.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.jobdir import JobDir
from storage.shards import read_metadata

Ids = list[tuple[str, int]]


def open_job(path: str | os.PathLike[str], *, require_success: bool = True) -> JobDir:
    """Open a job directory; by default it must be finished (``_SUCCESS`` present)."""
    job = JobDir.open(path)
    if require_success and not job.success_path.exists():
        raise FileNotFoundError(
            f"{job.root}: job not finished (no _SUCCESS); see `producer status {job.root}`"
        )
    return job


def _shards(job: JobDir) -> list[Path]:
    return [job.embeddings_path(s.shard) for s in job.shard_entries()
            if job.embeddings_path(s.shard).is_file()]


def read_table(path: str | os.PathLike[str], *, require_success: bool = True) -> pa.Table:
    """All embedding rows of a job as one Table (schema in ``storage.schema``)."""
    job = open_job(path, require_success=require_success)
    tables = [pq.read_table(p) for p in _shards(job)]
    if not tables:
        raise FileNotFoundError(f"{job.root}: no embedding shards")
    return pa.concat_tables(tables)


def iter_matrices(
    path: str | os.PathLike[str], *, require_success: bool = True
) -> Iterator[tuple[Ids, np.ndarray]]:
    """Yield ``([(doc_id, chunk_index), ...], float32 matrix)`` one shard at a time."""
    job = open_job(path, require_success=require_success)
    fingerprints: set[str] = set()
    for p in _shards(job):
        fingerprints.add(read_metadata(p).get("fingerprint", ""))
        if len(fingerprints) > 1:
            raise ValueError(f"{job.root}: shards come from different model variants "
                             f"({sorted(fingerprints)}); read them separately")
        t = pq.read_table(p, columns=["doc_id", "chunk_index", "embedding"])
        emb = t["embedding"].combine_chunks()
        dim = emb.type.list_size
        matrix = emb.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        ids = list(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist()))
        yield ids, matrix


def read_matrix(path: str | os.PathLike[str], **kw: bool) -> tuple[Ids, np.ndarray]:
    """All rows as one ``(ids, matrix)`` pair (use ``iter_matrices`` for big jobs)."""
    ids: Ids = []
    mats = []
    for i, m in iter_matrices(path, **kw):
        ids.extend(i)
        mats.append(m)
    return ids, (np.concatenate(mats) if mats else np.zeros((0, 0), np.float32))
