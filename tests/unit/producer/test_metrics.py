"""producer/metrics.py without a broker: per-job shard counts and per-worker sums from a job
directory, failed attempts counted once their shard has ended, and the text format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from producer.metrics import Collector, message_job, render
from storage.jobdir import JobDir
from storage.manifest import Manifest, ShardEntry


def _attempt(job: JobDir, shard: int, n: int, host: str) -> None:
    (job.state_dir / "attempts" / f"{shard:05d}.{n}").write_text(json.dumps({"host": host}))


def test_job_and_worker_samples(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path / "out", "j")
    job.write_manifest(Manifest(job_id="j", staged=True, status="running",
                                shards=[ShardEntry(i, 2, 20) for i in range(3)]))
    pq.write_table(pa.table({"batch_index": [-1, 0, 1], "real_tokens": [5, 30, 10],
                             "inference_ms": [0.0, 300.0, 100.0], "hostname": ["b"] * 3,
                             "attempt": [2] * 3}), job.metrics_path(0))
    job.embeddings_path(0).write_bytes(b"x")
    _attempt(job, 0, 1, "a")  # failed, then done by b
    _attempt(job, 0, 2, "b")
    _attempt(job, 1, 1, "a")  # shard 1 pending: not counted yet
    for n in (1, 2, 3):
        _attempt(job, 2, n, "a")
    job.mark_failed(2, "gave up")
    c = Collector("redis://unused", ["cpu"], [str(tmp_path / "out")])
    samples = c._job_samples(c.job_dirs()[0]) + c._worker_samples()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert got[("embedfleet_job_shards", (("job", "j"), ("state", "done")))] == 1
    assert got[("embedfleet_job_shards", (("job", "j"), ("state", "failed")))] == 1
    assert got[("embedfleet_job_shards", (("job", "j"), ("state", "pending")))] == 1
    assert got[("embedfleet_worker_tokens_total", (("worker", "b"),))] == 40
    assert got[("embedfleet_worker_batch_seconds_sum", (("worker", "b"),))] == 0.4
    assert got[("embedfleet_worker_batch_seconds_count", (("worker", "b"),))] == 2
    assert got[("embedfleet_worker_tokens_per_second", (("worker", "b"),))] == 100.0
    assert got[("embedfleet_worker_failed_attempts_total", (("worker", "a"),))] == 4
    assert got[("embedfleet_worker_failed_attempts_total", (("worker", "b"),))] == 0
    text = render(samples)
    assert text.count("# TYPE embedfleet_worker_batch_seconds summary") == 1
    assert 'embedfleet_worker_tokens_total{worker="b"} 40\n' in text


def test_message_job_reads_queued_and_unacked_envelopes() -> None:
    import base64

    body = base64.b64encode(json.dumps([[{"job_id": "j9", "shard": 1}], {}, {}]).encode())
    env = {"body": body.decode(), "properties": {"body_encoding": "base64"}}
    assert message_job(json.dumps(env)) == "j9"
    assert message_job(json.dumps([env, "cpu", "cpu"])) == "j9"
    assert message_job(b"not json") == ""


def test_job_backlog_counts_a_jobs_messages_over_priority_lists(tmp_path, redis_url) -> None:
    from producer.broker import connect, job_backlog, send_shards
    from producer.priority import set_priority

    low, other = JobDir.create(tmp_path, "low"), JobDir.create(tmp_path, "other")
    for jd in (low, other):
        jd.write_manifest(Manifest(job_id=jd.root.name, staged=True, status="running"))
    set_priority(low, "low")
    app = connect(redis_url)
    send_shards(app, low, [0, 1, 2], "cpu")
    send_shards(app, other, [0], "cpu")
    assert job_backlog(redis_url, "cpu", "low") == 3  # in cpu\x06\x166, not in cpu
    assert job_backlog(redis_url, "cpu", "other") == 1
    assert job_backlog(redis_url, "gpu", "low") == 0
    assert job_backlog("amqp://guest@localhost//", "cpu", "low") is None
