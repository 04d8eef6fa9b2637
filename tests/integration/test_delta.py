"""Issue 27 with a real redis-server, a real celery worker and the real MiniLM bundle: ids as
keys (a repeated id is rejected naming both lines) and ``--since`` delta jobs (unchanged rows
carried over byte for byte, the change list, clear errors for a mismatched or unfinished base).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from producer.errors import UsageError
from producer.job import submit
from storage.carry import read_changes
from storage.docindex import read_index
from storage.readers import read_table
from tests.conftest import sample_records, write_jsonl
from tests.procs import Worker

pytestmark = pytest.mark.integration


def base_docs(n: int = 120) -> list[dict[str, str]]:
    import re

    docs = []
    for rec in sample_records():
        for k, part in enumerate(re.split(r"(?<=[.!?])\s+|\n+", rec["text"])):
            if len(part.strip()) > 20:
                docs.append({"id": f"{rec['id']}-{k}", "text": part.strip()})
    docs = docs[: n - 2]
    docs += [{"id": r["id"], "text": r["text"]} for r in sample_records()
             if len(r["text"]) > 4000][:2]  # long documents: several chunks, across shards
    return docs


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory, redis_server, minilm_bundle):
    tmp = tmp_path_factory.mktemp("delta")
    redis_server.client().flushall()
    env = {"EMBED_BROKER_URL": redis_server.url(0), "EMBED_CACHE_URL": redis_server.url(1),
           "EMBED_THREADS": "1", "EMBED_HOME": str(tmp / "home")}
    w = Worker(env, tmp / "w.log", name=f"delta-{uuid.uuid4().hex[:6]}").start()
    yield tmp, redis_server, minilm_bundle
    w.stop()


def _job(fleet_env, corpus: Path, job_id: str, **kw):
    tmp, redis, bundle = fleet_env
    redis.client(1).flushdb()  # an empty cache: carried rows come from the base job only
    job = submit(corpus, tmp / "out", model=str(bundle), precision="fp32",
                 broker=redis.url(0), shard_tokens=2000, job_id=job_id, **kw)
    st = job.wait(timeout_s=600)
    assert st.status == "succeeded", st
    return job


@pytest.fixture(scope="module")
def base(fleet_env):
    tmp = fleet_env[0]
    docs = base_docs()
    dup = {"id": docs[3]["id"], "text": "a later record that repeats the id of line four"}
    return docs, _job(fleet_env, write_jsonl(tmp / "v1.jsonl", docs + [dup]), "v1")


def test_repeated_id_is_a_reject_naming_both_lines(base):
    docs, job = base
    rejects = [json.loads(x) for x in (job.path / "rejects.jsonl").read_text().splitlines()]
    dup = [r for r in rejects if "duplicate id" in r["reason"]]
    n = len(docs) + 1
    assert dup == [{"line": n, "doc_id": docs[3]["id"], "reason":
                    f"duplicate id {docs[3]['id']!r}: line {n} repeats the id of line 4, "
                    "which is kept (--on-duplicate-id reject)"}]
    t = read_table(job.path)
    keys = list(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist()))
    assert len(keys) == len(set(keys))  # the duplicate's rows are gone: `load` can key on them
    assert n not in set(t["line"].to_pylist()) and 4 in set(t["line"].to_pylist())
    m = job.dir.reload()
    assert m.totals["duplicate_ids"] == 1 and m.totals["accepted"] == len(docs)
    assert m.result["rejects"] == 1
    idx = read_index(job.path)
    assert set(idx["doc_id"].to_pylist()) == {d["id"] for d in docs}


def _v2(docs: list[dict[str, str]]) -> tuple[list[dict[str, str]], dict[str, set[str]]]:
    v2 = [dict(d) for d in docs]
    v2[10]["text"] = v2[10]["text"] + " An added sentence changes this document."
    v2[20]["text"] = v2[20]["text"].replace(" ", "  ", 1)  # whitespace only
    deleted = {v2[30]["id"], v2[31]["id"]}
    v2 = [d for d in v2 if d["id"] not in deleted]
    added = [{"id": "new-1", "text": "A brand new document about delta indexing."},
             {"id": "new-2", "text": "Another new document, embedded for the first time."}]
    v2 = v2[:5] + [added[0]] + v2[5:] + [added[1]]  # new lines shift the old ones
    return v2, {"changed": {docs[10]["id"], docs[20]["id"]}, "deleted": deleted,
                "added": {"new-1", "new-2"}}


def test_since_carries_unchanged_rows_and_records_the_delta(fleet_env, base):
    docs, job1 = base
    v2, want = _v2(docs)
    job2 = _job(fleet_env, write_jsonl(fleet_env[0] / "v2.jsonl", v2), "v2",
                since=str(job1.path))
    m = job2.dir.reload()
    assert {k: m.delta[k] for k in ("added", "changed", "deleted")} == {
        k: len(v) for k, v in want.items()}
    assert m.delta["unchanged"] == len(v2) - 4 and m.delta["since_job"] == "v1"
    ch = read_changes(job2.path)
    got = {c: set(ch.filter(pc.equal(ch["change"], c))["doc_id"].to_pylist()) for c in want}
    assert got == want
    t1, t2 = read_table(job1.path), read_table(job2.path)
    assert set(t2["doc_id"].to_pylist()) == {d["id"] for d in v2}  # complete: every document
    line_of = {d["id"]: i for i, d in enumerate(v2, 1)}
    assert all(line_of[d] == ln for d, ln in zip(t2["doc_id"].to_pylist(),
                                                 t2["line"].to_pylist()))
    old = {(d, c): (v, s) for d, c, v, s in zip(*(t1[k].to_pylist() for k in (
        "doc_id", "chunk_index", "embedding", "text_sha256")))}
    new = {(d, c): (v, s) for d, c, v, s in zip(*(t2[k].to_pylist() for k in (
        "doc_id", "chunk_index", "embedding", "text_sha256")))}
    unchanged = {k for k in new if k[0] not in want["changed"] | want["added"]}
    assert unchanged and all(new[k] == old[k] for k in unchanged)  # bytes equal
    # embedded again: only the changed and added documents' chunks
    embedded = sum(pq.read_metadata(p).num_rows for p in job2.dir.embeddings_dir.glob("*.parquet")
                   if "carried_from" not in str(pq.read_schema(p).metadata))
    assert embedded == sum(1 for k in new if k[0] in want["changed"] | want["added"])
    # whitespace-only edit: the hash is of the raw text, so it is re-embedded; chunking keeps
    # the text as is, so its vector moves only as far as the model sees the extra space
    ws = docs[20]["id"]
    assert np.allclose(new[(ws, 0)][0], old[(ws, 0)][0], atol=0.05)


def test_since_another_chunking_or_unfinished_base_is_a_clear_error(fleet_env, base, tmp_path):
    _, job1 = base
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "some text"}])
    tmp, redis, bundle = fleet_env
    with pytest.raises(UsageError, match=r"chunking differs: base job v1 has max_tokens=256, "
                                         r"this job max_tokens=64"):
        submit(corpus, tmp / "out", model=str(bundle), broker=redis.url(0), max_tokens=64,
               since=str(job1.path))
    m = json.loads((job1.path / "manifest.json").read_text())
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "manifest.json").write_text(json.dumps({**m, "status": "running",
                                                          "job_id": "unfinished"}))
    with pytest.raises(UsageError, match="job unfinished is running, not finished"):
        submit(corpus, tmp / "out", model=str(bundle), broker=redis.url(0),
               since=str(unfinished))


def test_delta_counts_in_status_summary_and_report(fleet_env, base):
    from click.testing import CliRunner

    from producer.cli import main

    job2 = fleet_env[0] / "out" / "v2"
    if not job2.is_dir():
        pytest.skip("needs test_since_carries_unchanged_rows_and_records_the_delta's job")
    want = "since v1: 2 added, 2 changed, 2 deleted"
    for cmd in (["status", str(job2)], ["report", str(job2)]):
        r = CliRunner().invoke(main, cmd)
        assert r.exit_code == 0 and want in r.output, r.output


# -- producer load of a delta job (real PostgreSQL + pgvector, tests/pgjobs.py) -------------

from tests.integration.test_pgload import dsn, pg  # noqa: E402,F401  (fixtures)


def _delta_jobs(fleet_env, base):
    docs, job1 = base
    job2 = fleet_env[0] / "out" / "v2"
    if not job2.is_dir():
        v2, _ = _v2(docs)
        _job(fleet_env, write_jsonl(fleet_env[0] / "v2.jsonl", v2), "v2", since=str(job1.path))
    return job1.path, job2


def _table_rows(dsn: str, table: str) -> dict[tuple[str, int], tuple]:
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(dsn) as c:
        register_vector(c)
        got = c.execute(f"SELECT doc_id, chunk_index, char_start, char_end, n_tokens, "
                        f"text_sha256, embedding FROM {table}").fetchall()
    vec = [g[6].to_numpy() if hasattr(g[6], "to_numpy") else np.asarray(g[6]) for g in got]
    return {(g[0], g[1]): (*g[2:6], v.astype(np.float32).tobytes()) for g, v in zip(got, vec)}


def _job_rows(job: Path) -> dict[tuple[str, int], tuple]:
    t = read_table(job)
    cols = [t[c].to_pylist() for c in ("doc_id", "chunk_index", "char_start", "char_end",
                                       "n_tokens", "text_sha256")]
    emb = t["embedding"].combine_chunks().values.to_numpy().reshape(t.num_rows, -1)
    return {(d, c): (a, b, n, s, emb[i].astype(np.float32).tobytes())
            for i, (d, c, a, b, n, s) in enumerate(zip(*cols))}


def test_load_applies_the_delta_and_refuses_another_base(fleet_env, base, dsn):
    import psycopg

    from storage.errors import LoadConflict
    from storage.pgload import load_job

    job1, job2 = _delta_jobs(fleet_env, base)
    r1 = load_job(job1, dsn, "items", create=True, index="none")  # v1 repeats an id: it loads
    assert _table_rows(dsn, "items") == _job_rows(job1)
    r2 = load_job(job2, dsn, "items", index="none")
    assert _table_rows(dsn, "items") == _job_rows(job2)  # row for row, vector bytes equal
    assert 0 < r2.rows_added < r1.rows_added
    again = load_job(job2, dsn, "items", index="none")
    assert again.rows_added == 0 and _table_rows(dsn, "items") == _job_rows(job2)

    load_job(job1, dsn, "other", create=True, index="none")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("UPDATE embedfleet_heads SET job_id = 'v0' WHERE table_name = 'public.other'")
    with pytest.raises(LoadConflict, match="holds job v0; job v2 is a delta since job v1"):
        load_job(job2, dsn, "other", index="none")
    load_job(job2, dsn, "fresh", create=True, index="none")  # an empty table: in full
    assert _table_rows(dsn, "fresh") == _job_rows(job2)


def test_loader_killed_mid_delta_then_rerun_exactly_once(fleet_env, base, dsn):
    import os
    import subprocess
    import sys

    import psycopg

    from storage.pgdelta import KILL_ENV
    from storage.pgload import load_job
    from tests.procs import ROOT

    job1, job2 = _delta_jobs(fleet_env, base)
    load_job(job1, dsn, "items", create=True, index="none")
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: "1"}
    p = subprocess.run([sys.executable, "-m", "producer", "load", str(job2), "--dsn", dsn,
                        "--table", "items", "--index", "none", "--no-progress"], cwd=ROOT,
                       env=env, capture_output=True, timeout=300)
    assert p.returncode == -9, p.stdout + p.stderr
    with psycopg.connect(dsn) as c:
        units = c.execute("SELECT count(*) FROM embedfleet_loads WHERE job_id = 'v2'").fetchone()
        head = c.execute("SELECT job_id FROM embedfleet_heads").fetchone()
    assert units[0] >= 1 and head == ("v1",)  # one unit committed, the rest not yet
    mid = _table_rows(dsn, "items")
    assert mid != _job_rows(job1) and mid != _job_rows(job2)
    res = load_job(job2, dsn, "items", index="none")
    assert res.shards_skipped >= 1
    assert _table_rows(dsn, "items") == _job_rows(job2)


def test_dry_run_since_counts_the_unchanged_documents(fleet_env, base, capsys):
    from producer.dryrun import dry_run

    docs, job1 = base
    v2, _ = _v2(docs)
    corpus = write_jsonl(fleet_env[0] / "v2-dry.jsonl", v2)
    got = dry_run(str(corpus), cache_url=None, model=str(fleet_env[2]), shard_tokens=2000,
                  since=str(job1.path))
    assert got["carried"] == len(v2) - 4 and got["accepted"] == len(v2)
    assert f"since     v1: {len(v2) - 4} documents unchanged" in capsys.readouterr().out


def test_private_redis_is_bounded_and_evicts_only_cache_entries(tmp_path, monkeypatch):
    import redis

    from producer.local import LocalRedis
    from storage.cache import EmbeddingCache

    monkeypatch.setenv("EMBED_LOCAL_REDIS_MAXMEMORY", "8mb")
    srv = LocalRedis(tmp_path / "redis")
    srv.start()
    try:
        r = redis.Redis.from_url(srv.broker_url)
        cfg = r.config_get("maxmemory*")
        assert cfg["maxmemory"] == str(8 * 2**20) and cfg["maxmemory-policy"] == "volatile-lru"
        r.rpush("cpu", *[b"task" * 50] * 100)  # broker keys: no TTL
        cache = EmbeddingCache(redis.Redis.from_url(srv.cache_url), 384)
        vecs = np.ones((20_000, 384), np.float32)  # ~22 MB of entries: over the cap
        for i in range(0, 20_000, 1000):
            cache.put_many([(f"k{j}", vecs[j]) for j in range(i, i + 1000)])
        assert cache.errors == 0 and r.llen("cpu") == 100  # no task evicted, no cache error
        assert int(r.info("stats")["evicted_keys"]) > 0
    finally:
        srv.stop()


def test_full_reembed_embeds_everything_and_still_records_the_delta(fleet_env, base):
    docs, job1 = base
    v2, want = _v2(docs)
    job = _job(fleet_env, write_jsonl(fleet_env[0] / "v2-full.jsonl", v2), "v2-full",
               since=str(job1.path), max_tokens=128, full_reembed=True)
    d = job.dir.reload().delta
    assert d["carry"] is False and d["carried_rows"] == 0 and d["deleted"] == 2
    assert d["added"] == 2 and d["changed"] == len(v2) - 2 and d["unchanged"] == 0
    assert not any("carried_from" in str(pq.read_schema(p).metadata)
                   for p in job.dir.embeddings_dir.glob("*.parquet"))
    assert set(read_table(job.path)["doc_id"].to_pylist()) == {x["id"] for x in v2}
