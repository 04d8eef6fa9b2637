"""Fault injection against real processes: redis-server, RabbitMQ, `celery -A worker worker`.

Every scenario runs a small job (tens of documents, shards of ~2000 tokens, several shards),
injects one fault at a moment chosen from the job directory's own records (an attempt file
``_state/attempts/NNNNN.<k>`` holds the pid of the process working on it; an in-flight file
``_state/inflight/NNNNN.<k>`` exists while a batch runs), lets the job finish, and classifies
every staged chunk with the Jepsen-style checker in ``tests/checker.py``: lost, duplicated and
unexpected must be zero. The attempt records also prove that the fault actually fired.

Workers get EMBED_VISIBILITY_TIMEOUT=8, EMBED_UNACKED_RESTORE_INTERVAL=1, soft/hard time limits
5/6 s unless a scenario needs otherwise; EMBED_FAULTS failpoints (worker/faults.py) make
batches slow (``sleep=S``) or kill a process on a poison text (``kill_if_text=...``).

A summary table (scenario, fault, chunks expected/ok/lost/duplicated, wall time) is printed at
the end of the module and written to ``benchmarks/results/faults.json`` (tests/fault_table.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from producer.priority import queue_depth
from producer.job import Job, submit
from storage import docindex
from tests.checker import CheckResult, check_job
from tests.conftest import sample_records, write_jsonl
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.procs import ROOT, RedisServer, Worker, rabbitmq_up

pytestmark = pytest.mark.integration

BASE_ENV = {
    "EMBED_VISIBILITY_TIMEOUT": "8",
    "EMBED_UNACKED_RESTORE_INTERVAL": "1",
    "EMBED_SOFT_TIME_LIMIT": "5",
    "EMBED_TIME_LIMIT": "6",
}
SHARD_TOKENS = 2000
WAIT_S = float(os.environ.get("EMBED_FAULTS_WAIT_S", "240"))  # generous: 2 shared cores
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672//"


# -- helpers ---------------------------------------------------------------------------------

def wenv(**kw: Any) -> dict[str, str]:
    """The worker environment: BASE_ENV plus overrides (EMBED_FAULTS=..., limits, ...)."""
    return {**BASE_ENV, **{k: str(v) for k, v in kw.items()}}


def make_corpus(path: Path, n: int = 24, replace: dict[int, dict[str, str]] | None = None
                ) -> Path:
    recs = [{"id": r["id"], "text": r["text"]} for r in sample_records()[:n]]
    for i, rec in (replace or {}).items():
        recs[i] = rec
    return write_jsonl(path, recs)


def wait_until(pred: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def inflight(job: Job) -> list[tuple[int, int]]:
    """(shard, attempt) of every batch in flight right now (or left by a dead attempt)."""
    d = job.dir.state_dir / "inflight"
    out = []
    for p in d.glob("[0-9]*") if d.is_dir() else []:
        shard, _, attempt = p.name.partition(".")
        if shard.isdigit() and attempt.isdigit():
            out.append((int(shard), int(attempt)))
    return sorted(out)


def mid_batch(job: Job, timeout: float = 120, *, shard: int | None = None,
              exclude: set[tuple[int, int]] = frozenset()) -> tuple[int, int, dict[str, Any]]:
    """Wait until an attempt is inside a batch; return (shard, attempt, attempt record)."""
    def probe() -> tuple[int, int, dict[str, Any]] | None:
        for s, a in inflight(job):
            if (s, a) in exclude or (shard is not None and s != shard):
                continue
            recs = job.dir.attempts(s)
            if len(recs) >= a and recs[a - 1].get("pid"):
                return s, a, recs[a - 1]
        return None
    return wait_until(probe, timeout, "a batch in flight")


def attempts(job: Job) -> dict[int, int]:
    return {s.shard: len(job.dir.attempts(s.shard)) for s in job.dir.manifest.shards}


def landed_attempt(job: Job, shard: int) -> int:
    """The attempt number whose output is the final shard (from its metrics rows)."""
    t = pq.read_table(job.dir.metrics_path(shard), columns=["attempt"])
    return int(max(t["attempt"].to_pylist()))


def wait_job(job: Job, timeout: float = WAIT_S, **kw: Any) -> Any:
    """``job.wait``: the producer re-sends shards whose messages the broker lost."""
    return job.wait(poll_s=0.5, timeout_s=timeout, **kw)


def poll_finished(job: Job, timeout: float = WAIT_S) -> Any:
    """Wait for the job to finish from the job directory alone: no producer re-sends, so a
    message the broker or worker dropped shows up as a timeout instead of being masked."""
    return wait_until(lambda: (st := job.status()).finished and st, timeout,
                      "the job to finish without re-sends", poll=0.5)


def batches_of(job: Job, shard: int, max_batch_tokens: int) -> int:
    from worker.model.batching import plan_batches

    t = pq.read_table(job.dir.input_path(shard), columns=["n_tokens"])
    return len(plan_batches(t["n_tokens"].to_pylist(), max_batch_tokens))


def pid_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def logs(*workers: Worker, tail: int = 3000) -> str:
    return "\n".join(f"--- {w.name} ---\n{w.text()[-tail:]}" for w in workers)


def assert_clean(res: CheckResult, *workers: Worker) -> None:
    assert res.clean, res.describe() + "\n" + logs(*workers)


def _submit(corpus: Path, tmp_path: Path, minilm_bundle: Path, broker: str, job_id: str,
            **kw: Any) -> Job:
    kw.setdefault("shard_tokens", SHARD_TOKENS)
    return submit(corpus, tmp_path / "out", model=str(minilm_bundle), precision="fp32",
                  broker=broker, job_id=job_id, **kw)


# A crashed attempt makes the next one run the chunks that were in flight one by one (to find a
# poison chunk), each paying the sleep failpoint: the crash scenarios need longer time limits
# than the 5/6 s default so the recovery attempt is not cut short by the soft limit.
RECOVERY_LIMITS = {"EMBED_SOFT_TIME_LIMIT": 30, "EMBED_TIME_LIMIT": 35,
                   "EMBED_VISIBILITY_TIMEOUT": 40}


# -- 1. pool child SIGKILL ---------------------------------------------------------------------

def test_sigkill_pool_child_mid_batch(tmp_path, fleet, redis_url, minilm_bundle, record):
    job = _submit(make_corpus(tmp_path / "c.jsonl"), tmp_path, minilm_bundle, redis_url, "f1")
    w = fleet(env=wenv(EMBED_FAULTS="sleep=1", **RECOVERY_LIMITS))
    shard, _attempt, info = mid_batch(job)
    assert info["pid"] in w.children(), (info, w.children())
    t_kill = time.time()
    os.kill(info["pid"], signal.SIGKILL)
    st = poll_finished(job)
    assert st.status == "succeeded", st
    recs = job.dir.attempts(shard)
    assert len(recs) >= 2, recs
    assert recs[1]["pid"] != info["pid"] and recs[1]["time"] >= t_kill
    assert landed_attempt(job, shard) >= 2  # the killed attempt never landed
    # Requeued at once (reject_on_worker_lost), not restored by the 40 s visibility timeout; it
    # goes to the back of the queue, so it runs after the shards that were waiting.
    assert recs[1]["time"] - t_kill < 40
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.ok == res.expected
    record("SIGKILL pool child mid-batch (sleep=1)", res,
           f"shard {shard}: {len(recs)} attempts; requeued at once, re-run "
           f"{recs[1]['time'] - t_kill:.1f}s later behind the queue (VT 40s)")


# -- 2. worker main SIGKILL + replacement -------------------------------------------------------

def test_sigkill_worker_main_then_replacement(tmp_path, fleet, redis_url, minilm_bundle,
                                              record):
    job = _submit(make_corpus(tmp_path / "c.jsonl"), tmp_path, minilm_bundle, redis_url, "f2")
    # Visibility timeout 8 s (the point of the test); longer task limits for the recovery run.
    env = wenv(EMBED_FAULTS="sleep=1", EMBED_SOFT_TIME_LIMIT=30, EMBED_TIME_LIMIT=35)
    w1 = fleet(env=env)
    shard, _attempt, info = mid_batch(job)
    t_kill = time.time()
    w1.kill(signal.SIGKILL)
    w1.proc.wait(timeout=10)
    wait_until(lambda: not pid_alive(info["pid"]), 15, "the orphaned pool child to die")
    w2 = fleet(env=env)
    st = poll_finished(job)
    assert st.status == "succeeded", st
    recs = job.dir.attempts(shard)
    assert len(recs) >= 2, recs
    delay = recs[1]["time"] - t_kill
    # Redis keeps the message unacked until the visibility timeout (8 s, counted from receipt,
    # i.e. about when attempt 1 started) has passed.
    assert recs[1]["time"] - recs[0]["time"] >= 7.5, recs
    res = check_job(job.path)
    assert_clean(res, w1, w2)
    assert res.ok == res.expected
    record("SIGKILL worker main, start replacement", res,
           f"shard {shard}: {len(recs)} attempts, redelivered {delay:.1f}s after kill (VT 8s)")


# -- 3. task longer than the visibility timeout -------------------------------------------------

def test_task_outliving_visibility_timeout_runs_twice(tmp_path, fleet, redis_url,
                                                      minilm_bundle, record):
    corpus = make_corpus(tmp_path / "c.jsonl", n=12)
    job = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f3", shard_tokens=10**6,
                  max_batch_tokens=1024)
    assert len(job.dir.manifest.shards) == 1
    nb = batches_of(job, 0, 1024)
    assert nb >= 4, nb  # 4+ batches × 3 s sleep > 8 s visibility timeout
    env = wenv(EMBED_FAULTS="sleep=3", EMBED_SOFT_TIME_LIMIT=60, EMBED_TIME_LIMIT=70)
    w1, w2 = fleet(env=env), fleet(env=env)
    st = poll_finished(job)
    assert st.status == "succeeded", st
    # Let the parallel duplicate finish too, then look at the output.
    wait_until(lambda: len(job.dir.attempts(0)) >= 2, 60, "the redelivered copy to start")
    wait_until(lambda: not inflight(job) and sum(
        w.text().count("succeeded in") for w in (w1, w2)) >= 2, 120,
        "both copies to finish", poll=0.5)
    recs = job.dir.attempts(0)
    assert len(recs) == 2, recs
    assert recs[0]["host"] != recs[1]["host"], recs  # one copy on each worker
    assert recs[1]["time"] - recs[0]["time"] >= 7, recs
    res = check_job(job.path)
    assert_clean(res, w1, w2)
    assert res.ok == res.expected
    assert len(list(job.dir.embeddings_dir.glob("part-*.parquet"))) == 1
    record(f"task > visibility timeout (sleep=3 × {nb} batches), 2 workers", res,
           f"2 attempts on 2 workers, {recs[1]['time'] - recs[0]['time']:.1f}s apart")


# -- 4. warm (SIGTERM) and cold (SIGQUIT) shutdown ----------------------------------------------

@pytest.mark.parametrize("signame", ["SIGTERM", "SIGQUIT"])
def test_shutdown_mid_batch_then_restart(tmp_path, fleet, redis_url, minilm_bundle, record,
                                         signame):
    job = _submit(make_corpus(tmp_path / "c.jsonl"), tmp_path, minilm_bundle, redis_url,
                  f"f4-{signame.lower()}")
    w1 = fleet(env=wenv(EMBED_FAULTS="sleep=1", **RECOVERY_LIMITS))
    shard, attempt, _info = mid_batch(job)
    t_sig = time.time()
    w1.kill(getattr(signal, signame))
    w1.proc.wait(timeout=60)
    stopped = time.time() - t_sig
    done_before_restart = attempts(job)
    w2 = fleet(env=wenv(EMBED_FAULTS="sleep=1", **RECOVERY_LIMITS))
    st = poll_finished(job)
    assert st.status == "succeeded", st
    recs = job.dir.attempts(shard)
    if signame == "SIGTERM":
        # Warm shutdown lets the running task finish: it landed from its first attempt.
        assert landed_attempt(job, shard) == attempt, recs
        assert job.dir.embeddings_path(shard).stat().st_mtime < t_sig + stopped + 0.5
    else:
        assert len(recs) >= 2, recs  # cold: the running task was interrupted and re-run
    res = check_job(job.path)
    assert_clean(res, w1, w2)
    assert res.ok == res.expected
    record(f"{signame} worker mid-batch, restart", res,
           f"shard {shard}: {len(recs)} attempts; worker exited {stopped:.1f}s after signal; "
           f"attempts before restart {sum(done_before_restart.values())}")


# -- 5. Redis restart: without persistence (messages lost) and with AOF --------------------------

@pytest.mark.parametrize("aof", [False, True], ids=["nosave", "appendonly"])
def test_redis_restart_while_tasks_queued(tmp_path, fleet, minilm_bundle, record, aof):
    srv = RedisServer(tmp_path / "broker", appendonly=aof).start()
    try:
        url = srv.url(0)
        corpus = make_corpus(tmp_path / "c.jsonl", n=40)
        job = _submit(corpus, tmp_path, minilm_bundle, url, f"f5-{'aof' if aof else 'nosave'}",
                      shard_tokens=1500)
        n_shards = len(job.dir.manifest.shards)
        assert n_shards >= 5
        queue = job.dir.manifest.queue
        w = fleet(broker=url, env=wenv(EMBED_FAULTS="sleep=0.5"))
        mid_batch(job)
        # Frozen, the worker cannot fetch (or restore) a task between the count and the
        # shutdown: the count is then exactly what the broker holds when it goes down. A fetch
        # already on the wire lands within the pause. (CI once saw 5 → 4 without the freeze.)
        w.freeze()
        time.sleep(0.3)
        before = queue_depth(srv.client(), queue)
        assert before >= 3, before
        srv.client().shutdown(nosave=True)
        srv.proc.wait(timeout=15)
        srv.proc = None
        srv.start()  # same port, same dir
        after = queue_depth(srv.client(), queue)
        w.freeze(False)
        mutex_ttl = srv.client().ttl("unacked_mutex")  # > 0: a restore scan was cut short
        if aof:
            assert after == before, (before, after)
        else:
            assert after == 0, after  # the queued messages are gone
        pending = sum(s.state == "pending" for s in job.dir.shard_states())
        # Without persistence the producer has to notice the loss and re-send; with AOF the
        # broker alone must cope (no re-sends).
        st = poll_finished(job) if aof else wait_job(job)
        assert st.status == "succeeded", f"{st}\n{logs(w)}"
        res = check_job(job.path)
        assert_clean(res, w)
        assert res.ok == res.expected
        record(f"Redis SHUTDOWN NOSAVE + restart ({'appendonly' if aof else 'no persistence'})",
               res, f"queued {before} → {after} after restart, {pending} shards pending; "
                    f"attempts {sum(attempts(job).values())} for {n_shards} shards"
                    + (f"; restore mutex persisted (ttl {mutex_ttl}s)" if mutex_ttl > 0 else ""))
    finally:
        srv.stop()


def test_redis_restart_then_resume(tmp_path, fleet, minilm_bundle, record):
    """Same loss as above, recovered by an explicit ``job.resume()`` (``producer resume``)."""
    srv = RedisServer(tmp_path / "broker").start()
    try:
        url = srv.url(0)
        job = _submit(make_corpus(tmp_path / "c.jsonl", n=40), tmp_path, minilm_bundle, url,
                      "f5-resume", shard_tokens=1500)
        w = fleet(broker=url, env=wenv(EMBED_FAULTS="sleep=0.5"))
        mid_batch(job)
        srv.client().shutdown(nosave=True)
        srv.proc.wait(timeout=15)
        srv.proc = None
        srv.start()
        assert queue_depth(srv.client(), job.dir.manifest.queue) == 0
        resent = job.resume()
        assert resent >= 3, resent
        st = poll_finished(job)
        assert st.status == "succeeded", st
        res = check_job(job.path)
        assert_clean(res, w)
        record("Redis restart (no persistence), job.resume()", res, f"re-sent {resent} shards")
    finally:
        srv.stop()


# -- 6. Redis client kill and pause --------------------------------------------------------------

def test_redis_client_kill_and_pause(tmp_path, fleet, minilm_bundle, record):
    srv = RedisServer(tmp_path / "broker").start()
    try:
        url = srv.url(0)
        job = _submit(make_corpus(tmp_path / "c.jsonl", n=40), tmp_path, minilm_bundle, url,
                      "f6", shard_tokens=1500)
        w = fleet(broker=url, env=wenv(EMBED_FAULTS="sleep=0.5"))
        s1, a1, _ = mid_batch(job)
        killed = srv.client().client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        mid_batch(job, exclude={(s1, a1)})
        t_pause = time.time()
        srv.client().execute_command("CLIENT", "PAUSE", "3000")
        st = poll_finished(job)
        assert st.status == "succeeded", st
        # Work continued after the pause: some shard landed later than the pause ended.
        last = max(job.dir.embeddings_path(s.shard).stat().st_mtime
                   for s in job.dir.manifest.shards)
        assert last > t_pause + 3
        res = check_job(job.path)
        assert_clean(res, w)
        assert res.ok == res.expected
        record("Redis CLIENT KILL TYPE normal + CLIENT PAUSE 3000", res,
               f"killed {killed} connections; attempts {sum(attempts(job).values())} "
               f"for {len(job.dir.manifest.shards)} shards")
    finally:
        srv.stop()


# -- 7. poison chunk ---------------------------------------------------------------------------

POISON = {"id": "poison-doc", "text": "POISON this chunk kills the process that embeds it."}


def test_poison_chunk_is_quarantined(tmp_path, fleet, redis_url, minilm_bundle, record):
    from click.testing import CliRunner

    from producer.cli import main

    corpus = make_corpus(tmp_path / "c.jsonl", replace={5: POISON})
    job = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f7")
    w = fleet(env=wenv(EMBED_FAULTS="kill_if_text=POISON"))
    st = poll_finished(job)  # no producer re-sends: the worker side alone copes
    assert st.status == "succeeded", st
    shard = next(s.shard for s in job.dir.manifest.shards
                 if "poison-doc" in pq.read_table(job.dir.input_path(s.shard))[
                     "doc_id"].to_pylist())
    recs = job.dir.attempts(shard)
    assert len(recs) == 3, recs  # two crashes, then the quarantining attempt
    rejects = [json.loads(x) for x in job.dir.rejects_path.read_text().splitlines()]
    assert [(r["doc_id"], r["chunk_index"]) for r in rejects] == [("poison-doc", 0)]
    assert "worker process died" in rejects[0]["reason"]
    assert rejects[0]["line"] == 6
    out = CliRunner().invoke(main, ["status", str(job.path)])
    assert out.exit_code == 0, out.output
    assert "[succeeded]" in out.output and re.search(r"rejects\s+1\b", out.output), out.output
    js = json.loads(CliRunner().invoke(main, ["status", "--json", str(job.path)]).output)
    assert [(r["doc_id"], r["chunk_index"], r["line"]) for r in js["reject_examples"]] == [
        ("poison-doc", 0, 6)], js["reject_examples"]
    assert "quarantined" in js["reject_examples"][0]["reason"]
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.rejected == 1 and res.ok == res.expected - 1
    record("poison chunk (kill_if_text) SIGKILLs its process", res,
           f"shard {shard}: {len(recs)} attempts, quarantined as reject")


def test_poison_chunk_with_one_attempt_fails_the_shard(tmp_path, fleet, redis_url,
                                                       minilm_bundle, record):
    from click.testing import CliRunner

    from producer.cli import main

    corpus = make_corpus(tmp_path / "c.jsonl", replace={5: POISON})
    job = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f7-once", max_attempts=1)
    w = fleet(env=wenv(EMBED_FAULTS="kill_if_text=POISON"))
    st = poll_finished(job)
    assert st.status == "failed", st
    assert not job.dir.success_path.exists()
    assert len(st.failed_shards) == 1, st.failed_shards
    shard, reason = st.failed_shards[0]["shard"], st.failed_shards[0]["reason"]
    assert "poison-doc" in reason and "line 6" in reason, reason
    out = CliRunner().invoke(main, ["status", str(job.path)])
    assert "[failed]" in out.output and f"failed shard {shard}:" in out.output, out.output
    assert "poison-doc" in out.output
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.failed == job.dir.expected_chunks(shard)
    assert res.ok == res.expected - res.failed  # every other shard landed
    record("poison chunk, max_attempts=1", res, f"shard {shard} failed: {reason[:60]}…")


# -- 7b. hard time limit -------------------------------------------------------------------------

def test_hard_time_limit_requeues_and_gives_up(tmp_path, fleet, redis_url, minilm_bundle,
                                                record):
    """A shard killed by the hard time limit is requeued (not acked away) until the attempt cap."""
    job = _submit(make_corpus(tmp_path / "c.jsonl", n=12), tmp_path, minilm_bundle, redis_url,
                  "f7-hard", shard_tokens=10**6, max_batch_tokens=1024)
    assert batches_of(job, 0, 1024) >= 3
    # No soft limit (0 = off: like a batch stuck in native code that never sees the soft-limit
    # exception); 2 s per batch × 3+ batches passes the 3 s hard limit on every attempt.
    w = fleet(env=wenv(EMBED_FAULTS="sleep=2", EMBED_SOFT_TIME_LIMIT=0, EMBED_TIME_LIMIT=3))
    st = poll_finished(job)
    assert st.status == "failed", st
    recs = job.dir.attempts(0)
    assert len(recs) == 4, recs  # 3 killed attempts, then the one that gives up
    assert "gave up after 3 attempts" in st.failed_shards[0]["reason"], st.failed_shards
    assert w.text().count("Hard time limit (3s) exceeded") >= 3
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.failed + res.rejected == res.expected
    record("hard time limit (3 s) on every attempt", res,
           f"{len(recs)} attempts without producer re-sends, then shard failed")


def test_soft_time_limit_every_attempt_fails_cleanly(tmp_path, fleet, redis_url,
                                                     minilm_bundle, record):
    """A shard too slow for the soft limit: retried, then failed with that reason. The
    interrupted attempts are not mistaken for crashes: no chunk is blamed or quarantined."""
    job = _submit(make_corpus(tmp_path / "c.jsonl", n=12), tmp_path, minilm_bundle, redis_url,
                  "f7-soft", shard_tokens=10**6, max_batch_tokens=1024)
    assert batches_of(job, 0, 1024) >= 3
    w = fleet(env=wenv(EMBED_FAULTS="sleep=2", EMBED_SOFT_TIME_LIMIT=3, EMBED_TIME_LIMIT=6))
    st = poll_finished(job)
    assert st.status == "failed", st
    recs = job.dir.attempts(0)
    assert len(recs) == 3, recs
    reason = st.failed_shards[0]["reason"]
    assert "soft time limit" in reason and "died" not in reason, reason
    assert not inflight(job)  # interrupted attempts cleaned up after themselves
    assert not job.dir.rejects_path.read_text().strip()
    assert w.text().count("Soft time limit (3s) exceeded") == 3
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.failed == res.expected
    record("soft time limit (3 s) on every attempt", res,
           f"{len(recs)} attempts, shard failed: {reason[:50]}…; 0 chunks blamed")


def test_soft_time_limit_inside_inference_is_not_a_bad_chunk():
    """The session wraps every exception in InferenceError; a soft time limit raised inside
    ``model.run`` must propagate, not split the batch and reject its chunks as bad input."""
    from billiard.exceptions import SoftTimeLimitExceeded

    from worker.model.batching import pad_rows
    from worker.errors import InferenceError
    from worker.pipeline import _run_split

    class SlowModel:
        pad_id = 0

        def run(self, batch: Any) -> Any:
            try:
                raise SoftTimeLimitExceeded()
            except Exception as exc:  # what worker.model.session.Model.run does
                raise InferenceError(f"{type(exc).__name__}: {exc}") from exc

    batch = pad_rows([[101, 7, 102], [101, 8, 9, 102]], [0, 1], 0)
    with pytest.raises(SoftTimeLimitExceeded):
        list(_run_split(SlowModel(), batch, ["a", "b"], {}))


# -- 8. cache Redis down mid-run ---------------------------------------------------------------

def test_cache_redis_stopped_mid_run(tmp_path, fleet, redis_url, minilm_bundle, record):
    cache = RedisServer(tmp_path / "cache").start()
    try:
        corpus = make_corpus(tmp_path / "c.jsonl", n=30)
        job = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f8")
        w = fleet(cache=cache.url(0), env=wenv(EMBED_FAULTS="sleep=0.5"))
        wait_until(lambda: any(job.dir.embeddings_path(s.shard).exists()
                               for s in job.dir.manifest.shards), 120, "a first shard")
        stored = cache.client().dbsize()
        assert stored > 0  # the cache was in use before it went away
        cache.stop()
        st = poll_finished(job)
        assert st.status == "succeeded", st
        res = check_job(job.path)
        assert_clean(res, w)
        assert res.ok == res.expected
        t = job.read_table()
        assert not any(t["cached"].to_pylist())
        assert "embedding cache unavailable" in w.text()
        # Correct, not just complete: equal to a direct session on the staged texts.
        from worker.model.session import load_model

        texts: dict[tuple[str, int], str] = {}
        for s in job.dir.manifest.shards:
            it = pq.read_table(job.dir.input_path(s.shard))
            texts.update(zip(zip(it["doc_id"].to_pylist(), it["chunk_index"].to_pylist()),
                             it["text"].to_pylist()))
        keys = list(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist()))
        got = np.asarray(t["embedding"].to_pylist(), dtype=np.float32)
        ref = load_model(minilm_bundle, device="cpu", precision="fp32").embed(
            [texts[k] for k in keys])
        cos = (got * ref).sum(axis=1)
        assert cos.min() >= 0.9999, cos.min()
        record("cache Redis (separate) stopped mid-run", res,
               f"{stored} keys cached before stop; 0 cached rows; min cos vs direct "
               f"{cos.min():.5f}")
    finally:
        cache.stop()


# -- 9. re-running a finished job ----------------------------------------------------------------

def test_rerun_finished_job_recomputes_nothing(tmp_path, fleet, redis_url, minilm_bundle,
                                               record):
    corpus = make_corpus(tmp_path / "c.jsonl")
    w = fleet(env=wenv())
    job = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f9")
    assert poll_finished(job).status == "succeeded"
    manifest = job.dir.manifest_path.read_bytes()
    mtimes = {p.name: p.stat().st_mtime_ns for p in job.dir.embeddings_dir.iterdir()}
    assert job.resume() == 0
    assert job.dir.manifest_path.read_bytes() == manifest
    job2 = _submit(corpus, tmp_path, minilm_bundle, redis_url, "f9-again")
    assert poll_finished(job2).status == "succeeded"
    assert {p.name: p.stat().st_mtime_ns for p in job.dir.embeddings_dir.iterdir()} == mtimes
    t2 = job2.read_table()
    assert all(t2["cached"].to_pylist())
    met = pq.read_table(job2.dir.metrics_dir).to_pandas()
    assert met["inference_ms"].sum() == 0
    assert met["cache_hits"].sum() == met["chunks"].sum() == t2.num_rows
    res = check_job(job2.path)
    assert_clean(res, w)
    assert res.ok == res.expected == check_job(job.path).ok
    record("re-run: resume() of finished job + same corpus as new job", res,
           "resume re-sent 0; new job 100% cache hits, inference_ms 0")


# -- 10. hostile corpus --------------------------------------------------------------------------

HUGE = 65 * 2**20


def _hostile_corpus(path: Path) -> dict[str, str | None]:
    """Write the corpus; return {expected doc id or label: reject reason fragment or None}."""
    lines: list[tuple[str, bytes, str | None]] = [
        ("ok-1", json.dumps({"id": "ok-1", "text": sample_records()[0]["text"]}).encode(), None),
        ("huge", b"", "over the cap"),  # written below in pieces: 65 MiB of text
        ("deep", b'{"id": "deep", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
         "nesting too deep"),
        ("surrogate-text", b'{"id": "surrogate-text", "text": "abc \\ud800 def"}',
         "lone surrogates"),
        ("surrogate-id", b'{"id": "\\udc00", "text": "text with a bad id"}', "lone surrogates"),
        ("nan-text", b'{"id": "nan-text", "text": NaN}', "not a string"),
        ("nan-other", b'{"id": "nan-other", "text": "a fine text", "score": NaN}', None),
        ("big-int", b'{"id": ' + b"7" * 10_000 + b', "text": "x"}', "integer too large"),
        ("garbage", bytes(b for b in range(256) if b not in (10, 13)) + b"\xff\xfe\x00",
         "invalid UTF-8"),
        ("../../etc/passwd", b'{"id": "../../etc/passwd", "text": "a path-like id"}', None),
        ("/etc/shadow", b'{"id": "/etc/shadow", "text": "an absolute path id"}', None),
        ("dup", b'{"id": "dup", "text": "the first record with this id"}', None),
        ("dup", b'{"id": "dup", "text": "the second record with this id"}',
         "repeats the id of line"),  # ids are keys (issue 27): staged, then rejected
        ("array", b"[1, 2, 3]", "not a JSON object"),
        ("truncated", b'{"id": "truncated", "text": "no end', "malformed JSON"),
        ("empty", b'{"id": "empty", "text": "   "}', "empty"),
    ]
    with open(path, "wb") as f:
        for k, (label, data, _) in enumerate(lines):
            if label == "huge":
                f.write(b'{"id": "huge", "text": "')
                for _ in range(HUGE // 2**20):
                    f.write(b"a" * 2**20)
                data = b'"}'
            f.write(data + b"\n")
            if k == 3:
                f.write(b"   \n\n")  # blank lines: not records, but they count in line numbers
    return lines  # type: ignore[return-value]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_corpus(tmp_path, fleet, redis_url, minilm_bundle, record):
    corpus = tmp_path / "hostile.jsonl"
    lines = _hostile_corpus(corpus)
    w = fleet(env=wenv())
    before = _listing(tmp_path)
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from producer.job import submit
        job = submit({str(corpus)!r}, {str(tmp_path / "out")!r}, model={str(minilm_bundle)!r},
                     precision="fp32", broker={redis_url!r}, job_id="f10",
                     shard_tokens={SHARD_TOKENS})
        # VmHWM: this process's own peak (ru_maxrss would include the forking parent's).
        hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
        print(json.dumps({{"maxrss_kb": hwm, "job": str(job.path)}}))
    """)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300, check=False,
                       env={**os.environ, "EMBED_HOME": str(tmp_path / "home")})
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    rss_mb = info["maxrss_kb"] / 1024
    submit_s = time.monotonic() - t0
    assert rss_mb < 600, rss_mb
    job = Job(info["job"], broker=redis_url)
    st = poll_finished(job)
    assert st.status == "succeeded", st

    # Every non-blank line is accounted for: accepted (staged) or rejected, never both.
    nonblank = [i + 1 for i, x in enumerate(corpus.read_bytes().split(b"\n")) if x.strip()]
    totals = job.dir.manifest.totals
    assert totals["accepted"] + totals["rejected"] == len(nonblank) == len(lines)
    rejects = {r["line"]: r for r in map(json.loads, job.dir.rejects_path.read_text(
        encoding="utf-8").splitlines())}
    staged_lines: dict[int, str] = {}
    excluded = docindex.excluded_lines(job.dir.root)  # a repeated id: staged, then rejected
    for s in job.dir.manifest.shards:
        t = pq.read_table(job.dir.input_path(s.shard), columns=["line", "doc_id"])
        staged_lines.update((ln, d) for ln, d in zip(t["line"].to_pylist(),
                                                     t["doc_id"].to_pylist())
                            if ln not in excluded)
    assert set(rejects) | set(staged_lines) == set(nonblank)
    assert not set(rejects) & set(staged_lines)
    for line_no, (label, _, reason) in zip(nonblank, lines):
        if reason is None:
            assert staged_lines.get(line_no) == label, (line_no, label)
        else:
            assert reason in rejects[line_no]["reason"], (label, rejects[line_no])
    assert totals["duplicate_ids"] == 1 and totals["duplicate_examples"] == ["dup"]
    ids = [d for d, _ in zip(*job.read_table().select(["doc_id", "chunk_index"]).to_pydict(
        ).values())]
    assert ids.count("dup") == 1 and "../../etc/passwd" in ids

    # Nothing was written outside the job directory.
    new = {p for p in _listing(tmp_path) - before if not p.startswith("out/f10")}
    assert new <= {"out"}, sorted(new)
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc").exists()
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.ok == res.expected and res.ingest_rejects == totals["rejected"]
    record("hostile corpus (65 MiB line, 100k nesting, surrogates, NaN, 10k digits, "
           "garbage, path ids, dup ids)", res,
           f"{totals['accepted']} accepted + {totals['rejected']} rejected = {len(nonblank)} "
           f"lines; producer peak RSS {rss_mb:.0f} MB; submit {submit_s:.1f}s",
           producer_maxrss_mb=round(rss_mb, 1))


# -- 11. RabbitMQ -------------------------------------------------------------------------------

rabbitmq = pytest.mark.skipif(not rabbitmq_up(), reason="RabbitMQ not running on :5672")


def _close_rabbit_connections(w: Worker) -> int:
    """Close the broker connections of one worker (main + children) via rabbitmqctl.

    Only this worker's connections: other test runs may share the broker, so no
    ``close_all_connections``. Matching is by the client's local TCP port.
    """
    import psutil

    ports = set()
    for pid in [w.proc.pid, *w.children()]:
        try:
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == 5672:
                    ports.add(c.laddr.port)
        except psutil.NoSuchProcess:
            continue
    out = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    closed = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in ports:
            r = subprocess.run(["rabbitmqctl", "-q", "close_connection", parts[0], "test"],
                               capture_output=True, text=True, timeout=60, check=False)
            closed += r.returncode == 0
    return closed


@rabbitmq
def test_rabbitmq_sigkill_worker_main_with_second_worker(tmp_path, fleet, redis_server,
                                                         minilm_bundle, record):
    queue = f"cpu-{uuid.uuid4().hex[:8]}"
    env = wenv(EMBED_FAULTS="sleep=1", EMBED_CPU_QUEUE=queue, **RECOVERY_LIMITS)
    job = _submit(make_corpus(tmp_path / "c.jsonl"), tmp_path, minilm_bundle, AMQP_URL, "f11a",
                  cpu_queue=queue)
    workers = [fleet(queue=queue, broker=AMQP_URL, cache=redis_server.url(1), env=env)
               for _ in range(2)]
    shard, _attempt, info = mid_batch(job)
    victim = next(w for w in workers if info["pid"] in w.children())
    t_kill = time.time()
    victim.kill(signal.SIGKILL)
    st = poll_finished(job)
    assert st.status == "succeeded", st
    recs = job.dir.attempts(shard)
    assert len(recs) >= 2, recs
    delay = recs[1]["time"] - t_kill
    # RabbitMQ requeues on connection close (no visibility timeout): the survivor takes it as
    # soon as its own current shard is acked (prefetch 1).
    assert delay < 30, delay
    res = check_job(job.path)
    assert_clean(res, *workers)
    assert res.ok == res.expected
    record("RabbitMQ: SIGKILL worker main, 2nd worker up", res,
           f"shard {shard}: {len(recs)} attempts, redelivered {delay:.1f}s after kill")


@rabbitmq
def test_rabbitmq_connection_closed_mid_task(tmp_path, fleet, redis_server, minilm_bundle,
                                             record):
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not installed")
    queue = f"cpu-{uuid.uuid4().hex[:8]}"
    env = wenv(EMBED_FAULTS="sleep=4", EMBED_CPU_QUEUE=queue, EMBED_SOFT_TIME_LIMIT=30,
               EMBED_TIME_LIMIT=40)
    job = _submit(make_corpus(tmp_path / "c.jsonl", n=12), tmp_path, minilm_bundle, AMQP_URL,
                  "f11b", cpu_queue=queue, max_batch_tokens=2048)
    w = fleet(queue=queue, broker=AMQP_URL, cache=redis_server.url(1), env=env)
    shard, _attempt, _info = mid_batch(job)
    closed = _close_rabbit_connections(w)
    assert closed >= 1
    st = poll_finished(job)
    assert st.status == "succeeded", st
    recs = job.dir.attempts(shard)
    # worker_cancel_long_running_tasks_on_connection_loss: the running copy was terminated
    # and the redelivered message ran once more; the output still has each chunk once.
    assert len(recs) >= 2, recs + [w.text()[-3000:]]
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.ok == res.expected
    record("RabbitMQ: close the worker's connections mid-task", res,
           f"closed {closed} connections; shard {shard}: {len(recs)} attempts")
