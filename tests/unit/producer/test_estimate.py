"""The time estimate (producer/estimate.py): the arithmetic, and the rate read from earlier jobs'
metrics shards and attempt files, or from the CPU probe's stored figures."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from producer.estimate import eta_s, measured_rate, probe_rate, wall_estimate
from producer.progress import JobStatus, status_lines


def test_wall_estimate_rounds_whole_shards_and_skips_cached_tokens() -> None:
    assert wall_estimate(40_000, 0, 4, 1, 1000.0) == 40.0
    assert wall_estimate(40_000, 0, 4, 2, 1000.0) == 20.0
    assert wall_estimate(40_000, 0, 4, 3, 1000.0) == 20.0  # 2 rounds: one process idles
    assert wall_estimate(40_000, 30_000, 4, 4, 1000.0) == 2.5
    assert wall_estimate(0, 0, 0, 4, 1000.0) == 0.0


def _done_shard(job: Path, shard: int, tokens: int, start: float, wall: float,
                queue: str = "cpu") -> None:
    for d in ("metrics", "embeddings", "_state/attempts"):
        (job / d).mkdir(parents=True, exist_ok=True)
    name = f"part-{shard:05d}.parquet"
    pq.write_table(pa.table({"batch_index": [-1, 0], "real_tokens": [999, tokens],
                             "attempt": [2, 2], "queue": [queue] * 2}), job / "metrics" / name)
    (job / "_state" / "attempts" / f"{shard:05d}.2").write_text(json.dumps({"time": start}))
    (job / "embeddings" / name).write_bytes(b"x")
    os.utime(job / "embeddings" / name, (start + wall, start + wall))


def test_measured_rate_is_inference_tokens_over_shard_wall(tmp_path: Path) -> None:
    job = tmp_path / "j1"
    job.mkdir()
    (job / "manifest.json").write_text(json.dumps({"model": {"bundle_path": "/m/a"}}))
    _done_shard(job, 0, 3000, 1000.0, 2.0)
    _done_shard(job, 1, 1000, 2000.0, 2.0)
    _done_shard(job, 2, 90_000, 3000.0, 1.0, queue="gpu")  # another kind of worker: ignored
    other = tmp_path / "j2"  # another model: ignored
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"model": {"bundle_path": "/m/b"}}))
    _done_shard(other, 0, 10, 1000.0, 100.0)
    r = measured_rate(tmp_path, "/m/a")
    assert r is not None and r.tokens_per_s == 1000.0 and "2 recent shard" in r.source
    assert measured_rate(tmp_path, "/m/c") is None
    g = measured_rate(tmp_path, "/m/a", "gpu")
    assert g is not None and g.tokens_per_s == 90_000.0


def test_probe_rate_takes_the_fastest_figure_without_error(tmp_path: Path) -> None:
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "k.json").write_text(json.dumps({"bundle": "/m/a", "rows": [
        {"tokens_per_s": 500.0, "error": None}, {"tokens_per_s": 900.0, "error": "gate"},
        {"tokens_per_s": 700.0, "error": None}]}))
    r = probe_rate(tmp_path, "/m/a")
    assert r is not None and r.tokens_per_s == 700.0 and "optimistic" in r.source
    assert probe_rate(tmp_path, "/m/other") is None


def test_status_shows_an_eta_while_running() -> None:
    st = JobStatus(job_dir="/o/j", status="running", shards=4, done=1, failed=0, chunks=40,
                   chunks_done=10, tokens=1000, tokens_done=250, rejects=0, cache_hits=0,
                   elapsed_s=5.0)
    assert st.eta_s == 15.0 == eta_s(1000, 250, 50.0)
    assert "eta        0:15 at that rate" in status_lines(st)
    st.status = "succeeded"
    assert st.eta_s is None and not any(x.startswith("eta") for x in status_lines(st))
