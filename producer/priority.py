"""``--priority low|normal|high``: the Celery task priority a job's tasks are sent with.

The Redis transport keeps one list per priority step of a queue (``cpu``, ``cpu\\x06\\x163``,
``cpu\\x06\\x166``, ``cpu\\x06\\x169``: kombu's default ``priority_steps`` [0, 3, 6, 9]) and a
worker's BRPOP names them in that order, so it always takes from the lowest step that holds a
message: with Redis, 0 is the *highest* priority. Workers reserve one message per process (late
ack, prefetch 1), so a high-priority task waits at most for the shard each process is running.
A message sent without a priority (an older producer) lands in step 0, i.e. is treated as high;
normal tasks live in ``cpu\x06\x163``, not in the plain ``cpu`` list: count a queue with
``queue_depth``. Stage tasks (``--stage-on fleet``) are sent without a priority.
Within one priority, each job has its own queue and workers take from the jobs in turn
(worker/fairshare.py): a fair share between jobs of equal priority.
RabbitMQ would need ``x-max-priority`` on the queues (not declared here), and reverses the order.
"""

from __future__ import annotations

from typing import Any

from storage.jobdir import JobDir
from worker.contract import PRIORITIES, task_priority  # noqa: F401 (the staging worker sends too)
from worker.fairshare import list_keys as queue_keys  # noqa: F401 (one queue's lists)
from worker.fairshare import queued_messages


def queue_depth(client: Any, queue: str) -> int:
    """Messages waiting in ``queue``: the sum over its priority lists and those of its job
    queues (worker/fairshare.py; a redis-py client)."""
    return queued_messages(client, queue)


def step_name(step: int) -> str:
    """The priority name of a list's step (metrics label).

    >>> step_name(0), step_name(9)
    ('high', '9')
    """
    return next((k for k, v in PRIORITIES.items() if v == step), str(step))


def set_priority(jd: JobDir, name: str) -> None:
    """Record ``name`` in the manifest: the tasks sent from now on carry it."""
    m = jd.reload()
    if m.priority != name:
        m.priority = name
        jd.write_manifest(m)
