"""Read a job's output: a pyarrow Table, or ``(ids, matrix)`` streamed shard by shard.

Nothing here is needed to read the output: ``pandas.read_parquet``, ``polars.read_parquet``,
DuckDB's ``read_parquet('OUT/job/embeddings/*.parquet')`` and ``pyarrow.dataset`` all work.
BGE-M3 jobs (``--outputs dense,sparse,colbert``) add ``read_sparse`` and ``iter_colbert``; the
scores to rerank with them are in storage/scoring.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage import calibration
from storage.jobdir import JobDir
from storage.quantize import RANGED, Calibration, to_stored
from storage.shards import dense_matrix, dense_spec, read_metadata

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
    """Yield ``([(doc_id, chunk_index), ...], matrix)`` one shard at a time.

    The matrix has the stored dtype (``--dtype``): float32, float16, int8, uint8, or for
    binary/ubinary the packed sign bits, ``ceil(dim / 8)`` int8/uint8 per row (as
    sentence-transformers' ``quantize_embeddings``; ``storage.quantize.packed_bits`` gives the
    raw bytes). ``storage.quantize.quantize_queries`` puts query vectors in the same form.
    """
    job = open_job(path, require_success=require_success)
    fingerprints: set[str] = set()
    specs: set[tuple[str, int]] = set()
    for p in _shards(job):
        fingerprints.add(read_metadata(p).get("fingerprint", ""))
        specs.add(dense_spec(p))
        if len(fingerprints) > 1 or len(specs) > 1:
            raise ValueError(f"{job.root}: shards come from different model variants or "
                             f"dims/dtypes ({sorted(fingerprints)}, {sorted(specs)}); read "
                             "them separately")
        t = pq.read_table(p, columns=["doc_id", "chunk_index", "embedding"])
        matrix = dense_matrix(t["embedding"], next(iter(specs))[0])
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


def read_sparse(path: str | os.PathLike[str], *, require_success: bool = True
                ) -> tuple[Ids, list[tuple[np.ndarray, np.ndarray]]]:
    """``(ids, [(token_ids int32, weights float32), ...])`` of a job run with the sparse output.

    Raises:
        ValueError: the job's shards have no sparse columns (run without ``--outputs sparse``).
    """
    job = open_job(path, require_success=require_success)
    ids: Ids = []
    rows: list[tuple[np.ndarray, np.ndarray]] = []
    for p in _shards(job):
        t = _read_columns(p, ["doc_id", "chunk_index", "sparse_ids", "sparse_weights"], "sparse")
        ids.extend(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist()))
        tok, wts = t["sparse_ids"].combine_chunks(), t["sparse_weights"].combine_chunks()
        flat_t = tok.values.to_numpy(zero_copy_only=False)
        flat_w = wts.values.to_numpy(zero_copy_only=False)
        off = tok.offsets.to_numpy()
        rows.extend((flat_t[a:b].astype(np.int32), flat_w[a:b].astype(np.float32))
                    for a, b in zip(off[:-1], off[1:]))
    return ids, rows


def iter_colbert(path: str | os.PathLike[str], *, require_success: bool = True
                 ) -> Iterator[tuple[tuple[str, int], np.ndarray]]:
    """Yield ``((doc_id, chunk_index), (n_tokens - 1, dim) float32 matrix)`` chunk by chunk,
    reading one shard at a time (ColBERT output is n_tokens x dim floats per chunk).

    Raises:
        ValueError: the job's shards have no colbert column (run without ``--outputs colbert``).
    """
    job = open_job(path, require_success=require_success)
    for p in _shards(job):
        t = _read_columns(p, ["doc_id", "chunk_index", "colbert"], "colbert")
        col = t["colbert"].combine_chunks()
        dim = col.type.value_type.list_size
        flat = col.values.values.to_numpy(zero_copy_only=False).reshape(-1, dim)
        off = col.offsets.to_numpy()
        for key, a, b in zip(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist()),
                             off[:-1], off[1:]):
            yield key, flat[a:b]


def _read_columns(path: Path, columns: list[str], output: str) -> pa.Table:
    names = pq.read_schema(path).names
    if columns[-1] not in names:
        raise ValueError(f"{path}: no {output} output in this shard; submit the job with "
                         f"--outputs dense,{output} (a bundle exported from BGE-M3)")
    return pq.read_table(path, columns=columns)


def quantize_queries(job: str | os.PathLike[str] | Any, vectors: np.ndarray) -> np.ndarray:
    """Query vectors (full-dim float, from the job's model) in the job's stored representation:
    the job's ``--dim`` (re-normalised), its ``--dtype`` and, for int8/uint8, its recorded ranges.

    ``job``: a job directory, or its ``Manifest``.

    Raises:
        ValueError: an int8/uint8 job with no calibration recorded yet (no shard written).
    """
    from_dir = isinstance(job, (str, os.PathLike))
    manifest = JobDir.open(job).manifest if from_dir else job
    spec = manifest.dense or {}
    dtype = spec.get("dtype", "float32")
    cal = manifest.calibration
    if cal is None and from_dir and dtype in RANGED:
        cal = calibration.read(JobDir.open(job).root)
    if dtype in RANGED and cal is None:
        raise ValueError(f"{getattr(manifest, 'job_id', job)}: no int8/uint8 calibration "
                         "recorded yet (it is written with the job's first shard)")
    return to_stored(vectors, spec.get("dim"), dtype,
                     Calibration.from_dict(cal) if cal is not None else None)
