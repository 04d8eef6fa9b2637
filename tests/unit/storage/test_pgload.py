"""The database-free parts of the loader: DSN masking, job inspection, COPY row values."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage.errors import LoadError
from storage.jobdir import JobDir
from storage.pgload import copy_rows, inspect_job, mask_dsn
from tests.pgjobs import make_job


def test_mask_dsn_hides_the_password_in_both_forms():
    assert mask_dsn("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x"
    assert mask_dsn("host=db user=app password='s3 cret' dbname=x") == \
        "host=db user=app password=*** dbname=x"
    assert mask_dsn("postgresql:///x?host=/tmp") == "postgresql:///x?host=/tmp"


def test_inspect_job_reads_footers_and_refuses_mixed_models(tmp_path):
    v = np.eye(8, dtype=np.float32)[np.arange(30) % 8]
    root = make_job(tmp_path / "o", "j", v, shard_rows=10)
    spec = inspect_job(root)
    assert (spec.job_id, spec.rows, len(spec.shards), spec.layout.dim) == ("j", 30, 3, 8)
    assert spec.layout.fingerprint == "fp-test-model" and spec.layout.sparse_vocab is None
    other = make_job(tmp_path / "p", "k", v[:10], shard_rows=10, fingerprint="fp-other")
    JobDir(other).embeddings_path(0).replace(JobDir(root).embeddings_path(1))
    with pytest.raises(LoadError, match="differ in model"):
        inspect_job(root)


def test_inspect_job_needs_a_sparse_size(tmp_path):
    sp = [([1, 5], [0.5, 0.25])] * 4
    v = np.ones((4, 4), np.float32)
    with pytest.raises(LoadError, match="sparsevec size"):
        inspect_job(make_job(tmp_path / "a", "a", v, shard_rows=2, sparse=sp))
    spec = inspect_job(make_job(tmp_path / "b", "b", v, shard_rows=2, sparse=sp,
                                sparse_vocab=100))
    assert spec.layout.sparse_vocab == 100


def test_copy_rows_values_halfvec_and_sparse(tmp_path):
    from pgvector import HalfVector, SparseVector

    v = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    sp = [([2, 7], [0.5, 1.5]), ([], []), ([0], [0.125])]
    root = make_job(tmp_path / "o", "j", v, shard_rows=3, sparse=sp, sparse_vocab=10)
    batch = pq.read_table(JobDir(root).embeddings_path(0)).to_batches()[0]
    rows = list(copy_rows(batch, "vector", 10))
    assert rows[1][:6] == ["doc-0", 1, 10, 19, 6, f"{1:064x}"]
    assert np.array_equal(rows[2][6], v[2])
    assert rows[0][7] == SparseVector({2: 0.5, 7: 1.5}, 10)
    assert rows[1][7].indices() == [] and rows[1][7].dimensions() == 10
    half = list(copy_rows(batch, "halfvec", None))
    assert isinstance(half[0][6], HalfVector) and len(half[0]) == 7
    assert np.array_equal(half[0][6].to_numpy(), v[0].astype(np.float16))


# -- --dtype jobs (storage/pgtable.py DTYPE_TYPES) ---------------------------------------------
def test_dtype_picks_the_column_type_and_int8_is_refused(tmp_path):
    from tests.unit.storage.test_readers import compact_job

    for dtype, vtype in (("float16", None), ("binary", None), ("ubinary", None)):
        spec = inspect_job(compact_job(tmp_path / dtype, dtype)[0].root)
        assert (spec.layout.dtype, spec.layout.dim, spec.layout.vector_type) == (dtype, 20, vtype)
    assert inspect_job(compact_job(tmp_path / "h", "float16")[0].root,
                       vector_type="vector").layout.vector_type == "vector"
    for dtype in ("int8", "uint8"):
        with pytest.raises(LoadError, match=f"--dtype {dtype} vectors cannot be stored by "
                                            "pgvector.*float16 \\(halfvec\\) or binary \\(bit\\)"):
            inspect_job(compact_job(tmp_path / f"i{dtype}", dtype)[0].root)
    with pytest.raises(LoadError, match="--type halfvec cannot hold --dtype binary"):
        inspect_job(compact_job(tmp_path / "b2", "binary")[0].root, vector_type="halfvec")


def test_copy_rows_bits_and_halves(tmp_path):
    from pgvector import Bit, HalfVector

    from storage.quantize import packed_bits
    from tests.unit.storage.test_readers import compact_job

    jd, stored = compact_job(tmp_path / "b", "binary")  # 20 bits: padded last byte
    batch = pq.read_table(jd.embeddings_path(0)).to_batches()[0]
    rows = list(copy_rows(batch, "bit", None, "binary", 20))
    bits = np.unpackbits(packed_bits(stored, "binary"), axis=1)[:, :20].astype(bool)
    assert [r[6] for r in rows] == [Bit(b) for b in bits[:4]]
    assert rows[0][6].to_text() == "".join("1" if x else "0" for x in bits[0])
    jd, stored = compact_job(tmp_path / "h", "float16")
    batch = pq.read_table(jd.embeddings_path(0)).to_batches()[0]
    half = list(copy_rows(batch, "halfvec", None, "float16", 20))
    assert isinstance(half[0][6], HalfVector)
    assert np.array_equal(half[0][6].to_numpy(), stored[0])
