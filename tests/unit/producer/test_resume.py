"""``producer/resume.py``: which broker a resume uses, which jobs it refuses, and the
corpus/chunking checks for an existing job; ``producer/reconcile.py``: which shards live
workers hold (job directories written here, no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.errors import JobConflict, UsageError
from producer.reconcile import HELD_BEATS, Heartbeats, held_now, reconcile_seconds
from producer.resume import (RUN_MADE_BY, check_same_chunking, check_same_corpus, fleet_broker,
                             interrupted_message, plan_run, refuse_run_job)
from storage.errors import JobNotFound
from storage.jobdir import JobDir
from worker.settings import DEFAULT_BROKER_URL


def make_job(tmp_path: Path, **manifest: object) -> JobDir:
    job = JobDir.create(tmp_path / "out", "j")
    job.write_manifest({"job_id": "j", **manifest})
    return job


def test_broker_given_wins_else_the_recorded_one(tmp_path: Path) -> None:
    job = make_job(tmp_path, broker_hint="redis://fleet:6379/2")
    assert fleet_broker(job, "redis://other:1/0") == "redis://other:1/0"
    assert fleet_broker(job, None) == "redis://fleet:6379/2"
    assert fleet_broker(make_job(tmp_path / "old"), None) == DEFAULT_BROKER_URL


def test_a_masked_broker_is_never_used_to_reconnect(tmp_path: Path) -> None:
    job = make_job(tmp_path, broker_hint="redis://:***@fleet:6379/0")
    with pytest.raises(UsageError, match=r"--broker: .* redis://:\*\*\*@fleet:6379/0"):
        fleet_broker(job, None)


def test_a_run_job_is_refused_with_the_command_that_continues_it(tmp_path: Path) -> None:
    job = make_job(tmp_path, made_by=RUN_MADE_BY)
    with pytest.raises(JobConflict, match=f"producer run --resume {job.root}"):
        refuse_run_job(job)
    refuse_run_job(make_job(tmp_path / "s", made_by="producer submit"))


def test_other_corpus_names_both_checksums(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "a"}\n')
    job = make_job(tmp_path, input={"path": "/data/c.jsonl", "sha256": "ab" * 32})
    with pytest.raises(JobConflict, match="sha256 abababababababab.*sha256 [0-9a-f]{16}"):
        check_same_corpus(job, str(tmp_path / "a.jsonl"))


def test_chunking_differences_name_option_and_both_values(tmp_path: Path) -> None:
    job = make_job(tmp_path, chunking={"overlap": 0, "shard_tokens": 64, "prefix": ""})
    check_same_chunking(job, {"overlap": 8, "shard_tokens": 64}, ["shard_tokens"])
    with pytest.raises(JobConflict) as info:
        check_same_chunking(job, {"overlap": 8, "shard_tokens": 64}, ["overlap", "shard_tokens"])
    assert "--overlap: the job has 0, this command asks for 8" in str(info.value)
    assert "shard-tokens" not in str(info.value)


def test_plan_for_a_new_job_and_a_missing_one(tmp_path: Path) -> None:
    plan = plan_run(tmp_path / "new", "c.jsonl", {"queue": "auto"}, set(), resume=False,
                    model_path=str)
    assert (plan.corpus, plan.queue, plan.options["queue"], plan.pending) == (
        "c.jsonl", "cpu", "cpu", -1)
    with pytest.raises(JobNotFound):
        plan_run(tmp_path / "new", None, {}, set(), resume=True, model_path=str)


def test_interrupt_message_names_the_resume_command_once_the_job_exists(tmp_path: Path) -> None:
    assert "run the same command again" in interrupted_message(tmp_path / "out" / "j")
    job = make_job(tmp_path)
    assert f"`producer run --resume {job.root}`" in interrupted_message(job.root)


def test_another_dim_or_dtype_is_refused_naming_both() -> None:
    from producer.resume import check_same_dense
    from storage.manifest import Manifest

    m = Manifest(job_id="j", model={"dim": 384},
                 dense={"dim": 256, "dtype": "int8", "full_dim": 384})
    check_same_dense(m, {"dim": 256, "dtype": "int8"}, {"dim", "dtype"})
    check_same_dense(m, {"dim": None, "dtype": "float32"}, set())  # --resume, nothing given
    with pytest.raises(JobConflict, match="--dtype binary: j was submitted with --dtype int8"):
        check_same_dense(m, {"dim": 256, "dtype": "binary"}, {"dim", "dtype"})
    plain = Manifest(job_id="j", model={"dim": 384})
    check_same_dense(plain, {"dim": 384, "dtype": "float32"}, {"dim", "dtype"})  # = the model's
    with pytest.raises(JobConflict, match="--dim 128: j was submitted with the model's 384"):
        check_same_dense(plain, {"dim": 128, "dtype": "float32"}, {"dim"})


def _beat(job: JobDir, shard: int, attempt: int, count: int, every: float = 1.0) -> None:
    d = job.state_dir / "alive"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{shard:05d}.{attempt}").write_bytes(b"%.3f %012d\n" % (every, count))


def test_a_shard_is_held_while_its_heartbeat_changes_and_not_after(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    now = [100.0]
    beats = Heartbeats(job, clock=lambda: now[0])
    assert not beats.look() and beats.held() == set()  # nobody holds anything
    _beat(job, 3, 1, 0)
    _beat(job, 4, 1, 0)
    assert beats.look() and beats.held() == {3, 4}  # first seen: a beat
    now[0] += 4
    _beat(job, 3, 1, 1)  # shard 3's worker is alive; shard 4's stopped beating (killed)
    assert beats.look()
    now[0] += HELD_BEATS * 1.0 - 3
    assert not beats.look() and beats.held() == {3}
    now[0] += 10
    assert beats.held() == set()  # shard 3 stopped too
    (job.state_dir / "alive" / "00003.1").unlink()  # its attempt ended
    assert not beats.look() and beats.held() == set()


def test_a_one_shot_resume_looks_twice_and_skips_shards_that_beat(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    assert held_now(job, sleep=lambda s: pytest.fail("no attempt runs: no wait")) == set()
    _beat(job, 1, 1, 0, every=2.0)
    _beat(job, 2, 1, 0, every=2.0)
    waited: list[float] = []

    def sleep(s: float) -> None:
        waited.append(s)
        _beat(job, 1, 1, 1, every=2.0)  # shard 1 beats meanwhile; shard 2's worker is dead

    assert held_now(job, sleep=sleep) == {1} and waited == [3.0]


def test_reconcile_interval_from_the_environment() -> None:
    assert reconcile_seconds({}) == 120.0
    assert reconcile_seconds({"EMBED_RECONCILE_S": "20"}) == 20.0
    for bad in ("soon", "0"):
        with pytest.raises(UsageError, match="EMBED_RECONCILE_S"):
            reconcile_seconds({"EMBED_RECONCILE_S": bad})
