"""Fair share between jobs of equal priority (issue 30): each job has its own queue and a worker
takes from the jobs in turn (worker/fairshare.py). Real redis-server and celery worker (prefork,
one process, late ack, prefetch 1), the hashing bundle; ``EMBED_FAULTS=sleep=…`` makes every
shard of every job cost about the same. Assertions compare the shards' file times (one clock,
one filesystem), not durations, so a busy core slows both jobs alike."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from producer.cancel import cancel_job
from producer.job import Job, submit
from producer.priority import queue_depth
from tests.checker import check_job
from tests.integration.test_priority import corpus  # distinct ten-word documents
from worker.export.hashing import export_hashing_bundle
from worker.fairshare import job_queue, job_queues

pytestmark = pytest.mark.integration


def landed(job: Job) -> list[float]:
    """The mtimes of the job's written shards, oldest first."""
    return sorted(p.stat().st_mtime for p in (job.path / "embeddings").glob("part-*.parquet"))


def wait_until(pred, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return got


@pytest.fixture
def hashing(tmp_path: Path) -> Path:
    return export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)


def _submit(tmp_path: Path, bundle: Path, broker: str, name: str, docs: int, salt: int) -> Job:
    return submit(corpus(tmp_path / f"{name}.jsonl", docs, salt), tmp_path / "out", job_id=name,
                  model=str(bundle), precision="fp32", broker=broker, shard_tokens=64,
                  stage_procs=1)


def test_two_equal_jobs_submitted_together_progress_at_comparable_rates(
        tmp_path: Path, fleet, redis_server, redis_url: str, hashing: Path) -> None:
    a = _submit(tmp_path, hashing, redis_url, "a", 60, 0)
    b = _submit(tmp_path, hashing, redis_url, "b", 60, 7)
    na, nb = len(a.dir.reload().shards), len(b.dir.reload().shards)
    assert na >= 8 and nb >= 8, (na, nb)
    r = redis_server.client()
    # Both fully queued before any worker runs: under FIFO, a would finish before b starts.
    assert job_queues(r, "cpu") == [job_queue("cpu", "a"), job_queue("cpu", "b")]
    assert queue_depth(r, "cpu") == na + nb
    fleet(env={"EMBED_FAULTS": "sleep=0.2"})
    wait_until(lambda: len(landed(a)) == na or len(landed(b)) == nb, 240, "a job to finish")
    first, other = (a, b) if len(landed(a)) == na else (b, a)
    t_first = landed(first)[-1]
    other_then = sum(t <= t_first for t in landed(other))
    # One shard of each in turn: when one job lands its last shard, the other has landed all
    # but about one of its own (FIFO: none).
    assert other_then >= min(na, nb) - 2, (first.path.name, other_then, na, nb)
    for job in (a, b):
        assert wait_until(lambda j=job: j.status().finished and j.status(), 240,
                          "both jobs").status == "succeeded"
        res = check_job(job.path)
        assert res.clean and res.ok == res.expected, res.describe()
    assert queue_depth(r, "cpu") == 0
    # The worker's next registry read (<= 1 s) drops the drained job queues.
    wait_until(lambda: job_queues(r, "cpu") == [], 30, "the registry to forget both jobs")


def test_small_job_submitted_while_a_large_one_runs_is_not_queued_behind_it(
        tmp_path: Path, fleet, redis_server, redis_url: str, hashing: Path) -> None:
    fleet(env={"EMBED_FAULTS": "sleep=0.5"})
    big = _submit(tmp_path, hashing, redis_url, "big", 150, 0)
    n_big = len(big.dir.reload().shards)
    wait_until(lambda: len(landed(big)) >= 2, 120, "the large job to start")
    small = _submit(tmp_path, hashing, redis_url, "small", 25, 3)
    t_sent = time.time()  # every task of the small job is queued
    n_small = len(small.dir.reload().shards)
    st = wait_until(lambda: small.status().finished and small.status(), 240, "the small job")
    assert st.status == "succeeded", st
    t_small = landed(small)[-1]
    between = sum(t_sent < t <= t_small for t in landed(big))
    # Taken in turn: about one large-job shard per small-job shard, plus the one running and
    # those taken before the worker's next registry read (<= 1 s, ~2 shards); FIFO would run
    # the large job's whole backlog first.
    assert between <= n_small + 4, (between, n_small, n_big)
    assert len(landed(big)) < n_big
    res = check_job(small.path)
    assert res.clean and res.ok == res.expected, res.describe()
    cancel_job(big.dir)  # the rest of the large job is skipped on receipt
    r = redis_server.client()
    wait_until(lambda: queue_depth(r, "cpu") == 0 and r.hlen("unacked") == 0, 120,
               "the cancelled job's messages to drain")
