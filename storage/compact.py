"""Edge (``producer compact``): rewrite a job's many small shards into few large Parquet files.

A 100M-chunk job is ~100k shard files; listing, opening and reading footers dominate reads
of that many small files. ``compact_job`` streams the shards in manifest order into files
of ``rows_per_file`` rows and writes a new job directory:

    OUT/manifest.json            the job's, with the new ``shards`` list, job id ``<id>-compacted``
                                 and ``compacted_from``
    OUT/embeddings/part-NNNNN.parquet   same schema, same ``embedfleet.*`` metadata
    OUT/metrics/part-00000.parquet      the metric rows, one file
    OUT/rejects.jsonl, OUT/_SUCCESS

so ``storage.readers`` (and ``producer load``) read it like any finished job. A new file also
starts whenever the shards' metadata changes (e.g. another provider), so each file's metadata
is exactly its rows'. Atomic: everything is written into a hidden sibling directory that is
renamed onto OUT last; the source job is only read.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.atomic import fsync_dir, tmp_name
from storage.errors import CompactError
from storage.jobdir import JobDir
from storage.objstore import is_object_uri
from storage.readers import open_job
from storage.shards import META_PREFIX, read_metadata

DEFAULT_ROWS_PER_FILE = 1_000_000
"""~1.6 GB of 384-d float32 before compression: large files, still one row group at a time."""
_VOLATILE = ("rejected",)
"""Metadata summed over the merged shards rather than required equal."""


@dataclass(frozen=True)
class CompactResult:
    out: Path
    files_in: int
    files_out: int
    rows: int
    bytes_in: int
    seconds: float


def compact_job(job_dir: str | os.PathLike[str], out: str | os.PathLike[str], *,
                rows_per_file: int = DEFAULT_ROWS_PER_FILE,
                progress: Callable[[int, int], None] | None = None) -> CompactResult:
    """Write the compacted copy of a finished job to ``out`` (which must not hold files).

    Raises:
        CompactError: ``out`` exists and is not empty, or is the job itself.
    """
    t0 = time.perf_counter()
    if rows_per_file < 1:
        raise CompactError(f"--rows-per-file {rows_per_file}: must be at least 1")
    job = open_job(job_dir)
    if is_object_uri(out):  # the output is made as one directory renamed into place
        raise CompactError(f"--out {out}: compact writes a local directory (a job in a bucket "
                           "is read from there); copy the result to the bucket afterwards")
    final = Path(out).resolve()
    if final == job.root or job.root in final.parents:
        raise CompactError(f"--out {final}: inside the job being compacted; pick another")
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise CompactError(f"--out {final}: exists and is not empty; compact never overwrites")
    shards = [job.embeddings_path(s.shard) for s in job.manifest.shards]
    shards = [p for p in shards if p.is_file()]
    tmp = tmp_name(final)
    try:
        new = JobDir(tmp)
        for d in (new.embeddings_dir, new.metrics_dir):
            d.mkdir(parents=True)
        listing = _write_embeddings(shards, new, rows_per_file, progress)
        _write_metrics(job, new)
        if job.rejects_path.is_file():
            new.rejects_path.write_bytes(job.rejects_path.read_bytes())  # the job may be in a store
        manifest = job.manifest.to_dict()
        manifest.update(job_id=f"{manifest.get('job_id', job.root.name)}-compacted",
                        shards=listing, compacted_from={"path": str(job.root),
                                                        "shards": len(shards)})
        new.manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        new.success_path.write_bytes(b"")
        for p in tmp.rglob("*"):
            if p.is_file():
                _fsync(p)
        if final.exists():
            final.rmdir()  # empty (checked above); os.rename cannot replace a directory
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)
    return CompactResult(final, len(shards), len(listing),
                         sum(s["chunks"] - s["rejected"] for s in listing),
                         sum(p.stat().st_size for p in shards),
                         round(time.perf_counter() - t0, 3))


@dataclass
class _File:
    """One output file of the plan: its metadata, rows and the rejects of its shards."""

    meta: dict[str, str]
    schema: pa.Schema
    rows: int = 0
    rejected: int = 0
    tokens: int = 0


def plan_files(shards: list[Path], rows_per_file: int) -> list[_File]:
    """From footers only: which rows go to which file (a new file on full or new metadata).

    A shard's rejected count goes to the file holding its first row, so every file's
    ``rows + rejected`` adds up to the job's chunks, as ``shard_is_valid`` expects.
    """
    files: list[_File] = []
    for path in shards:
        meta = {k: v for k, v in read_metadata(path).items() if k not in _VOLATILE}
        rejected = int(read_metadata(path).get("rejected", "0"))
        n = pq.read_metadata(path).num_rows
        if not files or files[-1].meta != meta or files[-1].rows >= rows_per_file:
            files.append(_File(meta, pq.read_schema(path).remove_metadata()))
        files[-1].rejected += rejected
        while n:
            if files[-1].rows >= rows_per_file:
                files.append(_File(meta, files[-1].schema))
            take = min(n, rows_per_file - files[-1].rows)
            files[-1].rows += take
            n -= take
    return files


def _write_embeddings(shards: list[Path], new: JobDir, rows_per_file: int,
                      progress: Callable[[int, int], None] | None) -> list[dict[str, int]]:
    """Stream ``shards`` into the planned files; returns the new manifest's ``shards`` list."""
    plan = plan_files(shards, rows_per_file)
    writer: pq.ParquetWriter | None = None
    j = -1  # index of the open file
    written = 0

    def next_file() -> None:
        """Close every completed file (empty ones included) and open the next."""
        nonlocal writer, j, written
        while j < len(plan) and (j < 0 or written == plan[j].rows):
            if writer is not None:
                writer.close()
                writer = None
            j, written = j + 1, 0
            if j < len(plan):
                f = plan[j]
                meta = {META_PREFIX + k.encode(): v.encode()
                        for k, v in {**f.meta, "rejected": str(f.rejected)}.items()}
                writer = pq.ParquetWriter(new.embeddings_path(j),
                                          f.schema.with_metadata(meta), compression="zstd")

    next_file()
    for i, path in enumerate(shards):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
            while batch.num_rows:
                assert writer is not None, "more rows than the footers said: this is a bug"
                take = batch.slice(0, plan[j].rows - written)
                writer.write_batch(take)
                plan[j].tokens += int(pc.sum(take.column("n_tokens")).as_py() or 0)
                written += take.num_rows
                batch = batch.slice(take.num_rows)
                next_file()
        if progress is not None:
            progress(i + 1, len(shards))
    return [{"shard": k, "chunks": f.rows + f.rejected, "tokens": f.tokens,
             "rejected": f.rejected} for k, f in enumerate(plan)]


def _write_metrics(job: JobDir, new: JobDir) -> None:
    files = sorted(job.metrics_dir.glob("part-*.parquet"))
    if files:
        pq.write_table(pa.concat_tables(pq.read_table(p) for p in files),
                       new.metrics_path(0), compression="zstd")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


