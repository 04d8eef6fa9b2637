"""embedfleet storage: the job directory, atomic Parquet shards, readers and the Redis cache.

The on-disk layout is a public contract (see the README): pandas, polars, DuckDB and pyarrow
read ``OUT/<job_id>/embeddings/*.parquet`` without installing embedfleet.
"""

from __future__ import annotations

from storage.readers import iter_matrices, open_job, read_matrix, read_table

__all__ = ["iter_matrices", "open_job", "read_matrix", "read_table"]
