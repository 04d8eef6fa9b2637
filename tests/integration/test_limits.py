"""Redis at its memory limits: the broker full (noeviction), the cache full or evicting.

Real redis-servers with a ``maxmemory`` just above what they hold, filled with junk keys:

- broker at maxmemory, ``noeviction``: ``producer submit`` exits 1 with one message naming
  the limit and the command to continue; the shards staged before the refusal are kept; once
  memory is freed, ``producer resume`` finishes the job, every line embedded exactly once.
- cache full, ``noeviction``: every store fails; the job completes, every chunk is a counted
  miss, the worker warns once.
- cache evicting (``allkeys-lru``): a second run of the same corpus after the first run's
  vectors were pushed out completes, hits and misses counted, no warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import Job, submit
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import assert_clean, make_corpus, poll_finished
from tests.procs import RedisServer
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration

ENV = {"EMBED_SOFT_TIME_LIMIT": "30", "EMBED_TIME_LIMIT": "40"}


def fill(srv: RedisServer, margin: int = 200_000, evict: int = 1) -> int:
    """Set maxmemory ``margin`` bytes above what the server holds, then write junk until it
    refuses (noeviction) or has evicted ``evict`` keys; returns the junk keys written."""
    c = srv.client()
    used = int(c.info("memory")["used_memory"])
    c.config_set("maxmemory", used + margin)
    n = 0
    try:
        while n < 20_000:
            c.set(f"junk:{n}", b"x" * 4096)
            n += 1
            if int(c.info("stats")["evicted_keys"]) >= evict:
                break
    except Exception as exc:
        assert "maxmemory" in str(exc), exc
    return n


def free(srv: RedisServer) -> None:
    """What an operator does: delete the junk and give the server room (its allocator may
    keep freed pages counted against maxmemory for a while)."""
    c = srv.client()
    keys = list(c.scan_iter("junk:*"))
    if keys:
        c.delete(*keys)
    c.config_set("maxmemory", int(c.info("memory")["used_memory"]) + 64 * 2**20)


def _hits(job: Job) -> tuple[int, int]:
    met = pq.read_table(job.dir.metrics_dir, columns=["chunks", "cache_hits"])
    return sum(met["chunks"].to_pylist()), sum(met["cache_hits"].to_pylist())


def test_broker_at_maxmemory_then_resume(tmp_path, fleet, record):
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    srv = RedisServer(tmp_path / "broker", extra=["--maxmemory-policy", "noeviction"]).start()
    try:
        url = srv.url(0)
        junk = fill(srv)
        corpus = make_corpus(tmp_path / "c.jsonl", n=24)
        out = CliRunner().invoke(main, [
            "submit", str(corpus), "--out", str(tmp_path / "out"), "--model", str(bundle),
            "--precision", "fp32", "--broker", url, "--job-id", "full", "--shard-tokens", "300"])
        assert out.exit_code == 1, out.output
        msg = out.output.strip().splitlines()[-1]
        assert "is full" in msg and "maxmemory" in msg and "noeviction" in msg, out.output
        assert f"producer resume {tmp_path / 'out' / 'full'}" in msg, msg
        assert "Traceback" not in out.output
        job = Job(tmp_path / "out" / "full", broker=url)
        staged_files = sorted(p.name for p in job.dir.root.glob("input/part-*.parquet"))
        assert staged_files, "the shard staged before the refusal is kept"

        free(srv)
        w = fleet(broker=url, cache=srv.url(1), env=ENV)
        res_cli = CliRunner().invoke(main, ["resume", str(job.path), "--broker", url])
        assert res_cli.exit_code == 0, res_cli.output
        st = poll_finished(job)
        assert st.status == "succeeded", st
        res = check_job(job.path)
        assert_clean(res, w)
        assert res.ok == res.expected
        ids = set(job.read_table()["doc_id"].to_pylist())
        want = {json.loads(x)["id"] for x in corpus.read_text().splitlines()}
        assert ids == want  # every corpus line embedded: nothing half-staged was lost
        for p in staged_files:  # the shards staged before the refusal were not staged again
            assert (job.dir.root / "input" / p).exists()
        record("broker Redis at maxmemory (noeviction) during submit, memory freed, resume",
               res, f"{junk} junk keys filled it; submit exit 1: "
                    f"{msg.split(' is full: ')[-1].split(';')[0]}; {len(staged_files)} "
                    f"shard(s) staged before kept; resume staged and sent the rest "
                    f"({len(job.dir.manifest.shards)} shards), all embedded once")
    finally:
        srv.stop()


@pytest.mark.parametrize("policy", ["noeviction", "allkeys-lru"])
def test_cache_at_maxmemory(tmp_path, fleet, redis_url, record, policy):
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    cache = RedisServer(tmp_path / "cache", extra=["--maxmemory-policy", policy]).start()
    try:
        corpus = make_corpus(tmp_path / "c.jsonl", n=24)
        w = fleet(cache=cache.url(0), env=ENV)
        kw = dict(model=str(bundle), precision="fp32", broker=redis_url, shard_tokens=300)
        if policy == "noeviction":
            junk = fill(cache)
            job = submit(corpus, tmp_path / "out", job_id="cache-full", **kw)
            assert poll_finished(job).status == "succeeded"
            chunks, hits = _hits(job)
            assert hits == 0
            assert w.text().count("embedding cache unavailable") == 1, w.text()[-3000:]
            evidence = (f"{junk} junk keys filled it; every store refused; {chunks} chunks, "
                        f"{chunks - hits} counted misses; 1 warning")
        else:
            first = submit(corpus, tmp_path / "out", job_id="cache-warm", **kw)
            assert poll_finished(first).status == "succeeded"
            cached = cache.client().dbsize()
            # Junk pushes out (LRU) the first run's vectors, and more.
            junk = fill(cache, margin=50_000, evict=20 * cached)
            evicted = int(cache.client().info("stats")["evicted_keys"])
            assert evicted > 0
            job = submit(corpus, tmp_path / "out", job_id="cache-evicting", **kw)
            assert poll_finished(job).status == "succeeded"
            chunks, hits = _hits(job)
            assert hits < chunks  # evicted vectors were misses, recomputed
            assert "embedding cache unavailable" not in w.text()
            evidence = (f"{cached} keys cached by a first run, {evicted} keys evicted by "
                        f"{junk} junk writes; re-run: {hits} hits + {chunks - hits} misses of "
                        f"{chunks}; no warning")
        res = check_job(job.path)
        assert_clean(res, w)
        assert res.ok == res.expected
        record(f"cache Redis at maxmemory ({policy})", res, evidence)
    finally:
        cache.stop()
