"""Corrupt job state with a real worker: garbage and truncated input shards, a metrics shard
with a bad footer, a manifest that is not JSON. Each error names the file and ``producer
status`` says what to do; following that advice loses and duplicates nothing (checker)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from tests.checker import check_job
from tests.conftest import sample_records, write_jsonl
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def status(job_path) -> tuple[int, str]:
    out = CliRunner().invoke(main, ["status", str(job_path)])
    return out.exit_code, out.output


def wait_finished(job, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = job.status()
        if st.finished:
            return st
        time.sleep(0.5)
    raise TimeoutError(f"{job.path} not finished")


@pytest.fixture
def staged(tmp_path, redis_url, minilm_bundle):
    """A 4-shard job staged while no worker runs (its messages wait in the queue)."""
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": r["id"], "text": r["text"]}
                                                for r in sample_records()[:24]])
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), broker=redis_url,
                 job_id="corrupt", shard_tokens=1500, max_attempts=1)
    assert len(job.dir.manifest.shards) >= 4
    return job


def test_garbage_and_truncated_input_shards(staged, fleet, record):
    garbage, truncated = staged.dir.input_path(0), staged.dir.input_path(1)
    originals = {p: p.read_bytes() for p in (garbage, truncated)}
    garbage.write_bytes(b"not parquet at all\n" * 10)
    truncated.write_bytes(truncated.read_bytes()[:200])
    fleet()
    st = wait_finished(staged)
    assert st.status == "failed" and st.failed == 2 and st.done == st.shards - 2, st
    reasons = {f["shard"]: f["reason"] for f in st.failed_shards}
    assert str(garbage) in reasons[0] and str(truncated) in reasons[1], reasons
    code, out = status(staged.path)
    assert code == 0, out
    for n, path in ((0, garbage), (1, truncated)):
        assert f"what to do: input shard {n} ({path}) is damaged" in out, out
    assert "submit the corpus again" in out
    for p, data in originals.items():  # the checker needs what was staged, to classify it
        p.write_bytes(data)
    res = check_job(staged.path)
    assert res.failed == sum(s.chunks for s in staged.dir.manifest.shards[:2])
    assert not (res.lost or res.duplicated or res.unexpected), res.describe()
    record("garbage + truncated input shards (max_attempts=1)", res,
           "both tasks fail naming the file; status: 'input shard N (path) is damaged: submit "
           "the corpus again'")


def test_metrics_shard_with_bad_footer_then_resume(staged, fleet, record):
    fleet()
    assert wait_finished(staged).status == "succeeded"
    metrics, embeddings = staged.dir.metrics_path(2), staged.dir.embeddings_path(2)
    metrics.write_bytes(metrics.read_bytes()[:-12])  # the footer is the end of the file
    code, out = status(staged.path)
    assert code != 0
    assert str(metrics) in out and "unreadable metrics shard" in out, out
    attempts = staged.dir.state_dir / "attempts"
    assert (f"delete it, {embeddings} and {attempts}/00002.*, then "
            f"`producer resume {staged.path}`") in out, out
    # Follow the advice: the shard is recomputed once, the job is whole again.
    metrics.unlink()
    embeddings.unlink()
    for p in attempts.glob("00002.*"):
        p.unlink()
    assert staged.resume() == 1
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and embeddings.is_file()) and time.monotonic() < deadline:
        time.sleep(0.5)
    code, out = status(staged.path)
    assert code == 0 and "[succeeded]" in out, out
    res = check_job(staged.path)
    assert res.clean and res.ok == res.expected, res.describe()
    record("metrics shard with a bad footer, then the advised resume", res,
           "status names the file and says delete + `producer resume`; 1 shard recomputed")


def test_manifest_that_is_not_json(staged):
    text = staged.dir.manifest_path.read_text()
    staged.dir.manifest_path.write_text(text[: len(text) // 2])
    code, out = status(staged.path)
    assert code == 1
    assert f"{staged.dir.manifest_path}: not valid JSON" in out, out
    assert "submit the corpus again as a new job" in out
    staged.dir.manifest_path.write_text("[1, 2]")
    code, out = status(staged.path)
    assert code == 1 and "not an object" in out, out
    json.loads(text)  # the original was fine: only the damage is reported
