"""Jobs written with ``--dtype`` (and ``--dim``) read back by storage.readers, DuckDB, polars,
pandas and pyarrow.dataset: natural Arrow types, metadata naming dtype and dim, same values."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from storage import read_matrix, read_table
from storage.jobdir import JobDir
from storage.quantize import BITS, calibrate, packed_bits, to_stored
from storage.shards import dense_spec, embeddings_table, read_metadata, write_table
from tests.unit.test_readers import _inputs

FULL, DIM, SIZES = 48, 20, (4, 3)  # 20 bits: the third byte of a binary row is padded
TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(),
         "uint8": pa.uint8()}


def compact_job(out: Path, dtype: str, dim: int = DIM) -> tuple[JobDir, np.ndarray]:
    """A finished two-shard job whose dense column is ``dtype`` at ``dim``; the stored matrix."""
    job = JobDir.create(out, f"job-{dtype}")
    job.write_manifest({"job_id": job.root.name, "staged": True, "submitted_at": time.time(),
                        "dense": {"dim": dim, "dtype": dtype, "full_dim": FULL},
                        "shards": [{"shard": n, "chunks": k, "tokens": 6 * k}
                                   for n, k in enumerate(SIZES)]})
    full = np.random.default_rng(1).standard_normal((sum(SIZES), FULL)).astype(np.float32)
    cal = calibrate(to_stored(full, dim, "float32"))
    stored = to_stored(full, dim, dtype, cal)
    start = 0
    for n, k in enumerate(SIZES):
        table = embeddings_table(_inputs(n, k), stored[start:start + k], np.zeros(k, bool),
                                 dtype=dtype, dim=dim)
        write_table(job.embeddings_path(n), table, {"fingerprint": "fp", "dim": dim,
                                                    "dtype": dtype})
        start += k
    assert job.finalize()
    return job, stored


@pytest.mark.parametrize("dtype", [*TYPES, *BITS])
def test_every_reader_reads_a_compact_job(tmp_path: Path, dtype: str) -> None:
    jd, stored = compact_job(tmp_path, dtype)
    width = (DIM + 7) // 8 if dtype in BITS else DIM
    want_type = pa.binary(width) if dtype in BITS else pa.list_(TYPES[dtype], DIM)
    # storage.readers: the stored dtype, not float32
    _, matrix = read_matrix(jd.root)
    assert matrix.dtype == stored.dtype and matrix.shape == (sum(SIZES), width)
    np.testing.assert_array_equal(matrix, stored)
    t = read_table(jd.root)
    assert t.schema.field("embedding").type == want_type
    assert t.schema.metadata[b"embedfleet.dtype"] == dtype.encode()
    assert read_metadata(jd.embeddings_path(0))["dim"] == str(DIM)
    assert dense_spec(jd.embeddings_path(1)) == (dtype, DIM)
    raw = packed_bits(stored, dtype) if dtype in BITS else stored
    glob = str(jd.embeddings_dir / "*.parquet")
    # pyarrow.dataset
    got = ds.dataset(jd.embeddings_dir, format="parquet").to_table()
    assert got.schema.field("embedding").type == want_type
    # pandas: an ndarray per row, or the packed bytes
    emb = pd.read_parquet(jd.embeddings_dir)["embedding"].to_list()
    # polars: Array(dtype, DIM), or Binary
    pl_emb = pl.read_parquet(glob)["embedding"]
    # DuckDB: TINYINT[]/UTINYINT[]/FLOAT[] lists, or BLOB
    duck = [r[0] for r in duckdb.sql(
        f"SELECT embedding FROM read_parquet('{glob}', filename=true, file_row_number=true) "
        "ORDER BY filename, file_row_number").fetchall()]
    if dtype in BITS:
        rows = [bytes(r) for r in raw]
        assert emb == rows and pl_emb.to_list() == rows and duck == rows
        assert pl_emb.dtype == pl.Binary
    else:
        np.testing.assert_array_equal(np.stack(emb), stored)
        assert np.stack(emb).dtype == stored.dtype
        assert pl_emb.dtype == pl.Array(getattr(pl, {"float32": "Float32", "float16": "Float16",
                                                     "int8": "Int8", "uint8": "UInt8"}[dtype]),
                                        DIM)
        np.testing.assert_array_equal(pl_emb.to_numpy(), stored)
        np.testing.assert_array_equal(np.array(duck, dtype=stored.dtype), stored)


def test_mixed_dtypes_refused(tmp_path: Path) -> None:
    jd, _ = compact_job(tmp_path, "int8")
    other, _ = compact_job(tmp_path, "uint8")
    other.embeddings_path(1).replace(jd.embeddings_path(1))
    with pytest.raises(ValueError, match="dims/dtypes"):
        read_matrix(jd.root)


@pytest.mark.parametrize(("dtype", "dictionary"), [("float32", False), ("float16", False),
                                                   ("int8", True), ("binary", True)])
def test_float_vectors_are_written_without_a_dictionary(tmp_path: Path, dtype: str,
                                                        dictionary: bool) -> None:
    import pyarrow.parquet as pq

    jd, _ = compact_job(tmp_path, dtype)
    md = pq.read_metadata(jd.embeddings_path(0)).row_group(0)
    cols = {md.column(i).path_in_schema.split(".")[0]: md.column(i).encodings
            for i in range(md.num_columns)}
    assert ("RLE_DICTIONARY" in cols["embedding"]) is dictionary
    assert "RLE_DICTIONARY" in cols["doc_id"]  # the other columns keep theirs


def test_compact_job_keeps_the_dtype(tmp_path: Path) -> None:
    from storage.compact import compact_job as rewrite

    jd, stored = compact_job(tmp_path, "binary")
    out = rewrite(jd.root, tmp_path / "few", rows_per_file=100)
    _, matrix = read_matrix(out.out)
    np.testing.assert_array_equal(matrix, stored)
