"""``python -m worker.health`` against real workers: a healthy one passes, a stuck one fails.

The partitioned case (the check fails while the worker is cut off from Redis, passes again
after the heal) is in test_partition.py, where the partition is made.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.integration.test_faults import make_corpus, wait_until
from tests.procs import ROOT, Worker

pytestmark = pytest.mark.integration

FAST = {"EMBED_SOFT_TIME_LIMIT": "30", "EMBED_TIME_LIMIT": "40"}


def health(w: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the check as a supervisor would: the worker's environment, its node name."""
    return subprocess.run([sys.executable, "-m", "worker.health", "-n", f"{w.name}@%h", *args],
                          cwd=ROOT, env=w.env, capture_output=True, text=True, timeout=60)


def test_healthy_idle_and_busy_worker_passes(tmp_path, fleet, redis_url):
    from producer.job import submit
    from worker.export.hashing import export_hashing_bundle

    w = fleet(env={**FAST, "EMBED_FAULTS": "sleep=1"})
    wait_until(lambda: health(w).returncode == 0, 30, "the first state file")
    out = health(w)
    assert out.returncode == 0 and out.stdout.startswith("healthy:") and "idle" in out.stdout, out
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    job = submit(make_corpus(tmp_path / "c.jsonl", n=24), tmp_path / "out", model=str(bundle),
                 precision="fp32", broker=redis_url, job_id="h1", shard_tokens=300,
                 max_batch_tokens=128)
    wait_until(lambda: "running" in health(w).stdout, 60, "the check to see a running task",
               poll=0.5)
    busy = health(w)  # a backlog is fine while the worker works through it
    assert busy.returncode == 0, busy
    assert job.dir.manifest.queue and not job.status().finished
    wait_until(lambda: job.status().finished, 240, "the job", poll=0.5)


def test_frozen_worker_fails_then_passes_when_thawed(fleet):
    w = fleet(env=FAST)
    wait_until(lambda: health(w).returncode == 0, 30, "the first state file")
    w.freeze()
    try:
        time.sleep(12)  # > --max-age below: the event loop has written nothing since
        out = health(w, "--max-age", "10")
        assert out.returncode == 1, out
        assert out.stdout.startswith("unhealthy:") and "event loop" in out.stdout, out
    finally:
        w.freeze(False)
    wait_until(lambda: health(w, "--max-age", "10").returncode == 0, 60,
               "the thawed worker to pass again", poll=0.5)


def test_unknown_node_fails_naming_the_file(fleet):
    w = fleet(env=FAST)
    out = subprocess.run([sys.executable, "-m", "worker.health", "-n", "nobody@nowhere"],
                         cwd=ROOT, env=w.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no state file" in out.stdout and "nobody@nowhere" in out.stdout
