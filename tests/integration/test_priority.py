"""``--priority high`` on a shared fleet (issue 30): a small urgent job submitted while a large
one runs on one worker overtakes it. Real redis-server and celery worker (prefork, one process,
late ack, prefetch 1), the real MiniLM bundle; ``EMBED_FAULTS=sleep=0.3`` makes every shard of
both jobs cost about the same."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from producer.job import submit
from tests.conftest import write_jsonl

pytestmark = pytest.mark.integration
WORDS = ("river stone lamp orchard violet engine harbor ladder quiet summer copper window "
         "garden thunder basket marble").split()


def corpus(path: Path, n: int, salt: int) -> Path:
    """``n`` distinct documents (no cache hit: every shard runs its batch)."""
    return write_jsonl(path, [{"id": f"d{i}", "text": f"item {salt} {i} " + " ".join(
        WORDS[(i * 5 + j + salt) % len(WORDS)] for j in range(10))} for i in range(n)])


def done(job: Path) -> int:
    return len(list((job / "embeddings").glob("part-*.parquet")))


def finished_at(job: Path) -> float:
    return float(json.loads((job / "manifest.json").read_text())["result"]["finished_at"])


def test_high_priority_job_overtakes_a_running_large_job(
        tmp_path: Path, fleet, redis_server, redis_url: str, minilm_bundle: Path) -> None:
    fleet(env={"EMBED_FAULTS": "sleep=0.3"})
    common = dict(model=str(minilm_bundle), precision="fp32", broker=redis_url,
                  shard_tokens=64, stage_procs=1)
    big = submit(corpus(tmp_path / "big.jsonl", 150, 0), tmp_path / "out", job_id="big",
                 **common)
    n_big = len(big.dir.reload().shards)
    deadline = time.monotonic() + 240
    while done(big.path) < 2:
        assert time.monotonic() < deadline, "the large job did not start"
        time.sleep(0.1)
    small = submit(corpus(tmp_path / "small.jsonl", 8, 3), tmp_path / "out", job_id="small",
                   priority="high", **common)
    t_sent = time.time()  # every task of the small job is queued
    st = small.wait(timeout_s=300, stall_s=None)
    assert st.status == "succeeded", st
    t_small = finished_at(small.path)
    between = [p.stat().st_mtime for p in (big.path / "embeddings").glob("part-*.parquet")
               if t_sent < p.stat().st_mtime < t_small]
    # Only the shard the worker was running when the small job's tasks arrived (and, at most,
    # one whose message it had fetched already) finished in between, not the large backlog.
    assert len(between) <= 2, (len(between), n_big, len(small.dir.reload().shards))
    assert done(big.path) < n_big
    assert big.wait(timeout_s=600, stall_s=None).status == "succeeded"
    assert finished_at(small.path) < finished_at(big.path)
    assert json.loads((small.path / "manifest.json").read_text())["priority"] == "high"
