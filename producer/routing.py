"""Stage 4: pick the queue for a job: ``cpu``, ``gpu`` or ``auto`` (gpu when a worker eats it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from producer.errors import UsageError


def queue_for(choice: str, gpu_consumed: bool, *, cpu_queue: str = "cpu",
              gpu_queue: str = "gpu") -> str:
    """Pure routing rule.

    >>> queue_for("auto", gpu_consumed=False)
    'cpu'
    """
    if choice == "cpu":
        return cpu_queue
    if choice == "gpu":
        return gpu_queue
    if choice == "auto":
        return gpu_queue if gpu_consumed else cpu_queue
    raise UsageError(f"--queue {choice!r}: use cpu, gpu or auto")


def choose_queue(app: Any, choice: str, *, cpu_queue: str = "cpu", gpu_queue: str = "gpu",
                 log: Callable[[str], None] = print) -> str:
    """``queue_for`` with ``auto`` answered by asking live workers which queues they consume."""
    if choice != "auto":
        return queue_for(choice, False, cpu_queue=cpu_queue, gpu_queue=gpu_queue)
    consumed: set[str] = set()
    try:
        consumed = consumed_queues(app)
    except Exception as exc:
        log(f"--queue auto: could not ask workers ({exc}); using {cpu_queue!r}")
    q = queue_for("auto", gpu_queue in consumed, cpu_queue=cpu_queue, gpu_queue=gpu_queue)
    log(f"--queue auto: {'a worker consumes' if q == gpu_queue else 'no worker consumes'} "
        f"{gpu_queue!r}; sending to {q!r}")
    return q


def consumed_queues(app: Any, timeout_s: float = 1.5) -> set[str]:
    """Names of the queues live workers consume (Celery ``inspect active_queues``).

    Raises whatever the broker connection raises; an empty set means no worker answered.
    """
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return {q.get("name", "") for queues in replies.values() for q in queues}


def no_worker_warning(app: Any, queue: str, broker_label: str) -> str | None:
    """A warning when no worker consumes ``queue`` (None when one does, or nobody can tell)."""
    try:
        if queue in consumed_queues(app):
            return None
    except Exception:  # the broker answered connect; a failed inspect tells nothing
        return None
    return (f"warning: no worker consumes queue {queue!r} on {broker_label}: the shards will "
            "wait until one starts")
