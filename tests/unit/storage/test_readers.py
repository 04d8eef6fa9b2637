"""A finished job read back through storage.readers, DuckDB, polars, pandas and pyarrow.dataset:
same schema, same values, and the embedfleet key-value metadata on every shard."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from storage import iter_matrices, ledger, open_job, read_matrix, read_table
from storage.atomic import tmp_name
from storage.hashing import text_sha256
from storage.jobdir import JobDir
from storage.schema import embeddings_schema
from storage.quantize import BITS, calibrate, packed_bits, to_stored
from storage.shards import (dense_spec, embeddings_table, input_table, read_metadata,
                            write_table)

DIM = 12
SIZES = (4, 3, 5)
META = {"fingerprint": "fp-roundtrip", "precision": "fp32", "provider": "CPUExecutionProvider",
        "dim": DIM}


def _inputs(shard: int, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        text = f"shard {shard} chunk {i}: " + "word " * i
        rows.append({"line": 10 * shard + i + 1, "doc_id": f"doc-{shard}-{i // 2}",
                     "chunk_index": i % 2, "chunk_count": 2, "char_start": 100 * i,
                     "char_end": 100 * i + len(text), "n_tokens": 4 + i, "text": text,
                     "text_sha256": text_sha256(text)})
    return input_table(rows)


def finished_job(out: Path, *, job_id: str = "job", fingerprints: tuple[str, ...] | None = None,
                 finalize: bool = True) -> tuple[JobDir, pa.Table]:
    """A staged job with one shard per size, shard 1 with its last chunk rejected."""
    job = JobDir.create(out, job_id)
    job.write_manifest({"job_id": job_id, "staged": True, "submitted_at": time.time(),
                        "shards": [{"shard": n, "chunks": k, "tokens": 6 * k}
                                   for n, k in enumerate(SIZES)]})
    p = ledger.rejects_path(job.root, 0, 0)  # a record staging rejected
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text('{"line": 99, "reason": "empty text"}\n')
    expected = []
    for n, k in enumerate(SIZES):
        keep = np.ones(k, bool)
        if n == 1:
            keep[-1] = False
            job.shard_rejects_path(n).write_text('{"shard": 1, "reason": "inference failed"}\n')
        vectors = np.random.default_rng(n).standard_normal((k, DIM)).astype(np.float32)
        table = embeddings_table(_inputs(n, k), vectors, np.arange(k) % 2 == 1, keep)
        fp = fingerprints[n] if fingerprints else META["fingerprint"]
        write_table(job.embeddings_path(n), table, {**META, "fingerprint": fp,
                                                    "rejected": int((~keep).sum())})
        expected.append(table)
    if finalize:
        assert job.finalize() is True
    return job, pa.concat_tables(expected)


@pytest.fixture
def job(tmp_path: Path) -> tuple[JobDir, pa.Table]:
    return finished_job(tmp_path / "out")


def matrix_of(table: pa.Table) -> np.ndarray:
    return np.array(table["embedding"].to_pylist(), dtype=np.float32)


# -- the job as a whole ----------------------------------------------------------------------
def test_finalize_wrote_success_rejects_and_result(job):
    jd, expected = job
    assert jd.success_path.is_file()
    assert [json.loads(x)["reason"] for x in jd.rejects_path.read_text().splitlines()] == [
        "empty text", "inference failed"]
    m = jd.reload()
    assert m.status == "succeeded"
    assert m.result["embedded_chunks"] == expected.num_rows == sum(SIZES) - 1
    assert m.result["rejects"] == 2


def test_every_shard_carries_the_model_metadata(job):
    jd, _ = job
    for n in range(len(SIZES)):
        meta = read_metadata(jd.embeddings_path(n))
        assert {k: meta[k] for k in ("fingerprint", "precision", "provider", "dim")} == {
            "fingerprint": "fp-roundtrip", "precision": "fp32",
            "provider": "CPUExecutionProvider", "dim": str(DIM)}


# -- storage.readers ---------------------------------------------------------------------------
def test_read_table_returns_schema_and_rows(job):
    jd, expected = job
    t = read_table(jd.root)
    assert t.schema.equals(embeddings_schema(DIM))
    assert t.to_pylist() == expected.to_pylist()
    assert t.column("embedding").type == pa.list_(pa.float32(), DIM)


def test_read_matrix_and_iter_matrices(job):
    jd, expected = job
    ids, matrix = read_matrix(jd.root)
    assert ids == list(zip(expected["doc_id"].to_pylist(), expected["chunk_index"].to_pylist()))
    assert matrix.dtype == np.float32 and matrix.shape == (sum(SIZES) - 1, DIM)
    np.testing.assert_array_equal(matrix, matrix_of(expected))
    parts = list(iter_matrices(jd.root))
    assert [m.shape for _, m in parts] == [(4, DIM), (2, DIM), (5, DIM)]
    np.testing.assert_array_equal(np.concatenate([m for _, m in parts]), matrix)


def test_readers_refuse_an_unfinished_job_unless_asked(tmp_path):
    jd, expected = finished_job(tmp_path, finalize=False)
    for read in (read_table, read_matrix, lambda p: list(iter_matrices(p))):
        with pytest.raises(FileNotFoundError, match="_SUCCESS"):
            read(jd.root)
    assert read_table(jd.root, require_success=False).num_rows == expected.num_rows
    assert open_job(jd.root, require_success=False).root == jd.root


def test_iter_matrices_refuses_mixed_model_variants(tmp_path):
    jd, _ = finished_job(tmp_path, fingerprints=("fp-a", "fp-a", "fp-b"))
    with pytest.raises(ValueError, match="different model variants"):
        read_matrix(jd.root)


def test_readers_read_the_manifest_not_the_directory(job):
    jd, expected = job
    (jd.embeddings_dir / "part-00099.parquet").write_bytes(b"not listed in the manifest")
    assert read_table(jd.root).num_rows == expected.num_rows


# -- without embedfleet ------------------------------------------------------------------------
def test_duckdb_reads_the_glob(job):
    jd, expected = job
    glob = str(jd.embeddings_dir / "*.parquet")
    con = duckdb.connect()
    described = con.sql(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()
    # Parquet has no fixed-size list and DuckDB ignores the stored Arrow schema: the column is
    # a FLOAT[] list whose every row has DIM floats, castable to the FLOAT[DIM] array type.
    assert {r[0]: r[1] for r in described} == {
        "doc_id": "VARCHAR", "chunk_index": "INTEGER", "char_start": "BIGINT",
        "char_end": "BIGINT", "n_tokens": "INTEGER", "text_sha256": "VARCHAR",
        "embedding": "FLOAT[]", "cached": "BOOLEAN", "line": "BIGINT"}
    lengths = con.sql(f"SELECT DISTINCT len(embedding) FROM read_parquet('{glob}')").fetchall()
    assert lengths == [(DIM,)]
    t = con.sql(f"SELECT * REPLACE (embedding::FLOAT[{DIM}] AS embedding) "
                f"FROM read_parquet('{glob}')").to_arrow_table()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    got = sorted(t.to_pylist(), key=lambda r: (r["doc_id"], r["chunk_index"]))
    want = sorted(expected.to_pylist(), key=lambda r: (r["doc_id"], r["chunk_index"]))
    assert got == want
    cached = con.sql(f"SELECT count(*) FROM read_parquet('{glob}') WHERE cached").fetchall()
    assert cached == [(sum(expected["cached"].to_pylist()),)]


def test_polars_reads_the_glob(job):
    jd, expected = job
    df = pl.read_parquet(str(jd.embeddings_dir / "*.parquet"))
    assert df.schema == pl.Schema({
        "doc_id": pl.String, "chunk_index": pl.Int32, "char_start": pl.Int64,
        "char_end": pl.Int64, "n_tokens": pl.Int32, "text_sha256": pl.String,
        "embedding": pl.Array(pl.Float32, DIM), "cached": pl.Boolean, "line": pl.Int64})
    assert df.to_arrow().cast(embeddings_schema(DIM)).to_pylist() == expected.to_pylist()
    np.testing.assert_array_equal(df["embedding"].to_numpy(), matrix_of(expected))


def test_pandas_reads_the_directory(job):
    jd, expected = job
    df = pd.read_parquet(jd.embeddings_dir)
    assert list(df.columns) == embeddings_schema(DIM).names
    assert {c: str(df[c].dtype) for c in ("chunk_index", "char_start", "n_tokens", "cached")} == {
        "chunk_index": "int32", "char_start": "int64", "n_tokens": "int32", "cached": "bool"}
    assert df["doc_id"].tolist() == expected["doc_id"].to_pylist()
    matrix = np.stack(df["embedding"].to_list())
    assert matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, matrix_of(expected))


def test_pyarrow_dataset_reads_the_directory(job):
    jd, expected = job
    dataset = ds.dataset(jd.embeddings_dir, format="parquet")
    assert dataset.schema.equals(embeddings_schema(DIM))
    assert sorted(p.rsplit("/", 1)[1] for p in dataset.files) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    t = dataset.to_table()
    assert t.to_pylist() == expected.to_pylist()
    assert dataset.count_rows(filter=ds.field("cached")) == sum(expected["cached"].to_pylist())


def test_a_killed_writers_temp_file_is_invisible_to_every_reader(job):
    """``.part-….tmp`` is hidden and not ``*.parquet``: globs and dataset discovery skip it."""
    jd, expected = job
    extra = tmp_name(jd.embeddings_path(0))
    pq.write_table(read_table(jd.root), extra)  # a complete Parquet file, only not renamed
    glob = str(jd.embeddings_dir / "*.parquet")
    n = expected.num_rows
    assert read_table(jd.root).num_rows == n
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(n,)]
    assert pl.read_parquet(glob).height == n
    assert len(pd.read_parquet(jd.embeddings_dir)) == n
    assert ds.dataset(jd.embeddings_dir, format="parquet").count_rows() == n


# Compact dense outputs (--dim/--dtype): every reader, per stored dtype.
C_FULL, C_DIM, C_SIZES = 48, 20, (4, 3)  # 20 bits: the third byte of a binary row is padded
TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(),
         "uint8": pa.uint8()}


def compact_job(out: Path, dtype: str, dim: int = C_DIM) -> tuple[JobDir, np.ndarray]:
    """A finished two-shard job whose dense column is ``dtype`` at ``dim``; the stored matrix."""
    job = JobDir.create(out, f"job-{dtype}")
    job.write_manifest({"job_id": job.root.name, "staged": True, "submitted_at": time.time(),
                        "dense": {"dim": dim, "dtype": dtype, "full_dim": C_FULL},
                        "shards": [{"shard": n, "chunks": k, "tokens": 6 * k}
                                   for n, k in enumerate(C_SIZES)]})
    full = np.random.default_rng(1).standard_normal((sum(C_SIZES), C_FULL)).astype(np.float32)
    cal = calibrate(to_stored(full, dim, "float32"))
    stored = to_stored(full, dim, dtype, cal)
    start = 0
    for n, k in enumerate(C_SIZES):
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
    width = (C_DIM + 7) // 8 if dtype in BITS else C_DIM
    want_type = pa.binary(width) if dtype in BITS else pa.list_(TYPES[dtype], C_DIM)
    # storage.readers: the stored dtype, not float32
    _, matrix = read_matrix(jd.root)
    assert matrix.dtype == stored.dtype and matrix.shape == (sum(C_SIZES), width)
    np.testing.assert_array_equal(matrix, stored)
    t = read_table(jd.root)
    assert t.schema.field("embedding").type == want_type
    assert t.schema.metadata[b"embedfleet.dtype"] == dtype.encode()
    assert read_metadata(jd.embeddings_path(0))["dim"] == str(C_DIM)
    assert dense_spec(jd.embeddings_path(1)) == (dtype, C_DIM)
    raw = packed_bits(stored, dtype) if dtype in BITS else stored
    glob = str(jd.embeddings_dir / "*.parquet")
    # pyarrow.dataset
    got = ds.dataset(jd.embeddings_dir, format="parquet").to_table()
    assert got.schema.field("embedding").type == want_type
    # pandas: an ndarray per row, or the packed bytes
    emb = pd.read_parquet(jd.embeddings_dir)["embedding"].to_list()
    # polars: Array(dtype, C_DIM), or Binary
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
                                        C_DIM)
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
