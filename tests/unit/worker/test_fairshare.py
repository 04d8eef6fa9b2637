"""worker/fairshare.py and its transport hooks: job queue names, the cycle a worker BRPOPs in,
the registry (pruned atomically, re-registered by a restore), and, against a real
redis-server, a consumer of ``cpu`` taking from two jobs' queues in turn, high priority first."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from kombu import Consumer

from worker.celery_app import create_app
from worker.contract import TASK_NAME
from worker.fairshare import (FairCycle, base_of, job_queue, job_queues, live_job_queues,
                              queued_messages, registry_key, shard_queue)
from worker.settings import WorkerSettings


def test_names_round_trip():
    assert job_queue("cpu", "20261205T0101Z-ab.c") == "cpu.job.20261205T0101Z-ab.c"
    assert base_of(job_queue("gpu", "x.job.y")) == "gpu"
    assert base_of("cpu") is None and base_of(".job.x") is None and base_of("cpu.job.") is None


def test_shard_queue_is_the_jobs_own_on_redis_only():
    def app(url: str, fair: bool = True) -> SimpleNamespace:
        return SimpleNamespace(conf=SimpleNamespace(broker_url=url),
                               settings=SimpleNamespace(fair_share=fair))

    assert shard_queue(app("redis://h/0"), "cpu", "j") == "cpu.job.j"
    assert shard_queue(app("rediss://h/0"), "gpu", "j") == "gpu.job.j"
    assert shard_queue(app("redis://h/0", fair=False), "cpu", "j") == "cpu"  # EMBED_FAIR_SHARE=0
    assert shard_queue(app("amqp://h//"), "cpu", "j") == "cpu"  # RabbitMQ: no fair share


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_cycle_takes_each_queue_in_turn_and_reads_the_registry_at_most_once_a_second():
    live = {"cpu": ["cpu.job.a", "cpu.job.b"]}
    reads: list[str] = []
    clock = Clock()

    def fetch(base: str) -> list[str]:
        reads.append(base)
        return list(live[base])

    c = FairCycle(fetch, clock=clock, every=1.0)
    c.update(["cpu"])
    assert c.consume(1) == ["cpu", "cpu.job.a", "cpu.job.b"]
    c.rotate("cpu.job.a")  # a message came from job a: it goes to the back
    assert c.consume(1) == ["cpu", "cpu.job.b", "cpu.job.a"]
    c.rotate("cpu.job.b")
    assert c.consume(1) == ["cpu", "cpu.job.a", "cpu.job.b"]
    assert reads == ["cpu"]  # within the second: no new read
    live["cpu"] = ["cpu.job.b", "cpu.job.c"]  # a drained, c submitted
    clock.t = 1.0
    assert c.consume(1) == ["cpu", "cpu.job.b", "cpu.job.c"]  # order kept, the new one last
    c.rotate("cpu")
    assert c.consume(1) == ["cpu.job.b", "cpu.job.c", "cpu"]
    assert reads == ["cpu", "cpu"]
    c.update(["cpu", "gpu"])  # a queue added: read again at once
    live["gpu"] = ["gpu.job.d"]
    assert c.consume(2) == ["cpu.job.b", "cpu.job.c", "cpu", "gpu", "gpu.job.d"]


def test_cycle_keeps_the_last_known_queues_while_the_registry_cannot_be_read(caplog):
    clock, fail = Clock(), [False]

    def fetch(base: str) -> list[str]:
        if fail[0]:
            raise ConnectionError("partitioned")
        return ["cpu.job.a"]

    c = FairCycle(fetch, clock=clock)
    c.update(["cpu"])
    assert c.consume(1) == ["cpu", "cpu.job.a"]
    fail[0] = True
    with caplog.at_level(logging.WARNING, logger="worker.fairshare"):
        for t in (1.0, 2.0, 3.0):
            clock.t = t
            assert c.consume(1) == ["cpu", "cpu.job.a"]
    assert [r.getMessage() for r in caplog.records] == [
        "cannot read the job queues of 'cpu' (ConnectionError: partitioned); consuming the "
        "last known ones until the broker answers"]  # once per failure streak


@pytest.mark.integration
def test_registry_drops_drained_job_queues_only(redis_server, redis_url):
    r = redis_server.client()
    r.sadd(registry_key("cpu"), "cpu.job.a", "cpu.job.b", "cpu.job.c")
    r.lpush("cpu.job.a\x06\x166", "m")  # a low-priority message
    r.lpush("cpu.job.c", "m")  # a high one
    assert job_queues(r, "cpu") == ["cpu.job.a", "cpu.job.b", "cpu.job.c"]  # read only
    assert sorted(live_job_queues(r, "cpu")) == ["cpu.job.a", "cpu.job.c"]
    assert job_queues(r, "cpu") == ["cpu.job.a", "cpu.job.c"]
    r.lpush("cpu\x06\x163", "m")
    assert queued_messages(r, "cpu") == 3


def _send(app, job: str, priority: int) -> None:
    app.send_task(TASK_NAME, args=[{"job_id": job, "job_dir": "/x", "shard": 0}],
                  queue=job_queue("cpu", job), priority=priority)


@pytest.mark.integration
def test_a_consumer_of_cpu_takes_the_jobs_in_turn_high_priority_first(redis_server, redis_url):
    app = create_app(WorkerSettings(broker_url=redis_url))
    for _ in range(3):
        _send(app, "a", 3)
    for _ in range(3):
        _send(app, "b", 3)
    _send(app, "urgent", 0)
    r = redis_server.client()
    assert job_queues(r, "cpu") == ["cpu.job.a", "cpu.job.b", "cpu.job.urgent"]
    assert queued_messages(r, "cpu") == 7
    got: list[str] = []

    def on_message(body, message) -> None:  # noqa: ANN001
        got.append(message.delivery_info["routing_key"].rsplit(".", 1)[1])
        message.ack()

    with app.connection_for_read() as conn:
        with Consumer(conn, queues=[app.amqp.queues["cpu"]], callbacks=[on_message],
                      prefetch_count=1):
            while len(got) < 7:
                conn.drain_events(timeout=10)
    assert got[0] == "urgent"
    assert sorted(got[1:]) == ["a"] * 3 + ["b"] * 3
    assert all(x != y for x, y in zip(got[1:], got[2:])), got  # a, b, a, b, ... (or b first)
    assert queued_messages(r, "cpu") == 0 and r.hlen("unacked") == 0
    assert live_job_queues(r, "cpu") == []
    assert not [k for k in r.keys() if b"job" in k], r.keys()  # no binding table per job


@pytest.mark.integration
def test_a_rejected_message_goes_back_to_its_job_queue_registered(redis_server, redis_url):
    """A restore (a dead worker's unacked message, a reject) re-registers the job queue in the
    same MULTI: the registry may have dropped it while the message was out."""
    app = create_app(WorkerSettings(broker_url=redis_url))
    _send(app, "a", 3)
    r = redis_server.client()
    with app.connection_for_read() as conn:
        ch = conn.default_channel
        msg = ch.basic_get("cpu.job.a", no_ack=False)
        assert msg is not None and r.hlen("unacked") == 1
        assert live_job_queues(r, "cpu") == []  # drained while the message is out: dropped
        ch.basic_reject(msg.delivery_tag, requeue=True)
    assert job_queues(r, "cpu") == ["cpu.job.a"]
    assert r.llen("cpu.job.a\x06\x163") == 1 and r.hlen("unacked") == 0
