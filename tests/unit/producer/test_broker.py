"""The broker edge against a real redis-server: connect fails fast and masks the password,
one JSON message per shard lands on the queue, the backlog counts queued and unacked."""

from __future__ import annotations

import base64
import json
import time

import pytest

from producer.broker import broker_backlog, connect, send_shards
from producer.local import free_port
from storage.jobdir import JobDir
from worker.contract import TASK_NAME
from worker.fairshare import all_list_keys, job_queues

pytestmark = pytest.mark.integration


def _messages(redis_server, queue: str) -> list[dict]:
    """Every message of ``queue``, over its priority lists (normal: ``queue\x06\x163``) and its
    job queues'."""
    r = redis_server.client()
    raw = [m for k, _ in all_list_keys(r, queue) for m in r.lrange(k, 0, -1)]
    return [json.loads(m) for m in raw]


def test_connect_returns_an_app_for_that_broker(redis_url):
    app = connect(redis_url)
    assert app.conf.broker_url == redis_url
    assert TASK_NAME in app.tasks


def test_unreachable_broker_fails_fast_with_the_password_masked():
    url = f"redis://user:hunter2@127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as err:
        connect(url)
    assert time.monotonic() - t0 < 15
    assert "redis://user:***@127.0.0.1" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_one_small_message_per_shard(tmp_path, redis_server, redis_url):
    job = JobDir.create(tmp_path, "job-1")
    app = connect(redis_url)
    send_shards(app, job, [0, 2, 5], "cpu")
    msgs = _messages(redis_server, "cpu")
    assert len(msgs) == 3
    payloads = []
    for m in msgs:
        assert m["headers"]["task"] == TASK_NAME
        assert m["content-type"] == "application/json"
        args, kwargs, _ = json.loads(base64.b64decode(m["body"]))
        assert kwargs == {} and len(json.dumps(args)) < 500
        payloads.append(args[0])
    assert sorted(p["shard"] for p in payloads) == [0, 2, 5]
    assert {m["properties"]["priority"] for m in msgs} == {3}  # normal (no manifest)
    assert {(p["job_id"], p["job_dir"]) for p in payloads} == {("job-1", str(job.root))}
    assert job_queues(redis_server.client(), "cpu") == ["cpu.job.job-1"]  # the job's own queue
    assert redis_server.client().llen("cpu.job.job-1\x06\x163") == 3


def test_backlog_counts_queued_and_unacked(tmp_path, redis_server, redis_url):
    job = JobDir.create(tmp_path, "job-2")
    assert broker_backlog(redis_url, "cpu") == 0
    send_shards(connect(redis_url), job, [0, 1], "cpu")
    assert broker_backlog(redis_url, "cpu") == 2
    assert broker_backlog(redis_url, "gpu") == 0
    redis_server.client().hset("unacked", "tag-1", "{}")
    assert broker_backlog(redis_url, "cpu") == 3


@pytest.mark.parametrize("url", [None, "amqp://guest:guest@127.0.0.1:5672//"])
def test_backlog_unknown_without_a_redis_broker(url):
    assert broker_backlog(url, "cpu") is None


def test_backlog_unknown_when_redis_is_down():
    assert broker_backlog(f"redis://127.0.0.1:{free_port()}/0", "cpu") is None
