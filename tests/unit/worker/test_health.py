"""worker/health.py's verdict, one state at a time (real workers: integration/test_health.py)."""

from __future__ import annotations

from pathlib import Path

from worker.health import health_path, judge_health

NOW = 1000.0


def state(**kw: object) -> dict[str, object]:
    return {"node": "w1@h", "pid": 1, "time": NOW - 2, "connected": True, "queues": ["cpu"],
            "active": 0, "idle_s": 1.0, **kw}


def test_idle_worker_with_an_empty_queue_is_healthy() -> None:
    ok, line = judge_health(state(idle_s=3600), NOW, {"cpu": 0})
    assert ok and line.startswith("healthy: w1@h connected, idle"), line


def test_busy_worker_with_a_backlog_is_healthy() -> None:
    ok, line = judge_health(state(active=1, idle_s=0), NOW, {"cpu": 500})
    assert ok and "1 task(s) running" in line, line


def test_backlog_shortly_after_a_task_is_healthy() -> None:
    assert judge_health(state(idle_s=5), NOW, {"cpu": 500})[0]


def test_idle_over_the_limit_with_a_backlog_fails() -> None:
    ok, line = judge_health(state(idle_s=61), NOW, {"cpu": 2})
    assert not ok and "queue cpu holds 2 message(s)" in line, line


def test_stale_state_fails() -> None:
    ok, line = judge_health(state(time=NOW - 61), NOW, {"cpu": 0})
    assert not ok and "has not written its state for 61 s" in line, line


def test_not_connected_or_broker_unreachable_fails() -> None:
    assert not judge_health(state(connected=False), NOW, {"cpu": 0})[0]
    ok, line = judge_health(state(), NOW, None, broker_error="TimeoutError: Timeout reading")
    assert not ok and "cannot reach the broker: TimeoutError" in line, line


def test_no_state_fails() -> None:
    assert judge_health(None, NOW, None) == (
        False, "unhealthy: no state file (worker not started, or not this node name)")


def test_state_path_per_node_and_configurable() -> None:
    assert health_path("w1@h").name == "w1@h.json"
    assert health_path("w1@h", "/run/health-%n.json") == Path("/run/health-w1@h.json")
