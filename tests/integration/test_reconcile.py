"""The producer's reconciler re-sends lost shards, never slow ones (issue 24).

Real redis-server, real ``celery -A worker worker`` processes, the real MiniLM bundle. One shard
whose only batch sleeps 30 s (``EMBED_FAULTS=sleep=30``) while the reconcile interval is 10 s:

* held by a live worker (heartbeat every second): nothing is re-sent, although a second pool
  process sits idle and would take a re-sent copy at once (the old rule re-sent it after 10 s
  and the shard ran twice);
* its worker SIGKILLed (pool child included): the heartbeat stops, the shard is re-sent after
  the interval (the message stays unacked until the 20-minute visibility timeout) and a new
  worker finishes it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from producer.job import Job, submit
from tests.conftest import sample_records, write_jsonl

pytestmark = pytest.mark.integration

SLOW = {"EMBED_FAULTS": "sleep=30", "EMBED_HEARTBEAT_S": "1"}
STALL_S = 10.0


def _one_shard_job(tmp_path: Path, bundle: Path, broker: str, job_id: str) -> Job:
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:4])
    job = submit(corpus, tmp_path / "out", model=str(bundle), precision="fp32", broker=broker,
                 job_id=job_id)
    assert len(job.dir.manifest.shards) == 1
    return job


def _count_resends(job: Job) -> list[int]:
    """Wrap ``job.resume`` (what the reconciler calls): the shards it re-sent, per call."""
    sent: list[int] = []
    resume = job.resume

    def counting(**kw: Any) -> int:
        n = resume(**kw)
        sent.append(n)
        return n

    job.resume = counting  # type: ignore[method-assign]
    return sent


def _wait_attempt_started(job: Job, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (job.dir.state_dir / "inflight").is_dir() or not any(
            (job.dir.state_dir / "inflight").iterdir()):
        assert time.monotonic() < deadline, "the shard's batch never started"
        time.sleep(0.2)


def test_a_slow_shard_held_by_a_live_worker_is_not_resent(tmp_path, fleet, redis_url,
                                                          minilm_bundle):
    job = _one_shard_job(tmp_path, minilm_bundle, redis_url, "slow")
    w = fleet(env=SLOW, concurrency=2)  # an idle second process would take a re-sent copy
    sent = _count_resends(job)
    t0 = time.monotonic()
    st = job.wait(poll_s=0.5, stall_s=STALL_S, timeout_s=300)
    assert st.status == "succeeded", st
    assert time.monotonic() - t0 > 3 * STALL_S - 5  # the batch did outlast the interval
    assert sum(sent) == 0, (sent, w.text()[-3000:])
    assert len(job.dir.attempts(0)) == 1  # run once
    time.sleep(2)  # a duplicate would have arrived by now
    log = w.text()
    assert log.count("] received") == 1 and "already done" not in log, log[-3000:]


def test_a_killed_workers_shard_is_still_resent(tmp_path, fleet, redis_url, minilm_bundle):
    job = _one_shard_job(tmp_path, minilm_bundle, redis_url, "killed")
    w1 = fleet(env=SLOW)
    _wait_attempt_started(job)
    os.killpg(w1.proc.pid, signal.SIGKILL)  # main and pool child: nothing runs a finally
    w1.proc.wait(timeout=10)
    w2 = fleet(env={"EMBED_HEARTBEAT_S": "1"})
    sent = _count_resends(job)
    st = job.wait(poll_s=0.5, stall_s=STALL_S, timeout_s=300)
    assert st.status == "succeeded", (st, w2.text()[-3000:])
    assert sum(sent) == 1, sent
    recs = job.dir.attempts(0)
    assert len(recs) == 2 and recs[1]["pid"] in w2.children(), recs
