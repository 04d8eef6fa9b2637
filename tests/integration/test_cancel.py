"""``producer cancel`` on a running fleet job, then ``producer resume`` (issue 30). Real
redis-server, a real celery worker, the real MiniLM bundle; ``EMBED_FAULTS=sleep=1`` makes each
inference batch last a second so the cancel lands inside a shard, between two batches."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from producer.priority import queue_depth
from producer.cli import main
from producer.job import Job, submit
from storage.readers import read_table
from tests.checker import check_job
from tests.conftest import write_jsonl

pytestmark = pytest.mark.integration
WORDS = ("river stone lamp orchard violet engine harbor ladder quiet summer copper window "
         "garden thunder basket marble").split()


def corpus(path: Path, n: int) -> Path:
    """``n`` ten-word documents: ~12 tokens each, ~5 chunks per 64-token shard."""
    return write_jsonl(path, [{"id": f"d{i}", "text": " ".join(
        WORDS[(i * 5 + j) % len(WORDS)] for j in range(10))} for i in range(n)])


def wait_for(cond, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (got := cond()):
        assert time.monotonic() < deadline, what
        time.sleep(every)
    return got


def done_shards(job: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((job / "embeddings").glob("part-*.parquet"))}


def running_first_batch(job: Path) -> int | None:
    """A shard whose attempt is in its first of several batches (its in-flight marker)."""
    for p in (job / "_state" / "inflight").glob("*.*"):
        try:
            head, _, body = p.read_bytes().partition(b"\n")
            if int(head) == 0 and len(json.loads(body)) >= 2:
                return int(p.name.split(".")[0])
        except (OSError, ValueError):
            continue
    return None


def test_cancel_stops_the_fleet_and_resume_finishes_exactly_once(
        tmp_path: Path, fleet, redis_server, redis_url: str, minilm_bundle: Path) -> None:
    w = fleet(env={"EMBED_FAULTS": "sleep=1"})
    job = submit(corpus(tmp_path / "c.jsonl", 40), tmp_path / "out", model=str(minilm_bundle),
                 precision="fp32", broker=redis_url, shard_tokens=64, max_batch_tokens=32,
                 job_id="c", stage_procs=1)
    root = job.path
    n = len(job.dir.reload().shards)
    assert n >= 6, n
    wait_for(lambda: len(done_shards(root)) >= 1, 240, "no shard finished")
    running = wait_for(lambda: running_first_batch(root), 120, "no shard in its first batch")

    res = CliRunner().invoke(main, ["cancel", str(root)])
    t_cancel = time.time()
    assert res.exit_code == 0 and "cancelled" in res.output, res.output
    r = redis_server.client()
    wait_for(lambda: queue_depth(r, "cpu") == 0 and r.hlen("unacked") == 0, 120,
             "queued tasks of the cancelled job were not drained", every=0.2)
    wait_for(lambda: "stopped before batch 1" in w.text(), 60, w.text()[-3000:])
    time.sleep(1.5)  # anything that would still start would have by now
    before = done_shards(root)
    assert 1 <= len(before) < n, (len(before), n)
    assert f"part-{running:05d}.parquet" not in before  # stopped between batches, not written
    starts = [a.get("time", 0) for s in range(n) for a in job.dir.attempts(s)]
    assert starts and max(starts) < t_cancel, "a shard started after the cancel returned"
    assert "job cancelled; skipped" in w.text()
    for p in (root / "metrics").glob("part-*.parquet"):  # no batch ran after the cancel
        assert max(pq.read_table(p)["timestamp"].to_pylist()).timestamp() < t_cancel + 1.5

    assert Job(root).status().status == "cancelled"
    assert "[cancelled]" in CliRunner().invoke(main, ["status", str(root)]).output
    assert "cancelled" in CliRunner().invoke(main, ["report", str(root)]).output
    assert json.loads((root / "manifest.json").read_text())["status"] == "cancelled"
    partial = read_table(root, require_success=False)  # the partial output reads
    assert partial.num_rows == sum(pq.read_metadata(root / "embeddings" / f).num_rows
                                   for f in before)
    with pytest.raises(Exception):
        read_table(root)  # without require_success=False a reader refuses a partial job
    chk = check_job(root)
    assert not (chk.duplicated or chk.unexpected) and chk.ok < chk.expected, chk.describe()

    res = CliRunner().invoke(main, ["resume", str(root), "--broker", redis_url, "--wait"])
    assert res.exit_code == 0, res.output
    assert "cancel cleared" in res.output
    assert json.loads((root / "manifest.json").read_text())["status"] == "succeeded"
    assert (root / "_SUCCESS").exists() and not (root / "_state" / "cancel.json").exists()
    chk = check_job(root)
    assert chk.clean and chk.ok == chk.expected, chk.describe()
    after = done_shards(root)
    assert len(after) == n and {k: after[k] for k in before} == before  # kept, not rewritten
    for s in range(n):  # every shard embedded by exactly one attempt
        ok = set(pq.read_table(root / "metrics" / f"part-{s:05d}.parquet")["attempt"]
                 .to_pylist())
        assert len(ok) == 1, (s, ok)
