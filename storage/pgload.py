"""Edge (``producer load``): stream a finished job's embeddings into PostgreSQL + pgvector.

Order of work, each step measured or forced by a failure it prevents:

1. Read every shard's footer (schema + ``embedfleet.*`` metadata, no rows): one model, one
   dimension, sparse columns in all shards or none — else stop before connecting.
2. Set-up transaction (``storage/pgtable.py``): create/check the table, register its model.
   A wrong dimension, vector type or model is refused here, before any row is written.
3. One transaction per shard: its ledger row, then ``COPY ... FROM STDIN (FORMAT BINARY)``
   with pgvector's binary dumpers, ``batch_rows`` Parquet rows in memory at a time. A
   killed loader leaves the open transaction to be rolled back by the server, so a re-run
   copies that shard again and skips the committed ones: every row lands exactly once.
4. ``CREATE INDEX ... USING hnsw`` after the load: building the graph once over all rows is
   several times faster than inserting each row into an existing one (pgvector README), and
   a re-run that adds no rows does not rebuild it.

Nothing here prints: the CLI (``producer/tools/load.py``) draws progress from ``progress``.
The DSN's password never enters a message (``mask_dsn``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import DatabaseUnreachable, LoadConflict, LoadError
from storage.pgtable import (BASE_COLUMNS, Layout, Target, build_hnsw, claim_shard,
                             loaded_shards, prepare, vector_type_for)
from storage.pgdelta import as_delta, set_current
from storage.readers import open_job
from storage.quantize import packed_bits
from storage.shards import dense_matrix, dense_spec, read_metadata
from storage.urls import mask_url

Progress = Callable[[str, int, int], None]
"""``progress(what, done, total)`` with ``what`` in ``"rows"``, ``"index"``."""
SPARSE_COLUMNS = ("sparse_ids", "sparse_weights")
DEFAULT_BATCH_ROWS = 10_000
"""Parquet rows decoded per step: ~16 MB of 384-d float32 plus ids, far below one shard."""
PLAIN = [name for name, _ in BASE_COLUMNS]
"""Columns copied as they are: doc_id, chunk_index, char_start, char_end, n_tokens, text_sha256."""
_COPY_TYPES = ["text", "int4", "int8", "int8", "int4", "text"]  # BASE_COLUMNS, as COPY types


@dataclass(frozen=True)
class JobShard:
    shard: int
    path: Path
    rows: int


@dataclass(frozen=True)
class JobSpec:
    """What a job brings to the table, read from its manifest and shard footers only."""

    job_id: str
    layout: Layout
    shards: list[JobShard]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


@dataclass(frozen=True)
class LoadResult:
    table: str
    job_id: str
    vector_type: str
    shards_loaded: int
    shards_skipped: int
    rows_added: int
    index: str  # "built", "exists", "none"
    load_s: float
    index_s: float


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced by ``***`` (URL or ``key=value`` form).

    >>> mask_dsn("host=db password=s3cret dbname=x")
    'host=db password=*** dbname=x'
    """
    if "://" in dsn:
        return mask_url(dsn)
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)


def inspect_job(job_dir: str | os.PathLike[str], *, vector_type: str | None = None,
                sparse_vocab: int | None = None) -> JobSpec:
    """Read the job's manifest and shard footers; raise LoadError if they disagree."""
    job = open_job(job_dir)
    shards: list[JobShard] = []
    fingerprints: set[str] = set()
    dims: set[tuple[str, int]] = set()
    sparse: set[bool] = set()
    vocab = sparse_vocab
    for s in job.manifest.shards:
        path = job.embeddings_path(s.shard)
        if not path.is_file():
            continue
        schema = pq.read_schema(path)
        meta = read_metadata(path)
        fingerprints.add(meta.get("fingerprint", ""))
        dims.add(dense_spec(path))
        sparse.add(all(c in schema.names for c in SPARSE_COLUMNS))
        vocab = vocab or _int_or_none(meta.get("sparse_vocab"))
        shards.append(JobShard(s.shard, path, pq.read_metadata(path).num_rows))
    if len(fingerprints) > 1 or len(dims) > 1 or len(sparse) > 1:
        raise LoadError(f"{job.root}: shards differ in model, dimension or sparse columns "
                        f"(fingerprints {sorted(fingerprints)}, dtypes/dims {sorted(dims)}); "
                        "load them into separate tables")
    model = job.manifest.model
    dtype, dim = dims.pop() if dims else (job.manifest.dense_dtype, job.manifest.dense_dim)
    vector_type = vector_type_for(dtype, vector_type, str(job.root))
    if sparse == {True}:
        vocab = vocab or _int_or_none(model.get("vocab_size"))
        if not vocab:
            raise LoadError(f"{job.root}: shards have sparse columns but neither their "
                            "'sparse_vocab' metadata nor the manifest's model.vocab_size "
                            "gives the sparsevec size")
    layout = Layout(fingerprint=fingerprints.pop() if fingerprints else "",
                    model=str(model.get("source", "?")),
                    dim=dim, vector_type=vector_type,
                    sparse_vocab=vocab if sparse == {True} else None, dtype=dtype)
    return JobSpec(str(job.manifest.job_id or job.root.name), layout, shards)


def _int_or_none(v: Any) -> int | None:
    return int(v) if v not in (None, "") else None


def connect_db(dsn: str) -> Any:
    """A psycopg connection with pgvector's types, or DatabaseUnreachable (password masked)."""
    try:
        import psycopg
    except ImportError as exc:  # the `pg` extra
        raise LoadError("producer load needs psycopg and pgvector: "
                        "pip install 'embedfleet[pg]'") from exc
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise DatabaseUnreachable(f"cannot connect to {mask_dsn(dsn)}: "
                                  f"{_scrub(str(exc).strip(), dsn)}") from None
    return conn


def _register_types(conn: Any) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def _scrub(text: str, dsn: str) -> str:
    """Belt and braces: remove the password itself from any server or driver message."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        pw = conninfo_to_dict(dsn).get("password")
    except Exception:
        return text
    return text.replace(str(pw), "***") if pw else text


def load_job(job_dir: str | os.PathLike[str], dsn: str, table: str, *, create: bool = False,
             vector_type: str | None = None, index: str = "hnsw",
             batch_rows: int = DEFAULT_BATCH_ROWS, maintenance_work_mem: str | None = None,
             parallel_workers: int | None = None, sparse_vocab: int | None = None,
             progress: Progress | None = None) -> LoadResult:
    """Load a finished job into ``table`` exactly once (re-runs skip loaded shards).

    Args:
        job_dir: a job directory with ``_SUCCESS``.
        dsn: libpq URL or ``key=value`` string.
        table: ``[schema.]name``; made by ``create=True`` if absent.
        vector_type: ``vector`` (float32) or ``halfvec`` (float16); default: the existing
            table's, else ``vector``.
        index: ``hnsw`` (cosine) or ``none``.
        batch_rows: Parquet rows decoded per step (memory bound).
        maintenance_work_mem, parallel_workers: settings for the index build.

    Raises:
        DatabaseUnreachable, TableMismatch, LoadConflict, LoadError (all EmbedfleetError).
    """
    if index not in ("hnsw", "none"):
        raise LoadError(f"--index {index!r}: use hnsw or none")
    target = Target.parse(table)
    spec = inspect_job(job_dir, vector_type=vector_type, sparse_vocab=sparse_vocab)
    with connect_db(dsn) as conn:
        t0 = time.perf_counter()
        vtype = prepare(conn, target, spec.layout, create=create)
        _register_types(conn)
        shard = {s.shard: s for s in spec.shards}
        delta = as_delta(conn, target, job_dir, spec.job_id, spec.layout.fingerprint, lambda c, n:
                         copy_shard(c, target, spec, shard[n], vtype, batch_rows))
        done = loaded_shards(conn, target, spec.job_id)
        todo = [] if delta else [s for s in spec.shards if s.shard not in done]
        total, rows_added = sum(s.rows for s in todo), delta[2] if delta else 0
        for s in todo:
            if _load_shard(conn, target, spec, s, vtype, batch_rows, progress, rows_added, total):
                rows_added += s.rows
        if not delta and done | {s.shard for s in todo} >= {s.shard for s in spec.shards}:
            set_current(conn, target, spec.job_id)
        if rows_added:  # fresh planner statistics for the first queries
            from psycopg import sql

            conn.execute(sql.SQL("ANALYZE {}").format(target.ident()))
        load_s = time.perf_counter() - t0
        state, t1 = "none", time.perf_counter()
        if index == "hnsw":
            built = build_hnsw(conn, target, vtype, maintenance_work_mem=maintenance_work_mem,
                               parallel_workers=parallel_workers, dsn=dsn, progress=progress)
            state = "built" if built else "exists"
    loaded, skipped = delta[:2] if delta else (len(todo), len(spec.shards) - len(todo))
    return LoadResult(target.qualified, spec.job_id, vtype, loaded, skipped, rows_added, state,
                      round(load_s, 3), round(time.perf_counter() - t1, 3))


def _load_shard(conn: Any, target: Target, spec: JobSpec, s: JobShard, vtype: str,
                batch_rows: int, progress: Progress | None, base: int, total: int) -> bool:
    """One shard in one transaction with its ledger row; False if another loader had it."""
    import psycopg

    try:
        with conn.transaction():
            if not claim_shard(conn, target, spec.job_id, s.shard, s.rows, spec.layout.fingerprint):
                return False
            with conn.cursor() as cur:
                copy_shard(cur, target, spec, s, vtype, batch_rows, progress, base, total)
    except psycopg.errors.UniqueViolation as exc:
        raise LoadConflict(
            f"{s.path}: {exc.diag.message_detail or exc} in {target.qualified}, from another "
            f"job; shard {s.shard} rolled back, nothing of it written") from None
    except psycopg.errors.DataException as exc:
        raise LoadError(f"{s.path}: {exc.diag.message_primary or exc}; shard {s.shard} "
                        "rolled back, nothing of it written") from None
    return True


def copy_shard(cur: Any, target: Target, spec: JobSpec, s: JobShard, vtype: str,
               batch_rows: int, progress: Progress | None = None, base: int = 0,
               total: int = 0) -> int:
    """COPY one shard's rows (inside the caller's transaction); returns them."""
    from psycopg import sql

    cols = [*PLAIN, "embedding"] + (["sparse"] if spec.layout.sparse_vocab else [])
    types = _COPY_TYPES + [vtype] + (["sparsevec"] if spec.layout.sparse_vocab else [])
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        target.ident(), sql.SQL(", ").join(map(sql.Identifier, cols)))
    with cur.copy(stmt) as cp:
        cp.set_types(types)
        n = 0
        for batch in _batches(s.path, batch_rows, bool(spec.layout.sparse_vocab)):
            for row in copy_rows(batch, vtype, spec.layout.sparse_vocab, spec.layout.dtype,
                                 spec.layout.dim):
                cp.write_row(row)
            n += batch.num_rows
            if progress is not None:
                progress("rows", base + n, total)
    if cur.rowcount != s.rows:
        raise LoadError(f"{s.path}: copied {cur.rowcount} rows, footer says "
                        f"{s.rows}; shard rolled back (this is a bug)")
    return s.rows


def _batches(path: Path, batch_rows: int, sparse: bool) -> Iterator[pa.RecordBatch]:
    cols = [*PLAIN, "embedding", *(SPARSE_COLUMNS if sparse else ())]
    yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=cols)


def copy_rows(batch: pa.RecordBatch, vtype: str, sparse_vocab: int | None,
              dtype: str = "float32", dim: int = 0) -> Iterator[list[Any]]:
    """Rows of one record batch as COPY values (pgvector objects for the vector columns)."""
    from pgvector import Bit, HalfVector, SparseVector

    matrix = dense_matrix(batch.column("embedding"), dtype)
    if vtype == "bit":  # the packed sign bits as stored; Bit(bytes) when no padding bits
        bits = packed_bits(matrix, dtype)
        vecs: Any = ([Bit(r.tobytes()) for r in bits] if dim % 8 == 0 else
                     [Bit(np.unpackbits(r, count=dim).astype(bool)) for r in bits])
    else:
        vecs = [HalfVector(m) if vtype == "halfvec" else m.astype(np.float32) for m in matrix]
    plain = [batch.column(c).to_pylist() for c in PLAIN]
    if sparse_vocab:
        ids = batch.column("sparse_ids").to_pylist()
        weights = batch.column("sparse_weights").to_pylist()
    for i, vals in enumerate(zip(*plain)):
        row = [*vals, vecs[i]]
        if sparse_vocab:
            row.append(SparseVector(dict(zip(ids[i], weights[i])), sparse_vocab))
        yield row
