"""worker/attempts.py: in-flight markers → suspects → poison → the one give-up path.

Crashes are real: the attempt runs in a forked child that the ``kill_if_text`` failpoint
SIGKILLs mid-batch (no ``except``/``finally`` runs, as with the OOM killer), so the marker it
leaves is whatever the pipeline really wrote. The next attempt runs here with a FakeModel.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import signal
import time
from pathlib import Path

import pytest

from tests.checker import check_job
from tests.fakes import FakeModel, context, staged_job, text
from worker import attempts
from worker.attempts import Attempt, RetryShard
from worker.pipeline import embed_shard

FORK = mp.get_context("fork")
POISON = "poison alpha beta"


def crash(ctx) -> None:  # type: ignore[no-untyped-def]
    """Run one attempt in a child that is SIGKILLed when its batch holds the poison text."""
    ctx.faults = "kill_if_text=poison"
    p = FORK.Process(target=embed_shard, args=(ctx,))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, f"the attempt was meant to die, exit {p.exitcode}"
    ctx.faults = ""


def markers(job) -> list[str]:  # type: ignore[no-untyped-def]
    d = job.state_dir / "inflight"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


@pytest.fixture
def job(tmp_path: Path):  # type: ignore[no-untyped-def]
    texts = [text(i) for i in range(10)]
    texts[3] = POISON
    return staged_job(tmp_path / "out", [texts])


def test_poison_is_only_a_chunk_in_flight_at_two_crashes_once_alone(tmp_path: Path) -> None:
    def poison(*crashed: set[int]) -> set[int]:
        return Attempt(None, 0, 3, 3, list(crashed)).poison  # type: ignore[arg-type]

    assert poison() == set()
    assert poison({2}) == set()  # one crash is not proof
    assert poison({1, 2, 3}, {1, 2, 3}) == set()  # never alone: it may be a neighbour
    assert poison({1, 2, 3}, {2}) == {2}
    assert poison({2}, {2}) == {2}
    assert Attempt(None, 0, 3, 3, [{1, 2}, {5}]).suspects == {1, 2, 5}  # type: ignore[arg-type]


def test_marker_names_the_batch_running_and_a_torn_one_is_ignored(job) -> None:
    a = attempts.begin(job, 0, 3, {})
    groups = [[4], [0, 1], [2, 5, 6]]
    with a.inflight(groups) as mark:
        mark(0)
        assert attempts.crashed_inflight(job, 0, a.number + 1) == [{4}]
        mark(2)
        assert attempts.crashed_inflight(job, 0, a.number + 1) == [{2, 5, 6}]
        assert attempts.crashed_inflight(job, 0, a.number) == []  # only earlier attempts count
    assert markers(job) == []
    d = job.state_dir / "inflight"
    (d / "00000.7").write_bytes(b"000000003\n[[1], [2]]")  # index past the batches
    (d / "00000.8").write_bytes(b"garbage")
    (d / "00000.x").write_bytes(b"000000000\n[[1]]")
    (d / "00001.1").write_bytes(b"000000000\n[[9]]")  # another shard
    assert attempts.crashed_inflight(job, 0, 99) == []


def test_marker_left_by_a_crashed_attempt_makes_its_chunks_run_alone_first(job) -> None:
    model = FakeModel()
    ctx = context(job, model, max_batch_tokens=1000)  # one batch holds the whole shard
    crash(ctx)
    assert markers(job) == ["00000.1"]
    [suspects] = attempts.crashed_inflight(job, 0, 2)
    assert 3 in suspects and len(suspects) == 10

    res = embed_shard(ctx)
    assert res.status == "done" and res.attempt == 2 and res.rejected == 0
    assert model.calls == [[i] for i in sorted(suspects)]  # alone, first, in position order
    assert markers(job) == ["00000.1"]  # the finished attempt removed its own marker
    assert check_job(job.root).ok == 10


def test_suspects_run_before_the_other_batches(tmp_path: Path) -> None:
    texts = [text(i, extra=1 + i % 3) for i in range(12)]
    texts[0] = POISON
    job = staged_job(tmp_path / "out", [texts])
    model = FakeModel()
    ctx = context(job, model, max_batch_tokens=12)  # batches of 2: the crash takes one of them
    crash(ctx)
    [suspects] = attempts.crashed_inflight(job, 0, 2)
    assert 0 in suspects and 1 < len(suspects) < 12

    assert embed_shard(ctx).status == "done"
    k = len(suspects)
    assert model.calls[:k] == [[i] for i in sorted(suspects)]
    assert not suspects & {i for call in model.calls[k:] for i in call}
    assert check_job(job.root).ok == 12


def test_chunk_in_flight_at_two_crashes_alone_becomes_a_quarantined_reject(job) -> None:
    model = FakeModel()
    ctx = context(job, model, max_batch_tokens=1000, max_attempts=3)
    crash(ctx)  # the whole batch in flight
    crash(ctx)  # the suspects alone: the poison one dies alone
    assert markers(job) == ["00000.1", "00000.2"]
    assert sorted(attempts.crashed_inflight(job, 0, 3), key=len) == [{3}, set(range(10))]

    ctx.faults = "raise_if_text=poison"  # still bad (raising, not killing the test runner)
    res = embed_shard(ctx)
    assert res.status == "done" and res.attempt == 3 and res.rejected == 1
    assert [3] not in model.calls and all(3 not in c for c in model.calls)
    rejects = [json.loads(x) for x in job.rejects_path.read_text().splitlines()]
    assert [(r["doc_id"], r["line"]) for r in rejects] == [("doc4", 4)]
    assert rejects[0]["reason"] == ("worker process died while embedding this chunk "
                                    "(2 crashed attempts); quarantined")
    res2 = check_job(job.root)
    assert res2.clean and res2.ok == 9 and res2.rejected == 1, res2.describe()


def test_attempt_cap_marks_the_shard_failed_with_a_reason_naming_the_chunk(tmp_path) -> None:
    job = staged_job(tmp_path / "out", [[text(0), text(1), POISON, text(2)], [text(9)]])
    model = FakeModel()
    crash(context(job, model, max_batch_tokens=1000, max_attempts=1))
    assert embed_shard(context(job, model, shard=1, max_attempts=1)).status == "done"

    res = embed_shard(context(job, model, max_batch_tokens=1000, max_attempts=1))
    assert res.status == "failed" and res.finalized and model.calls == [[0]]  # shard 1 only
    reason = json.loads(job.failed_path(0).read_text())["reason"]
    assert res.extra["reason"] == reason
    assert reason.startswith("gave up after 1 attempts; the worker died while embedding")
    assert "doc 'doc3' chunk 0 (line 3)" in reason, reason
    m = job.reload()
    assert m.status == "failed" and m.failed_shards == [{"shard": 0, "reason": reason}]
    assert not job.success_path.exists()
    res2 = check_job(job.root)
    assert res2.clean and res2.failed == 4 and res2.ok == 1, res2.describe()


@pytest.fixture
def give_ups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call of attempts.give_up (it still does its work)."""
    seen: list[str] = []
    real = attempts.give_up

    def spy(job, shard, reason, n):  # type: ignore[no-untyped-def]
        seen.append(reason)
        return real(job, shard, reason, n)

    monkeypatch.setattr(attempts, "give_up", spy)
    return seen


def test_soft_time_limit_retries_then_fails_through_the_one_give_up_path(job, give_ups) -> None:
    model = FakeModel(soft_time_limit=True)
    ctx = context(job, model, max_attempts=2, soft_time_limit=7)
    with pytest.raises(RetryShard) as exc:
        embed_shard(ctx)
    assert exc.value.countdown == 1 and exc.value.cause is None
    assert model.calls, "the limit must have hit inside a batch"
    assert markers(job) == [] and not job.failed_path(0).exists() and give_ups == []

    res = embed_shard(ctx)
    assert res.status == "failed" and res.finalized
    assert give_ups == [res.extra["reason"]]
    assert res.extra["reason"] == ("soft time limit (7s, EMBED_SOFT_TIME_LIMIT) exceeded on "
                                   "attempt 2 of 2: the shard is too slow for the limit")
    assert markers(job) == []  # an interrupted attempt is not a crash
    assert not job.rejects_path.read_text()  # and blames no chunk
    assert check_job(job.root).failed == 10


def test_generic_error_backs_off_then_fails_through_the_one_give_up_path(job, give_ups) -> None:
    def broken() -> None:
        raise OSError("bundle volume went away")

    ctx = context(job, FakeModel(), max_attempts=3, load_model=broken)
    countdowns = []
    for _ in range(2):
        with pytest.raises(RetryShard) as exc:
            embed_shard(ctx)
        assert isinstance(exc.value.cause, OSError)
        countdowns.append(exc.value.countdown)
    assert countdowns == [2, 4] and give_ups == []
    res = embed_shard(ctx)
    assert res.status == "failed" and res.attempt == 3
    assert give_ups == ["OSError: bundle volume went away"]
    assert json.loads(job.failed_path(0).read_text())["attempts"] == 3


def test_attempt_cap_goes_through_the_one_give_up_path(job, give_ups) -> None:
    ctx = context(job, FakeModel(soft_time_limit=True), max_attempts=1)
    embed_shard(ctx)  # the last allowed attempt fails
    res = embed_shard(ctx)  # a redelivery past the cap
    assert res.status == "failed" and give_ups[-1] == "gave up after 1 attempts"


def test_no_other_module_marks_a_shard_failed() -> None:
    root = Path(__file__).resolve().parents[3] / "worker"
    writers = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if re.search(r"\bmark_failed\(", p.read_text())]
    assert writers == ["attempts.py"]
    assert "SoftTimeLimitExceeded" not in (root / "tasks.py").read_text()


def test_a_full_disk_leaves_the_shard_pending_and_uncounted(job, give_ups) -> None:
    from storage.errors import DiskFull

    def full() -> None:
        raise DiskFull(28, "no space left on device writing this file", "/mnt/x/part.parquet")

    ctx = context(job, FakeModel(), max_attempts=1, load_model=full)
    for _ in range(3):  # never retried in a loop, never failed, never uses up the attempts
        with pytest.raises(DiskFull, match="no space left.*/mnt/x/part.parquet"):
            embed_shard(ctx)
    assert give_ups == [] and not job.failed_path(0).exists() and job.attempts(0) == []
    assert [s.state for s in job.shard_states()] == ["pending"]
    ctx.load_model = lambda: FakeModel()  # space again
    assert embed_shard(ctx).status == "done"


def test_heartbeat_beats_while_the_attempt_runs_and_is_removed_after(job) -> None:
    a = attempts.begin(job, 0, 3, attempts.attempt_info(1, "h", "cpu"))
    with a.heartbeat(0.05):
        first = attempts.read_heartbeats(job)
        assert list(first) == [(0, a.number)] and first[(0, a.number)][1] == 0.05
        deadline = time.monotonic() + 10
        while attempts.read_heartbeats(job)[(0, a.number)][0] == first[(0, a.number)][0]:
            assert time.monotonic() < deadline, "the heartbeat never changed"
            time.sleep(0.02)
    assert attempts.read_heartbeats(job) == {}  # an attempt that ended in Python holds nothing


def test_a_heartbeat_left_by_a_dead_attempt_is_removed_by_the_next(job) -> None:
    d = attempts.alive_dir(job)
    d.mkdir(parents=True)
    (d / "00000.1").write_bytes(b"5.000 000000000007\n")
    assert attempts.read_heartbeats(job) == {(0, 1): (b"5.000 000000000007\n", 5.0)}
    job.next_attempt(0, {})  # attempt 1 (the one that died)
    attempts.begin(job, 0, 3, {})
    assert attempts.read_heartbeats(job) == {}


def test_a_store_error_is_never_counted_retried_when_transient_raised_once_when_refused(
        tmp_path):
    import errno

    from storage.jobfs import StoreError

    job = staged_job(tmp_path / "out", [["a b c"]])
    n = job.next_attempt(0, {"pid": 1})
    down = StoreError(errno.EIO, "object store unreachable (EndpointConnectionError)", "s3://b/k")
    down.transient = True
    with pytest.raises(RetryShard) as r:
        attempts.after_error(job, 0, down, max_attempts=1, soft_time_limit=5, attempt=n)
    assert r.value.countdown == attempts.STORE_RETRY_S and job.attempts(0) == []
    n = job.next_attempt(0, {"pid": 1})
    denied = StoreError(errno.EIO, "object store refused the request (AccessDenied)", "s3://b/k")
    with pytest.raises(StoreError, match="AccessDenied"):
        attempts.after_error(job, 0, denied, max_attempts=1, soft_time_limit=5, attempt=n)
    assert job.attempts(0) == [] and not job.failed_path(0).exists()
