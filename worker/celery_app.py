"""The Celery app: delivery settings for at-least-once batch work, queues, the shard task.

``celery -A worker worker -Q cpu`` (or ``-Q gpu``) runs a fleet member; ``celery -A worker
flower`` shows it. The settings follow shared/research/reliability.md: JSON only, late acks,
requeue on a lost worker, one message reserved per process, Redis visibility timeout above the
hard time limit above the soft one, cancel running tasks on broker connection loss.

Large fleets (shared/research/round2.md §6): every worker runs without gossip and mingle, and
without events and heartbeats unless ``EMBED_EVENTS=1`` (Flower). Gossip leaves a
``celeryev.<uuid>`` queue per worker that Redis never reclaims (4,112 orphans held 64.7 GiB in
mitodl/ol-infrastructure#5980) and each costs extra broker connections per worker
(PostHog/posthog#2513). ``FleetConsumer`` applies this to a plain ``celery -A worker worker``;
the ``--without-*`` flags can only switch more off. No result backend: completion is tracked in
the job directory.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.worker.consumer import Consumer
from kombu import Exchange, Queue

from worker import recycle
from worker.contract import TASK_NAME  # noqa: F401  (re-exported)
from worker.recycle import RECYCLE_KB
from worker.settings import WorkerSettings, env_name

log = logging.getLogger(__name__)


def celery_config(s: WorkerSettings) -> dict[str, Any]:
    """The Celery configuration for ``s`` (a plain dict: unit-tested without a broker)."""
    transport: dict[str, Any] = {}
    if s.broker_url.startswith(("redis://", "rediss://", "unix://", "sentinel://")):
        transport = {
            "visibility_timeout": s.visibility_timeout,
            # socket_timeout must exceed kombu's 1 s BRPOP wait (redis/redis-py#583).
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 25,
        }
        if s.unacked_restore_interval is not None:
            transport["unacked_restore_interval"] = s.unacked_restore_interval
            transport["unacked_restore_throttle"] = 1
            # The restore scan's mutex is a Redis key with a TTL (kombu default 300 s). A broker
            # with AOF restarted while a worker held it keeps it, and every restore is skipped
            # until it expires: keep it in proportion to the scan interval.
            transport["unacked_mutex_expire"] = max(5, int(5 * s.unacked_restore_interval))
    elif s.broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        # Without publisher confirms RabbitMQ may drop messages silently under resource limits.
        transport = {"confirm_publish": True}
    return {
        "broker_url": s.broker_url,
        "result_backend": None,
        "task_ignore_result": True,  # completion is tracked in the job directory
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,  # bounded by the per-shard attempt cap
        "task_acks_on_failure": True,  # an exception is handled by the task (retry/failed)
        # A hard time limit kills the child; acking would drop the shard's only message (the
        # job then hangs until a producer re-sends). Requeue instead: the attempt files cap it.
        "task_acks_on_timeout": False,
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": s.soft_time_limit,
        "task_time_limit": s.time_limit,
        "broker_transport_options": transport,
        "visibility_timeout": s.visibility_timeout,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 10, "interval_start": 0.5,
                                      "interval_step": 1, "interval_max": 5},
        "worker_send_task_events": s.events,  # EMBED_EVENTS=1 for Flower
        "task_send_sent_event": s.events,
        "worker_consumer": f"{__name__}:FleetConsumer",
        "task_track_started": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": s.cpu_queue,
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q)
                        for q in (s.cpu_queue, s.gpu_queue)],
        "task_create_missing_queues": True,
        # A child is recycled when it grows past its models' RSS + a headroom (worker/recycle.py
        # answers billiard's per-task check against this nominal limit); None: never.
        "worker_max_memory_per_child": None if s.recycle_headroom_mb == 0 else RECYCLE_KB,
    }


def fleet_worker_options(s: WorkerSettings) -> dict[str, bool]:
    """The consumer steps a fleet worker runs without (heartbeats only for Flower)."""
    return {"without_gossip": True, "without_mingle": True, "without_heartbeat": not s.events}


class FleetConsumer(Consumer):
    """Celery's consumer with ``fleet_worker_options`` as the defaults of the ``--without-*``
    flags (a flag given on the command line still switches its step off)."""

    def __init__(self, *args: Any, worker_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        opts = dict(worker_options or {})
        settings = getattr(kwargs.get("app"), "settings", None) or WorkerSettings()
        for name, off in fleet_worker_options(settings).items():
            opts[name] = bool(opts.get(name)) or off
        super().__init__(*args, worker_options=opts, **kwargs)


def create_app(settings: WorkerSettings) -> Celery:
    """A Celery app with the shard task registered; ``settings`` ride along as ``app.settings``."""
    if not settings.visibility_timeout > settings.time_limit > settings.soft_time_limit:
        log.warning(
            "%s (%s) > %s (%s) > %s (%s) does not hold: a slow shard may be delivered twice "
            "(harmless, but wasted work)",
            env_name("visibility_timeout"), settings.visibility_timeout, env_name("time_limit"),
            settings.time_limit, env_name("soft_time_limit"), settings.soft_time_limit,
        )
    from celery.signals import worker_process_init

    worker_process_init.connect(lambda **_: recycle.install_recycle_check(settings.recycle_headroom_mb),
                                weak=False, dispatch_uid="embedfleet-recycle")
    app = Celery("embedfleet", set_as_current=False)
    from worker.preload import start_preload

    worker_process_init.connect(lambda **_: start_preload(app), weak=False,
                                dispatch_uid=f"embedfleet-preload-{id(app)}")
    app.conf.update(celery_config(settings))
    app.settings = settings  # type: ignore[attr-defined]
    from worker.health import Health
    from worker.stage_task import register as register_stage
    from worker.tasks import register
    from worker.transport import install as install_transport

    install_transport()  # redis:// brokers: a failed ack frees its prefetch slot
    app.steps["consumer"].add(Health)  # the state `python -m worker.health` judges
    register(app)
    register_stage(app)
    return app


@lru_cache(maxsize=1)
def default_app() -> Celery:
    """The app ``celery -A worker`` uses, configured from ``os.environ`` once."""
    settings = WorkerSettings.from_env(os.environ)
    logging.basicConfig(level=settings.log_level,
                        format="[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s")
    return create_app(settings)
