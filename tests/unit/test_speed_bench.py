"""benchmarks/speed.py's pure parts: log timestamps, the breakdown, the steady-state window."""

from __future__ import annotations

from datetime import datetime

from benchmarks.speed import _celery_time, _redis_time, _steps, steady


def test_log_timestamps() -> None:
    want = datetime(2026, 12, 5, 2, 30, 0, 123000).timestamp()
    assert _redis_time("123:M 05 Dec 2026 02:30:00.123 * Ready to accept connections") == want
    assert _celery_time("[2026-12-05 02:30:00,123: INFO/MainProcess] celery@x ready.") == want
    assert _redis_time("garbage") is None and _celery_time("garbage") is None


def test_steady_window_starts_after_the_first_shard() -> None:
    batches = [{"shard": 0, "real": 100, "ms": 10.0, "ts": 1.0},
               {"shard": 0, "real": 100, "ms": 10.0, "ts": 2.0},
               {"shard": 1, "real": 300, "ms": 50.0, "ts": 3.0},
               {"shard": 2, "real": 300, "ms": 50.0, "ts": 5.0}]
    s = steady(batches)
    assert s == {"tokens": 600, "span_s": 3.0, "tokens_per_s": 200.0,
                 "inference_tokens_per_s": 6000.0}
    assert steady(batches[:2]) is None and steady([]) is None


def test_steps_leave_missing_events_blank() -> None:
    steps = _steps({"redis_started": 1.0, "redis_ready": 1.5, "exit": 9.0, "last_batch": 8.0})
    assert steps["private Redis"] == 0.5 and steps["finalisation + exit"] == 1.0
    assert steps["worker start (to ready.)"] is None
