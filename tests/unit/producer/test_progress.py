"""The progress line says "waiting for a worker" (not 0 tok/s) while no worker consumes the
queue, asks the broker at most every CHECK_S seconds, and stops saying it once shards finish."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from producer import progress
from producer.progress import Progress


def st(done: int) -> SimpleNamespace:
    return SimpleNamespace(chunks=10, chunks_done=done, done=done, failed=0, shards=10,
                           cache_hits=0, tokens_done=done * 5, tokens_per_s=float(done),
                           staging={})


def test_waiting_for_a_worker(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    asked: list[float] = []
    bar = Progress(True, no_worker=lambda: asked.append(clock[0]) or True)
    bar.update(st(0))
    clock[0] += 1
    bar.update(st(0))  # too soon to ask again
    assert asked == [100.0]
    assert "waiting for a worker" in capsys.readouterr().err
    clock[0] += progress.CHECK_S
    bar.update(st(1))  # a shard finished: a worker exists after all; no need to ask
    err = capsys.readouterr().err
    assert asked == [100.0] and "waiting" not in err and "1 tok/s" in err


def test_without_a_check_the_rate_is_shown(capsys: pytest.CaptureFixture[str]) -> None:
    Progress(True).update(st(0))
    assert "0 tok/s" in capsys.readouterr().err
