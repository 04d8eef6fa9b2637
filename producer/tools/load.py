"""``producer load`` and ``producer compact``: the downstream edges of a finished job.

The work is in ``storage/pgload.py`` and ``storage/compact.py``; this module parses options and
draws progress on stderr. Errors are raised, and ``producer.cli.EXIT_CODES`` turns them into one
line and an exit code: 1 the database cannot be reached, 3 a bad option (``--table`` name),
4 compact's ``--out`` is not empty, 9 the table refuses this job (other dimension, vector type
or model; missing without ``--create``; the same ``(doc_id, chunk_index)`` from another job).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from producer.options import JOB_DIR


class _Bars:
    """One click progress bar per phase ("rows", "index", "shards"), on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        bar = self.bars.get(what)
        if bar is None:
            for other in list(self.bars):
                self._close(other)
            bar = click.progressbar(length=total, label=what, file=sys.stderr, width=30,
                                    show_percent=True, show_eta=True)
            bar.__enter__()
            self.bars[what] = bar
        bar.update(done - bar.pos)

    def _close(self, what: str) -> None:
        bar = self.bars.pop(what, None)
        if bar is not None:
            bar.__exit__(None, None, None)

    def close(self) -> None:
        for what in list(self.bars):
            self._close(what)


def _with_bars(enabled: bool, work: Callable[[_Bars], Any]) -> Any:
    bars = _Bars(enabled)
    try:
        return work(bars)
    finally:
        bars.close()  # before the group prints an error, so it starts on its own line


@click.command()
@click.argument("job_dir", type=JOB_DIR)
@click.option("--dsn", required=True, envvar="EMBED_PG_DSN",
              help="PostgreSQL URL or key=value string (its password is never printed).")
@click.option("--table", required=True, help="Target [schema.]table (lowercase, digits, _).")
@click.option("--create", is_flag=True, help="Create the table (and the vector extension) "
              "if missing.")
@click.option("--type", "vector_type", type=click.Choice(["vector", "halfvec", "bit"]),
              default=None,
              help="Column type: vector = float32, halfvec = float16 (half the size), bit = "
              "packed sign bits (--dtype binary jobs). Default: the existing table's, else "
              "the job's dtype's (float32: vector, float16: halfvec, binary: bit).")
@click.option("--index", type=click.Choice(["hnsw", "none"]), default="hnsw",
              show_default=True, help="Build an HNSW index after the load (cosine; "
              "Hamming for bit).")
@click.option("--batch-rows", type=click.IntRange(1, None), default=10_000, show_default=True,
              help="Parquet rows in memory at a time.")
@click.option("--maintenance-work-mem", default=None,
              help="maintenance_work_mem for the index build, e.g. 1GB (default: server's).")
@click.option("--parallel-workers", type=click.IntRange(0, 64), default=None,
              help="max_parallel_maintenance_workers for the index build (default: server's).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars on stderr.")
def load(job_dir: str, dsn: str, table: str, create: bool, vector_type: str | None,
         index: str, batch_rows: int, maintenance_work_mem: str | None,
         parallel_workers: int | None, progress: bool) -> None:
    """Load JOB_DIR's embeddings into PostgreSQL + pgvector, exactly once (re-runs resume)."""
    from storage.pgload import load_job, mask_dsn

    res = _with_bars(progress, lambda bars: load_job(
        job_dir, dsn, table, create=create, vector_type=vector_type, index=index,
        batch_rows=batch_rows, maintenance_work_mem=maintenance_work_mem,
        parallel_workers=parallel_workers, progress=bars))
    rate = res.rows_added / res.load_s if res.load_s else 0.0
    click.echo(f"{res.job_id} → {res.table} ({res.vector_type}) at {mask_dsn(dsn)}: "
               f"{res.rows_added} rows added from {res.shards_loaded} shards, "
               f"{res.shards_skipped} shards already loaded; {res.load_s:.1f}s "
               f"({rate:,.0f} rows/s)")
    if res.index == "built":
        click.echo(f"hnsw index built in {res.index_s:.1f}s")
    elif res.index == "exists":
        click.echo("hnsw index already there (new rows were added to it)")


@click.command()
@click.argument("job_dir", type=JOB_DIR)
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New directory for the compacted job (must not exist or be empty).")
@click.option("--rows-per-file", type=click.IntRange(1, None), default=1_000_000,
              show_default=True, help="Rows per output Parquet file.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bar on stderr.")
def compact(job_dir: str, out: str, rows_per_file: int, progress: bool) -> None:
    """Rewrite JOB_DIR's many small shards into few large Parquet files in OUT (atomic)."""
    from storage.compact import compact_job

    res = _with_bars(progress, lambda bars: compact_job(
        job_dir, out, rows_per_file=rows_per_file,
        progress=lambda done, total: bars("shards", done, total)))
    mb = res.bytes_in / 2**20
    click.echo(f"{res.files_in} shards → {res.files_out} files, {res.rows} rows, "
               f"{mb:.1f} MB in {res.seconds:.1f}s ({mb / res.seconds if res.seconds else 0:.1f}"
               f" MB/s)\n{res.out}")
