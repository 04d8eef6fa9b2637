"""Worker liveness: a consumer step writes a state file; ``python -m worker.health`` judges it.

Healthy means: the worker's event loop is running (the file is fresh), its consumer is
connected, the broker answers this check, and the worker is not sitting idle while its queue
holds work. A worker cut off from Redis, frozen, blocked on a dead socket or holding a prefetch
slot it never frees (issue 29) fails within about ``--idle`` seconds; a worker that is busy
or whose queue is empty passes. Exit 0 and one ``healthy: …`` line, or exit 1 and one
``unhealthy: …`` line naming what is wrong: docker-compose ``healthcheck``, a Kubernetes
``livenessProbe`` (``exec: command: [python, -m, worker.health]``) or any supervisor can call it.

The file is ``EMBED_HEALTH_FILE`` (default ``$TMPDIR/embedfleet-health/<node name>.json``), so
several workers on one host keep apart: pass ``-n NAME@%h`` as given to ``celery worker -n``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import bootsteps, signals

from worker.fairshare import queued_messages

BEAT_S = 5.0  # how often the worker writes its state
DEFAULT_MAX_AGE_S = 60.0  # a state older than this: the event loop is stuck (or the worker gone)
DEFAULT_IDLE_S = 60.0  # idle this long while the queue holds work: not consuming


def health_path(node: str, configured: str | None = None) -> Path:
    """Where worker ``node`` (``name@host``) writes its state."""
    if configured:
        return Path(configured.replace("%n", node))
    return Path(tempfile.gettempdir()) / "embedfleet-health" / f"{node}.json"


class Health(bootsteps.StartStopStep):
    """Consumer step: every ``BEAT_S`` the event loop itself writes the worker's state."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None
        self.busy_at = time.time()  # last moment the worker was working (or started)
        signals.task_received.connect(self._received, weak=False)

    def _received(self, **_: Any) -> None:
        self.busy_at = time.time()

    def start(self, c: Any) -> None:
        self.beat(c)
        self.tref = c.timer.call_repeatedly(BEAT_S, self.beat, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
    shutdown = stop

    def beat(self, c: Any) -> None:
        from celery.worker import state

        now = time.time()
        active = len(state.active_requests)
        if active or len(state.reserved_requests) > active:
            self.busy_at = now
        conn = c.connection
        settings = getattr(c.app, "settings", None)
        write_state(health_path(c.hostname, getattr(settings, "health_file", None)), {
            "node": c.hostname, "pid": os.getpid(), "time": now,
            "connected": bool(conn is not None and conn.connected),
            "queues": sorted(q.name for q in c.task_consumer.queues) if c.task_consumer else [],
            "active": active, "idle_s": round(now - self.busy_at, 1),
        })


def write_state(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (a reader never sees half a file); errors are the reader's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable file shows up as a stale state: the check fails and says where


def judge_health(state: dict[str, Any] | None, now: float, backlog: dict[str, int] | None, *,
          max_age: float = DEFAULT_MAX_AGE_S, idle: float = DEFAULT_IDLE_S,
          broker_error: str | None = None) -> tuple[bool, str]:
    """(healthy, one line) from the worker's state and the queue lengths the broker reports.

    >>> judge_health({"time": 100, "connected": True, "queues": ["cpu"], "active": 0, "idle_s": 90,
    ...        "pid": 1}, 101, {"cpu": 3})
    (False, 'unhealthy: queue cpu holds 3 message(s) but this worker has taken none for 90 s')
    """
    if state is None:
        return False, "unhealthy: no state file (worker not started, or not this node name)"
    age = now - float(state["time"])
    if age > max_age:
        return False, (f"unhealthy: the worker's event loop has not written its state for "
                       f"{age:.0f} s (blocked on the broker, frozen or gone)")
    if not state.get("connected"):
        return False, "unhealthy: the consumer is not connected to the broker"
    if broker_error:
        return False, f"unhealthy: cannot reach the broker: {broker_error}"
    waiting = {q: n for q, n in (backlog or {}).items() if n}
    if waiting and not state.get("active") and float(state.get("idle_s", 0)) > idle:
        q, n = next(iter(sorted(waiting.items())))
        return False, (f"unhealthy: queue {q} holds {n} message(s) but this worker has taken "
                       f"none for {float(state['idle_s']):.0f} s")
    busy = f"{state.get('active', 0)} task(s) running" if state.get("active") else "idle"
    return True, f"healthy: {state.get('node')} connected, {busy}, queues {waiting or 'empty'}"


def queue_backlog(broker_url: str, queues: list[str], timeout: float = 5) -> dict[str, int]:
    """Messages waiting in each queue: every priority list and job queue of it (Redis brokers;
    others report nothing)."""
    if not broker_url.startswith(("redis://", "rediss://", "unix://")):
        return {}
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)
    try:
        return {q: queued_messages(client, q) for q in queues}
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    from worker.settings import WorkerSettings

    p = argparse.ArgumentParser(prog="python -m worker.health", description=__doc__.split(
        "\n")[0])
    p.add_argument("-n", "--node", default="celery@%h",
                   help="the worker's node name as given to `celery worker -n` (%%h = host)")
    p.add_argument("--max-age", type=float, default=DEFAULT_MAX_AGE_S,
                   help="seconds the worker may go without writing its state")
    p.add_argument("--idle", type=float, default=DEFAULT_IDLE_S,
                   help="seconds a worker may stay idle while its queue holds work")
    args = p.parse_args(argv)
    settings = WorkerSettings.from_env(os.environ)
    node = args.node.replace("%h", socket.gethostname())
    path = health_path(node, settings.health_file)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        state = None
    backlog, error = None, None
    if state is not None:
        try:
            backlog = queue_backlog(settings.broker_url, list(state.get("queues") or []))
        except Exception as exc:  # any failure to ask the broker is the answer
            error = f"{type(exc).__name__}: {exc}"
    ok, line = judge_health(state, time.time(), backlog, max_age=args.max_age, idle=args.idle,
                     broker_error=error)
    print(line if state is not None else f"{line}: {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
