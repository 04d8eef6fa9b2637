"""Edge (``load``): the PostgreSQL side — target table, bookkeeping tables, checks, HNSW index.

Two bookkeeping tables live in the target table's schema:

    embedfleet_tables(table_name PK, fingerprint, model, dim, vector_type, sparse_vocab, created_at)
        one row per loaded table: the model whose vectors it holds, so a second model's
        vectors never silently mix into it (cosine between two models' vectors is meaningless)
    embedfleet_loads(table_name, job_id, shard, rows, fingerprint, loaded_at), PK (table, job, shard)
        the ledger: a shard's row is inserted in the same transaction as its rows, so a shard
        is in the table exactly when its ledger row is (re-runs skip it; a killed COPY leaves
        neither)

Every check runs in the set-up transaction, before any row is copied: a mismatch rolls back
even the ``--create`` of the table.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.errors import InvalidTableName, LoadError, TableMismatch

TABLE_RE = re.compile(r"(?:([a-z_][a-z0-9_]{0,62})\.)?([a-z_][a-z0-9_]{0,62})")
VECTOR_TYPES = ("vector", "halfvec", "bit")
COSINE_OPS = {"vector": "vector_cosine_ops", "halfvec": "halfvec_cosine_ops",
              "bit": "bit_hamming_ops"}
"""The HNSW operator class per column type (bit: Hamming distance on the packed sign bits)."""
DTYPE_TYPES = {"float32": ("vector", "halfvec"), "float16": ("halfvec", "vector"),
               "binary": ("bit",), "ubinary": ("bit",)}
"""Column types a job's ``--dtype`` loads into, the default first."""


def vector_type_for(dtype: str, asked: str | None, where: str) -> str | None:
    """``asked`` (``producer load --type``) checked against the job's ``dtype``; None: the existing
    table's type, else the dtype's default (``DTYPE_TYPES``).

    Raises:
        LoadError: int8/uint8 (pgvector has no integer vector type), or ``asked`` does not hold
            this dtype (binary only goes into bit(n); floats never into bit).
    """
    if dtype not in DTYPE_TYPES:
        raise LoadError(f"{where}: --dtype {dtype} vectors cannot be stored by pgvector (its "
                        "types are vector, halfvec, bit and sparsevec, none of them integer); "
                        "embed with --dtype float16 (halfvec) or binary (bit), or keep the "
                        "int8 vectors in Parquet")
    allowed = DTYPE_TYPES[dtype]
    if asked is not None and asked not in allowed:
        raise LoadError(f"{where}: --type {asked} cannot hold --dtype {dtype} vectors; "
                        f"use {' or '.join(allowed)}")
    return asked
BASE_COLUMNS = (("doc_id", "text"), ("chunk_index", "integer"), ("char_start", "bigint"),
                ("char_end", "bigint"), ("n_tokens", "integer"), ("text_sha256", "text"))
"""The shard columns copied as they are (``format_type`` spelling), then ``embedding``."""


@dataclass(frozen=True)
class Target:
    """A validated ``[schema.]table`` name."""

    schema: str
    table: str

    @classmethod
    def parse(cls, name: str) -> Target:
        """``Target.parse("items")`` → schema ``public``; refuses anything needing quotes.

        >>> Target.parse("s.items").qualified
        's.items'
        """
        m = TABLE_RE.fullmatch(name or "")
        if not m:
            raise InvalidTableName(f"--table {name!r}: use [schema.]name with lowercase "
                                   "letters, digits and _ (at most 63 each)")
        return cls(m.group(1) or "public", m.group(2))

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def ident(self, name: str | None = None) -> Any:
        """A psycopg ``Identifier`` for the table (or a sibling ``name`` in its schema)."""
        from psycopg import sql

        return sql.Identifier(self.schema, name or self.table)


@dataclass(frozen=True)
class Layout:
    """What the job needs from the table: vector type and size, optional sparse size."""

    fingerprint: str
    model: str
    dim: int
    vector_type: str | None  # None: use the existing table's, else the dtype's default
    sparse_vocab: int | None
    dtype: str = "float32"
    """The job's stored dense dtype (``--dtype``); ``dim`` is its ``--dim`` (bits for bit)."""

    def columns(self, vector_type: str) -> list[tuple[str, str]]:
        cols = [*BASE_COLUMNS, ("embedding", f"{vector_type}({self.dim})")]
        if self.sparse_vocab:
            cols.append(("sparse", f"sparsevec({self.sparse_vocab})"))
        return cols


def prepare(conn: Any, target: Target, layout: Layout, *, create: bool) -> str:
    """Create (if asked) and check the table and bookkeeping; returns the vector type used.

    Runs in one transaction under an advisory lock on the table name, so two loaders
    starting together neither race ``CREATE TABLE`` nor register two models.
    """
    from psycopg import sql

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"embedfleet:{target.qualified}"])
        if create:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        found = table_columns(conn, target)
        if not found and not create:
            raise TableMismatch(f"table {target.qualified} does not exist; pass --create "
                                "to make it")
        allowed = DTYPE_TYPES[layout.dtype]
        vtype = layout.vector_type or _type_of(found.get("embedding", "")) or allowed[0]
        if vtype not in allowed:
            raise TableMismatch(f"{target.qualified}.embedding is {found.get('embedding')!r}; "
                                f"a --dtype {layout.dtype} job loads into "
                                f"{' or '.join(f'{t}({layout.dim})' for t in allowed)}")
        want = layout.columns(vtype)
        if not found:
            cols = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in want]
            conn.execute(sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (doc_id, chunk_index))")
                         .format(target.ident(), sql.SQL(", ").join(cols)))
        else:
            _check_columns(target, found, want)
        _create_bookkeeping(conn, target)
        _claim(conn, target, layout, vtype)
    return vtype


def table_columns(conn: Any, target: Target) -> dict[str, str]:
    """``{column: format_type}`` of the table, ``{}`` when it does not exist."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
        [target.qualified]).fetchall()
    return dict(rows)


def _type_of(formatted: str) -> str | None:
    return formatted.split("(")[0] or None


def _check_columns(target: Target, found: dict[str, str], want: list[tuple[str, str]]) -> None:
    for name, typ in want:
        if found.get(name) != typ:
            what = f"is {found[name]}" if name in found else "is missing"
            raise TableMismatch(f"{target.qualified}.{name} {what}; this job needs {typ} "
                                "(other dimension or vector type: load into another table)")


def _create_bookkeeping(conn: Any, target: Target) -> None:
    from psycopg import sql

    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, fingerprint text NOT NULL,"
        " model text NOT NULL, dim int NOT NULL, vector_type text NOT NULL, sparse_vocab int,"
        " created_at timestamptz NOT NULL DEFAULT now())").format(target.ident("embedfleet_tables")))
    conn.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (table_name text NOT NULL, job_id text NOT NULL,"
        " shard int NOT NULL, rows bigint NOT NULL, fingerprint text NOT NULL,"
        " loaded_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, job_id, shard))"
    ).format(target.ident("embedfleet_loads")))


def _claim(conn: Any, target: Target, layout: Layout, vtype: str) -> None:
    """Register the table's model on first load; refuse a job of another model."""
    from psycopg import sql

    tables = target.ident("embedfleet_tables")
    row = conn.execute(sql.SQL("SELECT fingerprint, model FROM {} WHERE table_name = %s")
                       .format(tables), [target.qualified]).fetchone()
    if row is None:
        conn.execute(sql.SQL("INSERT INTO {} (table_name, fingerprint, model, dim, vector_type,"
                             " sparse_vocab) VALUES (%s, %s, %s, %s, %s, %s)").format(tables),
                     [target.qualified, layout.fingerprint, layout.model, layout.dim, vtype,
                      layout.sparse_vocab])
    elif row[0] != layout.fingerprint:
        raise TableMismatch(
            f"table {target.qualified} holds vectors of model {row[1]} (fingerprint "
            f"{row[0][:12]}); this job's are {layout.model} ({layout.fingerprint[:12]}): "
            "vectors of two models must not share a table; load into another table")


def loaded_shards(conn: Any, target: Target, job_id: str) -> set[int]:
    from psycopg import sql

    rows = conn.execute(sql.SQL("SELECT shard FROM {} WHERE table_name = %s AND job_id = %s")
                        .format(target.ident("embedfleet_loads")),
                        [target.qualified, job_id]).fetchall()
    return {r[0] for r in rows}


def claim_shard(conn: Any, target: Target, job_id: str, shard: int, rows: int,
                fingerprint: str) -> bool:
    """Insert the shard's ledger row (inside the caller's transaction); False if present.

    ``ON CONFLICT DO NOTHING`` waits for a concurrent loader holding the same key, so of two
    loaders only one copies a shard.
    """
    from psycopg import sql

    got = conn.execute(sql.SQL(
        "INSERT INTO {} (table_name, job_id, shard, rows, fingerprint) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1").format(target.ident("embedfleet_loads")),
        [target.qualified, job_id, shard, rows, fingerprint]).fetchone()
    return got is not None


def index_name(target: Target) -> str:
    return f"{target.table[:50]}_embedding_hnsw"


def build_hnsw(conn: Any, target: Target, vtype: str, *, maintenance_work_mem: str | None,
               parallel_workers: int | None, dsn: str,
               progress: Callable[[str, int, int], None] | None = None) -> bool:
    """``CREATE INDEX ... USING hnsw (embedding <type>_cosine_ops)``; False if it existed.

    Progress comes from ``pg_stat_progress_create_index`` polled on a second connection.
    """
    from psycopg import sql

    name = index_name(target)
    if conn.execute("SELECT to_regclass(%s)", [f"{target.schema}.{name}"]).fetchone()[0]:
        return False
    if maintenance_work_mem:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
    if parallel_workers is not None:
        conn.execute("SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                     [str(parallel_workers)])
    stop = threading.Event()
    watcher = None
    if progress is not None:
        watcher = threading.Thread(target=_watch_index, daemon=True,
                                   args=(dsn, conn.info.backend_pid, progress, stop))
        watcher.start()
    try:
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})")
                     .format(sql.Identifier(name), target.ident(), sql.SQL(COSINE_OPS[vtype])))
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)
    return True


def _watch_index(dsn: str, pid: int, progress: Callable[[str, int, int], None],
                 stop: threading.Event) -> None:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as watch:
            while not stop.wait(0.5):
                row = watch.execute(
                    "SELECT tuples_done, tuples_total, blocks_done, blocks_total FROM "
                    "pg_stat_progress_create_index WHERE pid = %s", [pid]).fetchone()
                if row and row[1]:
                    progress("index", int(row[0]), int(row[1]))
                elif row and row[3]:
                    progress("index", int(row[2]), int(row[3]))
    except psycopg.Error:
        return  # progress is a nicety: the build itself reports its own errors
