"""A worker cut off from Redis (broker and cache) by a partition, then healed.

Two workers on one job; the second talks to Redis through a relay on 127.0.0.1
(``tests/relay.py``) that stops forwarding bytes without closing anything, as a partition or a
dead NAT entry does. The partition starts while that worker is inside a batch, so the shard
finishes during the partition and its ack cannot reach Redis. After the heal the worker must
consume again by itself: the other worker is frozen (SIGSTOP) and a second job is submitted;
the partitioned worker has to take shards of it within ``RECOVERY_S`` of the heal. Both jobs
must come out exactly once (tests/checker.py), without producer re-sends.

Before worker/transport.py the partitioned worker stayed alive and never fetched again: the
failed ack (``Couldn't ack …, reason: network: TimeoutError``) kept its only prefetch slot.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer.job import Job, submit
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import (
    assert_clean, inflight, make_corpus, poll_finished, wait_until,
)
from tests.integration.test_health import health
from tests.procs import ROOT, RedisServer, Worker
from tests.relay import Relay
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration

RECOVERY_S = 60  # the promise: consuming again within a minute of the heal
SHARD_TOKENS = 300


def _env(visibility_timeout: int) -> dict[str, str]:
    return {"EMBED_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "EMBED_UNACKED_RESTORE_INTERVAL": "1", "EMBED_SOFT_TIME_LIMIT": "30",
            "EMBED_TIME_LIMIT": "40", "EMBED_FAULTS": "sleep=0.4"}


def _submit(corpus: Path, tmp_path: Path, bundle: Path, broker: str, job_id: str) -> Job:
    return submit(corpus, tmp_path / "out", model=str(bundle), precision="fp32", broker=broker,
                  job_id=job_id, shard_tokens=SHARD_TOKENS, max_batch_tokens=128)


def _taken_by(job: Job, w: Worker) -> list[int]:
    """Shards of ``job`` that worker ``w`` started an attempt of (``-n NAME@%h``)."""
    return [s.shard for s in job.dir.manifest.shards
            if any(str(r.get("host", "")).startswith(f"{w.name}@")
                   for r in job.dir.attempts(s.shard))]


def partition_then_heal(tmp_path: Path, fleet, record, seconds: float,
                        visibility_timeout: int) -> None:
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    srv = RedisServer(tmp_path / "redis").start()
    relay = Relay(srv.port)
    try:
        env = _env(visibility_timeout)
        w1 = fleet(broker=srv.url(0), cache=srv.url(1), env=env, name="direct")
        w2 = fleet(broker=relay.url(0), cache=relay.url(1), env=env, name="relayed")
        job = _submit(make_corpus(tmp_path / "a.jsonl", n=24), tmp_path, bundle, srv.url(0),
                      "part-a")
        # Cut the relayed worker off while it is inside a batch: its ack will hit the partition.
        _mid_batch_of(job, w2)
        relay.partition()
        t_cut = time.monotonic()
        time.sleep(min(20.0, seconds / 2))
        cut_off = health(w2)  # a supervisor sees the partitioned worker ...
        assert cut_off.returncode == 1 and cut_off.stdout.startswith("unhealthy:"), cut_off
        assert health(w1).returncode == 0  # ... and only that one
        time.sleep(max(0.0, seconds - (time.monotonic() - t_cut)))
        relay.heal()
        t_heal = time.monotonic()
        st = poll_finished(job)
        assert st.status == "succeeded", st

        # Only the healed worker can take the next job's shards.
        w1.freeze()
        time.sleep(1.5)  # its last BRPOP (1 s) could still take the next message
        job_b = _submit(make_corpus(tmp_path / "b.jsonl", n=12), tmp_path, bundle, srv.url(0),
                        "part-b")
        wait_until(lambda: _taken_by(job_b, w2), RECOVERY_S + 30,
                   "the healed worker to take a shard of the next job", poll=0.2)
        recovered_s = time.monotonic() - t_heal
        assert recovered_s <= RECOVERY_S + 30, recovered_s
        wait_until(lambda: health(w2).returncode == 0, 60, "the healed worker to pass its "
                   "health check", poll=1)
        assert "pong" in ping(w2).stdout  # remote control answers again too
        w1.freeze(False)
        assert poll_finished(job_b).status == "succeeded"
        res_a, res_b = check_job(job.path), check_job(job_b.path)
        assert_clean(res_a, w1, w2)
        assert_clean(res_b, w1, w2)
        assert res_a.ok == res_a.expected and res_b.ok == res_b.expected
        failed_acks = w2.text().count("Couldn't ack")
        record(f"partition of one worker (broker + cache) for {seconds:.0f}s, VT "
               f"{visibility_timeout}s, then heal", res_a,
               f"relayed worker consuming again {recovered_s:.1f}s after the heal (bound "
               f"{RECOVERY_S}s: took {len(_taken_by(job_b, w2))} of "
               f"{len(job_b.dir.manifest.shards)} shards of a 2nd job, other worker frozen); "
               f"{failed_acks} failed ack(s); `worker.health` failed while cut off, passed "
               f"after (and inspect ping); 2nd job {res_b.ok}/{res_b.expected} once",
               recovered_s=round(recovered_s, 1))
    finally:
        relay.close()
        srv.stop()


def ping(w: Worker) -> subprocess.CompletedProcess[str]:
    """``celery -A worker inspect ping`` of one worker, through its own broker URL."""
    return subprocess.run([sys.executable, "-m", "celery", "-A", "worker", "inspect", "ping",
                           "-d", f"{w.name}@{socket.gethostname()}", "-t", "10"], cwd=ROOT,
                          env=w.env, capture_output=True, text=True, timeout=90)


def _mid_batch_of(job: Job, w: Worker) -> None:
    """Wait until one of ``w``'s pool processes is inside a batch."""
    def probe() -> bool:
        kids = set(w.children())
        for s, a in inflight(job):
            recs = job.dir.attempts(s)
            if len(recs) >= a and recs[a - 1].get("pid") in kids:
                return True
        return False
    wait_until(probe, 120, f"{w.name} inside a batch", poll=0.05)


def test_partition_30s_shorter_than_visibility_timeout(tmp_path, fleet, record):
    partition_then_heal(tmp_path, fleet, record, seconds=30, visibility_timeout=60)


@pytest.mark.slow
def test_partition_150s_longer_than_visibility_timeout(tmp_path, fleet, record):
    partition_then_heal(tmp_path, fleet, record, seconds=150, visibility_timeout=20)
