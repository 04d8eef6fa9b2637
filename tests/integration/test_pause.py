"""A worker paused (SIGSTOP) past the visibility timeout, resumed after its shard landed elsewhere.

The paused worker's message comes back after the visibility timeout (8 s), the other worker
lands the shard and the job finishes; then the paused worker continues (SIGCONT). Its late
result must be discarded cleanly: the landed embeddings and metrics files stay byte for byte
(no clobbering, nothing counted twice), the job stays succeeded, no new attempt or error loop
follows, and the worker takes work again. ``limits``: the task limits are longer than the
pause (the late attempt finishes its batches and finds the shard landed), or shorter (the soft
limit fires the moment the worker thaws).
"""

from __future__ import annotations

import hashlib
import time

import pyarrow.parquet as pq
import pytest

from producer.job import submit
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import assert_clean, make_corpus, poll_finished, wait_until
from tests.integration.test_health import health
from tests.integration.test_partition import _mid_batch_of, _taken_by
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration

LIMITS = {"long": {"EMBED_SOFT_TIME_LIMIT": "60", "EMBED_TIME_LIMIT": "70"},
          "short": {"EMBED_SOFT_TIME_LIMIT": "8", "EMBED_TIME_LIMIT": "10"}}


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("limits", ["long", "short"])
def test_worker_paused_past_visibility_timeout(tmp_path, fleet, redis_url, record, limits):
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    env = {"EMBED_VISIBILITY_TIMEOUT": "8", "EMBED_UNACKED_RESTORE_INTERVAL": "1",
           "EMBED_FAULTS": "sleep=1", **LIMITS[limits]}
    paused, other = fleet(env=env, name="paused"), fleet(env=env, name="other")
    job = submit(make_corpus(tmp_path / "c.jsonl", n=24), tmp_path / "out", model=str(bundle),
                 precision="fp32", broker=redis_url, job_id=f"pause-{limits}",
                 shard_tokens=300, max_batch_tokens=128)
    _mid_batch_of(job, paused)
    paused.freeze()
    t_stop = time.monotonic()
    shard = next(s for s in _taken_by(job, paused)
                 if not job.dir.embeddings_path(s).exists())
    try:
        st = poll_finished(job)  # the other worker lands everything, the paused shard too
        assert st.status == "succeeded", st
        recs = job.dir.attempts(shard)
        assert len(recs) == 2 and recs[1]["host"].startswith("other@"), recs
        files = [job.dir.embeddings_path(shard), job.dir.metrics_path(shard)]
        before = {p: (_digest(p), p.stat().st_mtime_ns) for p in files}
    finally:
        paused.freeze(False)
    paused_s = time.monotonic() - t_stop
    wait_until(lambda: "discarding this attempt's result" in paused.text()
               or "Soft time limit" in paused.text(), 120, "the late attempt to end")
    time.sleep(5)  # room for an error loop to show itself
    assert {p: (_digest(p), p.stat().st_mtime_ns) for p in files} == before
    assert len(job.dir.attempts(shard)) == 2, job.dir.attempts(shard)  # no re-run, no loop
    st = job.status()
    assert st.status == "succeeded" and not st.failed_shards, st
    met = pq.read_table(job.dir.metrics_path(shard))
    assert sum(met["chunks"].to_pylist()) == job.dir.expected_chunks(shard)
    assert set(met["attempt"].to_pylist()) == {2}  # the landed attempt's metrics only
    res = check_job(job.path)
    assert_clean(res, paused, other)
    assert res.ok == res.expected
    # The paused worker is a full member again: healthy and taking a new job's shards.
    other.freeze()
    time.sleep(1.5)  # its last BRPOP (1 s) could still take the next message
    try:
        job2 = submit(make_corpus(tmp_path / "c2.jsonl", n=6), tmp_path / "out",
                      model=str(bundle), precision="fp32", broker=redis_url,
                      job_id=f"pause-{limits}-2", shard_tokens=300, max_batch_tokens=128)
        wait_until(lambda: _taken_by(job2, paused), 90, "the thawed worker to take work")
    finally:
        other.freeze(False)
    assert poll_finished(job2).status == "succeeded"
    assert health(paused).returncode == 0
    late = ("discarded its finished result" if "discarding" in paused.text()
            else "stopped by the soft time limit on thaw")
    record(f"worker SIGSTOPped mid-shard for {paused_s:.0f}s (VT 8s), SIGCONT after the "
           f"shard landed elsewhere (task limits {limits})", res,
           f"shard {shard}: 2 attempts; late attempt {late}; landed files unchanged, metrics "
           f"of attempt 2 only; no 3rd attempt; worker took a new job's shards")
