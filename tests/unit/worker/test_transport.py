"""worker/transport.py: an ack or reject that cannot reach Redis still frees the prefetch slot.

A stand-in channel whose Redis pipeline raises ConnectionError (the real partition is in
tests/integration/test_partition.py); kombu's own QoS keeps the slot taken in the same case.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu.transport import redis as kombu_redis

from worker.celery_app import create_app
from worker.settings import WorkerSettings
from worker.transport import QoS, Transport


class _Unreachable:
    def pipeline(self) -> Any:
        return self

    def zrem(self, *a: Any) -> Any:
        return self

    def hdel(self, *a: Any) -> Any:
        return self

    def execute(self) -> None:
        raise redis.ConnectionError("partitioned")


class _Channel:
    unacked_key, unacked_index_key = "unacked", "unacked_index"
    do_restore = False  # nothing to restore when the test's QoS is collected

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Any:
        yield _Unreachable()


def _qos(cls: type) -> Any:
    q = cls.__new__(cls)
    kombu_redis.virtual.QoS.__init__(q, _Channel(), prefetch_count=1)
    kombu_redis.virtual.QoS.append(q, "message", "tag-1")  # delivered, not yet acked
    assert not q.can_consume()
    return q


def test_kombu_keeps_the_slot_when_the_ack_fails() -> None:
    q = _qos(kombu_redis.QoS)
    with pytest.raises(redis.ConnectionError):
        q.ack("tag-1")
    assert not q.can_consume()  # the stuck state of issue 29


@pytest.mark.parametrize("how", ["ack", "reject"])
def test_a_failed_ack_or_reject_frees_the_slot_and_still_raises(how: str) -> None:
    q = _qos(QoS)
    with pytest.raises(redis.ConnectionError):
        getattr(q, how)("tag-1")
    assert q.can_consume()


def test_redis_brokers_use_this_transport_and_still_read_redis() -> None:
    for url in ("redis://:pw@h:6379/0", "rediss://:pw@h:6380/0?ssl_cert_reqs=required"):
        conn = create_app(WorkerSettings(broker_url=url)).connection_for_write()
        assert conn.transport_cls == url.split(":")[0]
        assert type(conn.transport) is Transport
        assert conn.as_uri().startswith(f"{conn.transport_cls}://:**@h:")  # logs, Flower
    amqp = create_app(WorkerSettings(broker_url="amqp://g:g@h//")).connection_for_write()
    assert not isinstance(amqp.transport, Transport)
