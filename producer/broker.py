"""Edge: talk to the broker — connect (fail fast), send shard tasks, look at the backlog."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producer.errors import BrokerFull, BrokerUnreachable
from producer.metrics import message_job
from producer.priority import queue_depth, queue_keys, task_priority
from storage.jobdir import JobDir
from worker.contract import TASK_NAME, ShardTask
from worker.fairshare import job_queue, shard_queue
from storage.urls import DEFAULT_BROKER_URL, mask_url
from worker.settings import WorkerSettings


def connect(broker: str | None, *, events: bool = False, fair_share: bool = True) -> Any:
    """A Celery app for ``broker`` whose connection works, else BrokerUnreachable naming it.

    ``events`` (EMBED_EVENTS=1, Flower is watching): send ``task-sent`` events, as workers do.
    ``fair_share`` (EMBED_FAIR_SHARE): shard tasks go to the job's queue (worker/fairshare.py).
    """
    from worker.celery_app import create_app

    url = broker or DEFAULT_BROKER_URL
    app = create_app(WorkerSettings(broker_url=url, events=events, fair_share=fair_share))
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2,
                                   interval_max=0.5, timeout=5)
    except Exception as exc:  # kombu raises OperationalError, OSError, ...
        raise BrokerUnreachable(f"cannot reach the broker at {mask_url(url)}: {exc}") from None
    return app


def send_shards(app: Any, job: JobDir, shards: Sequence[int], queue: str) -> None:
    """One small JSON message per shard, at the job's ``--priority``, to the job's own queue
    under ``queue`` (``worker.fairshare.shard_queue``); publish retries follow the app's retry
    policy.

    Raises:
        BrokerFull: Redis refused the message (over ``maxmemory``); names the limit and the
            command that continues the job once memory is freed.
    """
    # A directory without a manifest yet (the unit tests' bare JobDir) has no priority set.
    priority = task_priority(job.manifest.priority if job.manifest_path.is_file() else None)
    queue = shard_queue(app, queue, job.root.name)
    try:
        with app.producer_or_acquire() as producer:
            for n in shards:
                payload = ShardTask(job_id=job.root.name, job_dir=str(job.root),
                                    shard=n).to_dict()
                app.send_task(TASK_NAME, args=[payload], queue=queue, producer=producer,
                              retry=True, priority=priority)
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        url = app.conf.broker_url
        raise BrokerFull(
            f"the broker at {mask_url(url)} is full: {_memory(url)}, and it refuses new tasks "
            f"(noeviction); the shards of {job.root} staged so far are kept. Free memory on "
            f"the broker (or raise its maxmemory), then `{job.manifest.continue_command(job.root)}`"
        ) from None


def _out_of_memory(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is Redis's OOM refusal."""
    seen = 0
    while exc is not None and seen < 10:
        if type(exc).__name__ == "OutOfMemoryError" or "used memory > 'maxmemory'" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _memory(url: str) -> str:
    """``used X of maxmemory Y (policy P)`` from INFO (allowed at the limit), or a fallback."""
    import redis

    try:
        with redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3) as r:
            m = r.info("memory")
        return (f"used memory {m['used_memory_human']} is over its maxmemory "
                f"{m['maxmemory_human']} (policy {m['maxmemory_policy']})")
    except Exception:
        return "used memory is over its maxmemory"


def broker_backlog(broker: str | None, queue: str) -> int | None:
    """Messages queued (every priority list) or unacked on a Redis broker; None when it cannot
    tell (RabbitMQ)."""
    if not broker or not broker.startswith(("redis://", "rediss://")):
        return None
    import redis

    try:
        r = redis.Redis.from_url(broker, socket_timeout=3, socket_connect_timeout=3)
        with r:
            return queue_depth(r, queue) + int(r.hlen("unacked"))
    except Exception:
        return None


def job_backlog(broker: str | None, queue: str, job_id: str) -> int | None:
    """Messages of ``job_id`` still queued (any priority, in ``queue`` or the job's own queue)
    on a Redis broker; None when it cannot tell. The reconciler asks before treating a stall as lost messages: a low-priority job
    waiting behind others has its messages still queued. Unacked messages do not count: one a
    live worker holds is seen by its heartbeat, one a killed worker held is what a re-send is
    for (it would come back only after the visibility timeout)."""
    if not broker or not broker.startswith(("redis://", "rediss://")):
        return None
    import redis

    keys = [k for q in (queue, job_queue(queue, job_id)) for k, _ in queue_keys(q)]
    try:
        with redis.Redis.from_url(broker, socket_timeout=5, socket_connect_timeout=3) as r:
            raws = [m for key in keys for m in r.lrange(key, 0, -1)]
    except Exception:
        return None
    return sum(message_job(m) == job_id for m in raws)
