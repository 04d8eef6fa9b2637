"""kombu's Redis transport with one fix: an ack that fails still frees the prefetch slot.

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
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Resolve ``redis://`` and ``rediss://`` broker URLs to ``Transport`` in this process."""
    for scheme in ("redis", "rediss"):
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
        getattr(kombu.transport, "_transport_cache", {}).pop(scheme, None)  # resolved earlier
