"""The job directory: job-id validation, attempt numbers across processes, and finalize
(idempotent, race-safe, merges rejects, never writes ``_SUCCESS`` for a pending or failed job)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from storage import ledger
from storage.atomic import tmp_name
from storage.errors import InvalidJobId, JobNotFound
from storage.hashing import text_sha256
from storage.jobdir import JobDir, validate_job_id
from storage.shards import embeddings_table, input_table, metrics_table, write_table

DIM = 4
SIZES = (3, 2, 4)
SPAWN = mp.get_context("spawn")  # no fork of a process that has Arrow's thread pools


# -- helpers (top level so spawned processes can import them) ---------------------------------
def make_job(out: Path, job_id: str = "job-1", sizes: tuple[int, ...] = SIZES) -> JobDir:
    job = JobDir.create(out, job_id)
    job.write_manifest({
        "job_id": job_id, "staged": True, "submitted_at": time.time() - 10,
        "shards": [{"shard": n, "chunks": k, "tokens": 5 * k} for n, k in enumerate(sizes)],
    })
    return job


def staging_rejects(job: JobDir, text: str) -> None:
    """Records staging rejected: one ledger segment's rejects file (storage/ledger.py)."""
    p = ledger.rejects_path(job.root, 0, 0)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def write_shard(job: JobDir, shard: int, *, rejected: int = 0) -> None:
    """Embeddings + metrics for ``shard``; the last ``rejected`` chunks go to the shard rejects."""
    n = job.expected_chunks(shard)
    assert n is not None
    texts = [f"s{shard} c{i}" for i in range(n)]
    inputs = input_table([
        {"line": i + 1, "doc_id": f"d{shard}", "chunk_index": i, "chunk_count": n,
         "char_start": 0, "char_end": len(t), "n_tokens": 5, "text": t,
         "text_sha256": text_sha256(t)}
        for i, t in enumerate(texts)])
    keep = np.arange(n) < n - rejected
    if rejected:
        job.shard_rejects_path(shard).write_text(
            "".join(json.dumps({"shard": shard, "chunk_index": i, "reason": "inference failed"})
                    + "\n" for i in range(n - rejected, n)))
    meta = {"fingerprint": "fp", "precision": "fp32", "provider": "CPUExecutionProvider",
            "dim": DIM, "rejected": rejected}
    write_table(job.metrics_path(shard), metrics_table([{
        "shard": shard, "batch_index": 0, "chunks": n - rejected, "real_tokens": 5 * n,
        "padded_tokens": 6 * n, "cache_hits": 1, "inference_ms": 2.5}]), meta)
    vectors = np.full((n, DIM), shard, dtype=np.float32)
    write_table(job.embeddings_path(shard),
                embeddings_table(inputs, vectors, np.zeros(n, bool), keep), meta)


def _attempts(root: str, calls: int, start, results) -> None:
    job = JobDir(root)
    start.wait()
    results.put([job.next_attempt(7, {"pid": os.getpid(), "call": i}) for i in range(calls)])


def _finalize(roots: list[str], start, results) -> None:
    """Finalize each job in turn, all processes released together by the barrier per job."""
    out = []
    for root in roots:
        job = JobDir(root)
        start.wait()
        try:
            out.append(("ok", job.finalize()))
        except BaseException as exc:  # report it to the parent instead of dying silently
            out.append(("error", f"{type(exc).__name__}: {exc}"))
    results.put(out)


def run_in_processes(target, args: tuple, n: int) -> list:
    """Run ``target(*args, barrier, queue)`` in ``n`` spawned processes; return what they put."""
    start = SPAWN.Barrier(n)
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, start, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    return out


# -- job ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("job_id", ["2026-11-22T01-abc", "a", "job_1.v2", "A" * 128])
def test_validate_job_id_accepts_safe_names(job_id):
    assert validate_job_id(job_id) == job_id


@pytest.mark.parametrize("job_id", [
    "", "..", ".", "a/b", "/abs", "../x", "a..b", "-x", ".hidden", "x" * 129, "y" * 200,
    "a\x00b", "a b", "job\n", "jöb", "a\\b", None, 7,
])
def test_validate_job_id_rejects_unsafe_names(job_id):
    with pytest.raises(InvalidJobId):
        validate_job_id(job_id)


def test_invalid_job_id_is_a_value_error_and_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        JobDir.create(tmp_path, "../escape")
    assert list(tmp_path.iterdir()) == []


def test_create_lays_out_the_directory_and_open_needs_a_manifest(tmp_path):
    job = JobDir.create(tmp_path, "j")
    for d in ("input", "embeddings", "metrics", "_state/attempts", "_state/failed",
              "_state/rejects"):
        assert (tmp_path / "j" / d).is_dir()
    with pytest.raises(JobNotFound):
        JobDir.open(job.root)
    job.write_manifest({"staged": False, "shards": []})
    m = JobDir.open(job.root).manifest
    assert (m.staged, m.shards) == (False, [])


# -- attempts --------------------------------------------------------------------------------
def test_next_attempt_counts_per_shard_and_keeps_the_info(tmp_path):
    job = make_job(tmp_path)
    assert [job.next_attempt(0, {"n": i}) for i in range(3)] == [1, 2, 3]
    assert job.next_attempt(1, {}) == 1
    assert job.attempts(0) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert job.attempts(2) == []


def test_next_attempt_is_unique_across_concurrent_processes(tmp_path):
    job = make_job(tmp_path)
    per_proc = run_in_processes(_attempts, (str(job.root), 10), 4)
    assert sorted(n for nums in per_proc for n in nums) == list(range(1, 41))
    for nums in per_proc:
        assert nums == sorted(nums)  # increasing within each process
    assert len(job.attempts(7)) == 40


# -- finalize --------------------------------------------------------------------------------
def test_finalize_with_a_pending_shard_returns_false_and_writes_nothing(tmp_path):
    job = make_job(tmp_path)
    write_shard(job, 0)
    write_shard(job, 2)
    assert job.finalize() is False
    assert [s.state for s in job.shard_states()] == ["done", "pending", "done"]
    assert not job.success_path.exists()
    assert not job.rejects_path.exists()
    assert job.reload().result is None


def test_finalize_of_an_unstaged_job_returns_false(tmp_path):
    job = make_job(tmp_path)
    for n in range(len(SIZES)):
        write_shard(job, n)
    job.write_manifest({**job.manifest.to_dict(), "staged": False})
    assert job.finalize() is False
    assert not job.success_path.exists()


def test_finalize_succeeds_merges_rejects_and_is_idempotent(tmp_path):
    job = make_job(tmp_path)
    staging_rejects(job, '{"line": 4, "reason": "empty text"}\n\n'
                         '{"line": 9, "reason": "bad json"}\n')
    write_shard(job, 0)
    write_shard(job, 1, rejected=1)
    write_shard(job, 2, rejected=2)
    assert job.finalize() is True
    assert job.success_path.is_file()
    lines = [json.loads(x) for x in job.rejects_path.read_text().splitlines()]
    assert lines == [
        {"line": 4, "reason": "empty text"}, {"line": 9, "reason": "bad json"},
        {"shard": 1, "chunk_index": 1, "reason": "inference failed"},
        {"shard": 2, "chunk_index": 2, "reason": "inference failed"},
        {"shard": 2, "chunk_index": 3, "reason": "inference failed"},
    ]
    m = job.reload()
    assert m.status == "succeeded" and m.failed_shards == []
    r = m.result
    assert r["embedded_chunks"] == sum(SIZES) - 3
    assert r["rejects"] == 5
    assert (r["batches"], r["real_tokens"], r["cache_hits"]) == (3, 5 * sum(SIZES), 3)
    before = job.manifest_path.read_bytes(), job.rejects_path.read_bytes()
    assert job.finalize() is True  # a second run changes nothing
    assert (job.manifest_path.read_bytes(), job.rejects_path.read_bytes()) == before


def test_finalize_with_a_failed_shard_reports_failed_without_success(tmp_path):
    job = make_job(tmp_path)
    write_shard(job, 0)
    write_shard(job, 2)
    job.mark_failed(1, "gave up after 3 attempts", attempts=3)
    assert job.finalize() is True
    assert not job.success_path.exists()
    m = job.reload()
    assert m.status == "failed"
    assert m.failed_shards == [{"shard": 1, "reason": "gave up after 3 attempts"}]
    assert m.result["embedded_chunks"] == SIZES[0] + SIZES[2]
    assert json.loads(job.failed_path(1).read_text())["attempts"] == 3
    before = job.manifest_path.read_bytes()
    time.sleep(0.01)
    assert job.finalize() is True  # a late call (a redelivered task) keeps the result as it was
    assert job.manifest_path.read_bytes() == before
    assert not job.success_path.exists()


def test_finalize_after_a_finaliser_died_before_success_writes_only_the_marker(tmp_path):
    job = make_job(tmp_path)
    for n in range(len(SIZES)):
        write_shard(job, n)
    assert job.finalize() is True
    job.success_path.unlink()  # as if it died between the manifest and _SUCCESS
    before = job.manifest_path.read_bytes()
    assert job.finalize() is True
    assert job.success_path.is_file()
    assert job.manifest_path.read_bytes() == before


def test_a_failed_shard_that_later_lands_turns_the_job_into_a_success(tmp_path):
    job = make_job(tmp_path)
    write_shard(job, 0)
    write_shard(job, 2)
    job.mark_failed(1, "worker lost")
    assert job.finalize() is True and job.reload().status == "failed"
    write_shard(job, 1)  # resubmitted and done
    assert job.finalize() is True
    m = job.reload()
    assert (m.status, m.failed_shards) == ("succeeded", [])
    assert m.result["embedded_chunks"] == sum(SIZES)
    assert job.success_path.is_file()


def test_finalize_from_four_processes_at_once_is_consistent(tmp_path):
    jobs = [make_job(tmp_path, f"race-{i}") for i in range(5)]  # a few rounds: the window is small
    for job in jobs:
        staging_rejects(job, '{"line": 1, "reason": "empty text"}\n')
        for n in range(len(SIZES)):
            write_shard(job, n, rejected=n % 2)
    outcomes = run_in_processes(_finalize, ([str(j.root) for j in jobs],), 4)
    assert outcomes == [[("ok", True)] * len(jobs)] * 4
    for job in jobs:
        names = sorted(p.name for p in job.root.iterdir())
        assert names == ["_SUCCESS", "_state", "docs", "embeddings", "input", "manifest.json",
                         "metrics", "rejects.jsonl"]
        assert not [p for p in job.root.rglob("*") if p.name.endswith(".tmp")]
        m = job.reload()
        raw = json.loads(job.manifest_path.read_text())
        assert {"job_id", "staged", "submitted_at", "shards", "result", "status",
                "failed_shards"} <= set(raw) and raw["shards"] == [s.to_dict() for s in m.shards]
        assert m.status == "succeeded"
        assert m.result["embedded_chunks"] == sum(SIZES) - 1
        assert m.result["rejects"] == 2
        lines = job.rejects_path.read_text().splitlines()
        assert [json.loads(x).get("reason") for x in lines] == ["empty text", "inference failed"]


def test_finalize_keeps_a_live_writers_temp_file_and_removes_a_dead_ones(tmp_path):
    """A concurrent writer (another finalize, a duplicate task) must not lose its temp file."""
    job = make_job(tmp_path)
    for n in range(len(SIZES)):
        write_shard(job, n)
    live = tmp_name(job.embeddings_path(1))  # this process is alive: its writer may be too
    live.write_bytes(b"being written")
    old = tmp_name(job.embeddings_path(2))
    old.write_bytes(b"left by a crash long ago")
    os.utime(old, (time.time() - 7 * 24 * 3600,) * 2)
    assert job.finalize() is True
    assert live.exists()
    assert not old.exists()
