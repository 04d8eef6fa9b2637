"""kombu's Redis transport with two changes: an ack that fails still frees the prefetch slot,
and a worker takes from per-job queues in turn (fair share, worker/fairshare.py).

Why (issue 29, reproduced in tests/integration/test_partition.py): kombu's Redis ``QoS.ack``
first removes the message from Redis's ``unacked`` index and only then frees the slot in the
channel's local ``_delivered`` table. When the broker is unreachable (a partition, a dead NAT
entry), the removal raises, Celery logs ``Couldn't ack …, reason: network: TimeoutError`` and
swallows the error, and the slot stays taken forever. With ``worker_prefetch_multiplier=1``
that slot was the only one: ``can_consume()`` is False from then on, the worker never fetches
again although it is alive and, after the heal, connected. Nothing reports it.

Freeing the slot is safe: the message is still in Redis's ``unacked`` index (or its removal
did reach Redis), so it comes back after the visibility timeout, and a redelivered shard that
already landed returns "already done" (shards are idempotent). The error is re-raised, so
Celery still logs it.

``install()`` (called by ``celery_app.create_app``) points kombu's ``redis`` and ``rediss``
URL schemes at this transport. Celery's ``broker_transport = "worker.transport:Transport"``
would select it too, but kombu then prints every broker URL as
``worker.transport:Transport://…`` (the worker banner, ``Connected to …``, Flower).
"""

from __future__ import annotations

import logging
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.json import dumps

from worker.fairshare import FairCycle, base_of, live_job_queues, registry_key

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: Any) -> None:
        try:
            super().ack(delivery_tag)
        except Exception:
            self._free(delivery_tag, "ack")
            raise

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            super().reject(delivery_tag, requeue=requeue)
        except Exception:
            self._free(delivery_tag, "reject")
            raise

    def _free(self, delivery_tag: Any, what: str) -> None:
        virtual.QoS.ack(self, delivery_tag)  # local bookkeeping only: frees the slot
        log.warning("broker unreachable during %s of %s: prefetch slot freed; the message "
                    "stays in Redis's unacked index and is redelivered after the visibility "
                    "timeout (a shard that landed is not embedded twice)", what, delivery_tag)


class Channel(kombu_redis.Channel):
    """Job queues: registered with every message put in them; BRPOPed in turn with the queues
    consumed (``FairCycle`` replaces kombu's round-robin cycle over the consumed queues)."""

    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue_cycle = FairCycle(self._live_job_queues)

    def _live_job_queues(self, base: str) -> list[str]:
        with self.conn_or_acquire() as client:
            return live_job_queues(client, base)

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        base = base_of(queue)
        batch = kwargs.get("_publish_batch")
        if base is None or batch is not None:
            super()._put(queue, message, **kwargs)
            if base is not None:  # queued after the LPUSH, sent in one pipeline
                batch.add("sadd", registry_key(base), queue)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client, client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, dumps(message))
            pipe.sadd(registry_key(base), queue)
            pipe.execute()

    def _lookup(self, exchange: Any, routing_key: Any, default: Any = None) -> Any:
        """A job queue is its own direct exchange and routing key: known without kombu's
        binding table (``_queue_bind`` stores none for it, so a job leaves no key behind)."""
        if exchange and exchange == routing_key and base_of(str(exchange)) is not None:
            return [exchange]
        return super()._lookup(exchange, routing_key, default)

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        if not (queue == exchange == routing_key and base_of(str(queue)) is not None):
            super()._queue_bind(exchange, routing_key, pattern, queue)

    def _do_restore_message(self, payload: Any, exchange: Any, routing_key: Any, pipe: Any,
                            leftmost: bool = False) -> None:
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        base = base_of(str(routing_key or ""))  # a job queue's routing key is its name
        if base is not None:  # in the same MULTI as the push
            pipe.sadd(registry_key(base), str(routing_key))


class Transport(kombu_redis.Transport):
    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        """A job queue's message goes to its base queue's consumer (the one the worker has)."""
        base = base_of(queue)
        if base is not None and queue not in self._callbacks:
            queue = base
        super()._deliver(message, queue)


def install() -> None:
    """Resolve ``redis://`` and ``rediss://`` broker URLs to ``Transport`` in this process."""
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        getattr(kombu.transport, "_transport_cache", {}).pop(scheme, None)  # resolved earlier
