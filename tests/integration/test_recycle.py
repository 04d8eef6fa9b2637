"""A pool child is replaced only when it grows past its model's RSS + headroom (issue 24).

Real redis-server, a real ``celery -A worker worker`` and the real MiniLM bundle. The numbers
are scaled down through ``EMBED_RECYCLE_HEADROOM_MB``: 200 MB is above MiniLM's ~100 MB
inference working set and below its ~240 MB RSS after loading, so a fixed limit of that size
(the old rule) would replace the child after every shard; here it keeps its model across
shards. A child that leaks (``EMBED_FAULTS=grow=MB``) past load + headroom is still replaced,
between tasks, with no shard run twice.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from producer.job import Job, submit
from tests.conftest import sample_records, write_jsonl

pytestmark = pytest.mark.integration

ENV = {"EMBED_VISIBILITY_TIMEOUT": "60", "EMBED_SOFT_TIME_LIMIT": "40", "EMBED_TIME_LIMIT": "50"}


def _job(tmp_path: Path, bundle: Path, broker: str, job_id: str) -> Job:
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:24])
    return submit(corpus, tmp_path / "out", model=str(bundle), precision="fp32", broker=broker,
                  job_id=job_id, shard_tokens=600)


def _pids(job: Job) -> dict[int, list[int]]:
    return {s.shard: [a["pid"] for a in job.dir.attempts(s.shard)]
            for s in job.dir.manifest.shards}


def test_child_with_a_model_above_the_headroom_is_kept(tmp_path, fleet, redis_url,
                                                       minilm_bundle):
    job = _job(tmp_path, minilm_bundle, redis_url, "keep")
    assert len(job.dir.manifest.shards) >= 4
    w = fleet(env={**ENV, "EMBED_RECYCLE_HEADROOM_MB": "200"})
    st = job.wait(poll_s=0.5, timeout_s=300)
    assert st.status == "succeeded", st
    log = w.text()
    loaded = [float(m) for m in re.findall(r"RSS (\d+) MB after loading", log)]
    assert len(loaded) == 1, log[-3000:]  # the model was loaded once
    assert loaded[0] > 200  # a fixed 200 MB limit would have replaced this child every shard
    pids = _pids(job)
    assert all(len(p) == 1 for p in pids.values()), pids  # every shard ran once
    assert len({p[0] for p in pids.values()}) == 1, pids  # by the same process
    assert "recycling this worker process" not in log


def test_child_that_grows_past_load_plus_headroom_is_replaced(tmp_path, fleet, redis_url,
                                                              minilm_bundle):
    job = _job(tmp_path, minilm_bundle, redis_url, "grow")
    n = len(job.dir.manifest.shards)
    assert n >= 4
    w = fleet(env={**ENV, "EMBED_RECYCLE_HEADROOM_MB": "200", "EMBED_FAULTS": "grow=80"})
    st = job.wait(poll_s=0.5, timeout_s=300)
    assert st.status == "succeeded", st
    log = w.text()
    pids = _pids(job)
    assert all(len(p) == 1 for p in pids.values()), pids  # replaced between tasks, no re-run
    assert len({p[0] for p in pids.values()}) >= 2, pids
    assert "recycling this worker process after its task" in log
    assert len(re.findall(r"RSS \d+ MB after loading", log)) >= 2  # the new child loaded again
