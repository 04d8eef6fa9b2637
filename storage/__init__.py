"""embedfleet storage: the job directory, atomic Parquet shards, readers and the Redis cache.

The on-disk layout is a public contract (see the README): pandas, polars, DuckDB and pyarrow
read ``OUT/<job_id>/embeddings/*.parquet`` without installing embedfleet. ``load_job`` puts a
job into PostgreSQL + pgvector (the ``pg`` extra), ``compact_job`` rewrites it into few files.
``quantize_queries`` puts query vectors in a ``--dim``/``--dtype`` job's stored form.
"""

from __future__ import annotations

from storage.compact import compact_job
from storage.pgload import load_job
from storage.readers import iter_matrices, open_job, quantize_queries, read_matrix, read_table

__all__ = ["compact_job", "iter_matrices", "load_job", "open_job", "quantize_queries",
           "read_matrix", "read_table"]
