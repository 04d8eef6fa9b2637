"""Edge (``load`` of a ``--since`` job, issue 27): apply the delta to a table holding its base.

A third bookkeeping table, beside ``embedfleet_tables`` and ``embedfleet_loads``:

    embedfleet_heads(table_name PK, job_id, updated_at)
        the job whose output the table equals: set when a load finishes (a full load, or the
        last step of a delta). A table loaded before it existed counts as holding its only job.

A delta job is loaded as a delta only into a table whose current job is its base; into an
empty table it is loaded in full (its directory is complete); anything else is refused naming
both jobs. The delta is applied in units, each one transaction with its ledger rows
(``embedfleet_loads``), so a killed loader's re-run skips the committed units and redoes the
rolled-back one (exactly once):

1. each group of embedded shards that share a document (a long document may span two): delete
   the rows of the documents it holds, then COPY their new rows; a query sees a document's old
   chunks or its new ones, never a mix;
2. the deleted documents, ``DELETE_BATCH`` ids per transaction (ledger shard ``-1 - k``);
3. last: the carried shards are recorded (their rows are the base's, already in the table)
   and the table's current job becomes this one.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage.carry import read_changes
from storage.errors import LoadConflict
from storage.jobdir import JobDir
from storage.pgtable import Target, claim_shard, loaded_shards
from storage.shards import read_metadata

HEADS = "embedfleet_heads"
DELETE_BATCH = 10_000
KILL_ENV = "EMBED_PGDELTA_KILL_AFTER"
"""Tests: SIGKILL the loader after this many committed delta units (inert when unset)."""


def delta_base(job_dir: str | os.PathLike[str]) -> str | None:
    """The base job id of a finished ``--since`` job (None: not a delta job)."""
    d = JobDir.open(job_dir).manifest.delta
    return str(d["since_job"]) if d and "added" in d else None


def ensure_heads(conn: Any, target: Target) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, job_id "
                         "text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())")
                 .format(target.ident(HEADS)))


def current_job(conn: Any, target: Target) -> str | None:
    """The job the table holds: its heads row, else the only job its ledger names."""
    from psycopg import sql

    ensure_heads(conn, target)
    row = conn.execute(sql.SQL("SELECT job_id FROM {} WHERE table_name = %s")
                       .format(target.ident(HEADS)), [target.qualified]).fetchone()
    if row:
        return str(row[0])
    jobs = conn.execute(sql.SQL("SELECT DISTINCT job_id FROM {} WHERE table_name = %s")
                        .format(target.ident("embedfleet_loads")), [target.qualified]).fetchall()
    return str(jobs[0][0]) if len(jobs) == 1 else None


def set_current(conn: Any, target: Target, job_id: str) -> None:
    from psycopg import sql

    ensure_heads(conn, target)
    conn.execute(sql.SQL("INSERT INTO {} (table_name, job_id) VALUES (%s, %s) ON CONFLICT "
                         "(table_name) DO UPDATE SET job_id = excluded.job_id, updated_at = now()")
                 .format(target.ident(HEADS)), [target.qualified, job_id])


def applies(conn: Any, target: Target, job_id: str, base: str) -> bool:
    """True: load as a delta; False: load in full (the table is empty). Refuses otherwise."""
    from psycopg import sql

    head = current_job(conn, target)
    if head in (base, job_id):
        return True
    empty = conn.execute(sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})")
                         .format(target.ident())).fetchone()[0]
    if head is None and empty:
        return False
    raise LoadConflict(f"table {target.qualified} holds job {head or '(several jobs)'}; job "
                       f"{job_id} is a delta since job {base}: load {base} first, or load "
                       f"{job_id} into an empty table")


def units(job: JobDir) -> tuple[list[list[int]], list[int]]:
    """Embedded shards grouped so no document spans two groups; and the carried shards."""
    groups: list[list[int]] = []
    carried: list[int] = []
    last: set[int] = set()
    for s in job.manifest.shards:
        path = job.embeddings_path(s.shard)
        if not path.is_file():
            continue  # a failed shard: nothing to load
        if "carried_from" in read_metadata(path):
            carried.append(s.shard)
            continue
        lines = set(pq.read_table(path, columns=["line"])["line"].to_pylist())
        if groups and lines & last:
            groups[-1].append(s.shard)
            last |= lines
        else:
            groups.append([s.shard])
            last = lines
    return groups, carried


def load_delta(conn: Any, target: Target, job: JobDir, job_id: str, fingerprint: str,
               copy: Callable[[Any, int], int]) -> tuple[int, int, int]:
    """Apply the delta; ``copy(cursor, shard)`` COPYs one shard's rows and returns them.
    Returns (units applied, units skipped, rows added)."""
    groups, carried = units(job)
    done = loaded_shards(conn, target, job_id)
    ch = read_changes(job.root)
    deleted = ch.filter(pc.equal(ch["change"], "deleted"))["doc_id"].to_pylist()
    batches = [deleted[i:i + DELETE_BATCH] for i in range(0, len(deleted), DELETE_BATCH)]
    applied = skipped = added = 0
    for group in groups:
        if group[0] in done:
            skipped += 1
            continue
        with conn.transaction():
            rows = [pq.read_metadata(job.embeddings_path(s)).num_rows for s in group]
            if not all(claim_shard(conn, target, job_id, s, n, fingerprint)
                       for s, n in zip(group, rows, strict=True)):
                raise LoadConflict(f"another loader is applying job {job_id} to "
                                   f"{target.qualified}; let it finish")
            ids = sorted({d for s in group for d in pq.read_table(
                job.embeddings_path(s), columns=["doc_id"])["doc_id"].to_pylist()})
            _delete(conn, target, ids)
            with conn.cursor() as cur:
                added += sum(copy(cur, s) for s in group)
        applied += 1
        _maybe_die(applied)
    for k, ids in enumerate(batches):
        if -1 - k in done:
            skipped += 1
            continue
        with conn.transaction():
            if claim_shard(conn, target, job_id, -1 - k, len(ids), fingerprint):
                _delete(conn, target, ids)
        applied += 1
        _maybe_die(applied)
    with conn.transaction():
        for s in carried:
            claim_shard(conn, target, job_id, s,
                        pq.read_metadata(job.embeddings_path(s)).num_rows, fingerprint)
        set_current(conn, target, job_id)
    return applied, skipped, added


def as_delta(conn: Any, target: Target, job_dir: str | os.PathLike[str], job_id: str,
             fingerprint: str, copy: Callable[[Any, int], int]) -> tuple[int, int, int] | None:
    """A ``--since`` job into a table holding its base: applied as a delta (units applied,
    skipped, rows added). None: load it in full (not a delta job, or an empty table)."""
    base = delta_base(job_dir)
    if base is None or not applies(conn, target, job_id, base):
        return None
    return load_delta(conn, target, JobDir.open(job_dir), job_id, fingerprint, copy)


def _delete(conn: Any, target: Target, ids: list[str]) -> None:
    from psycopg import sql

    if ids:
        conn.execute(sql.SQL("DELETE FROM {} WHERE doc_id = ANY(%s)").format(target.ident()),
                     [ids])


def _maybe_die(applied: int) -> None:
    n = os.environ.get(KILL_ENV)
    if n and applied >= int(n):
        os.kill(os.getpid(), signal.SIGKILL)
