"""The Celery configuration as a plain dict (no broker needed), URL masking, settings checks.

A real worker against a password-protected (and a TLS) redis-server never printing the password
is tests/integration/test_redis_auth.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from worker.celery_app import celery_config
from worker.settings import WorkerSettings, mask_url

SECRET = "s3cr3t-Pa55word"
INSECURE = ("pickle", "yaml", "msgpack")  # kombu groups msgpack with the unsafe ones


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _walk(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _walk(v)
    else:
        yield value


@pytest.fixture(params=["redis://127.0.0.1:6379/0", "rediss://:pw@cache.example:6380/0",
                        "amqp://guest:guest@127.0.0.1:5672//"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return celery_config(WorkerSettings(broker_url=request.param))


def test_json_only_and_no_insecure_serializer_anywhere(config):
    assert config["task_serializer"] == config["result_serializer"] == "json"
    assert config["event_serializer"] == "json"
    assert config["accept_content"] == ["json"]
    assert config["result_accept_content"] == ["json"]
    for v in _walk(config):
        if isinstance(v, str):
            assert not any(bad in v.lower() for bad in INSECURE), v


def test_at_least_once_delivery_settings(config):
    assert config["task_acks_late"] is True
    assert config["task_reject_on_worker_lost"] is True
    assert config["worker_prefetch_multiplier"] == 1
    assert config["worker_cancel_long_running_tasks_on_connection_loss"] is True
    # A hard time limit kills the child: requeue its message (the attempt files cap it).
    assert config["task_acks_on_timeout"] is False
    assert config["task_ignore_result"] is True


def test_default_timeouts_are_ordered():
    s = WorkerSettings()
    cfg = celery_config(s)
    vt = cfg["broker_transport_options"]["visibility_timeout"]
    assert vt == cfg["visibility_timeout"] == s.visibility_timeout
    assert vt > cfg["task_time_limit"] > cfg["task_soft_time_limit"] > 0
    env = WorkerSettings.from_env({})
    assert env.visibility_timeout > env.time_limit > env.soft_time_limit


def test_redis_transport_options():
    cfg = celery_config(WorkerSettings(broker_url="redis://127.0.0.1:6379/0",
                                       unacked_restore_interval=1))
    t = cfg["broker_transport_options"]
    # socket_timeout must exceed kombu's 1 s BRPOP wait (redis/redis-py#583)
    assert t["socket_timeout"] > 1 and t["socket_connect_timeout"] > 0
    assert t["socket_keepalive"] is True and t["health_check_interval"] > 0
    assert t["unacked_restore_interval"] == 1 and t["unacked_restore_throttle"] == 1
    # A restore mutex persisted by an AOF broker restart must not block restores for 300 s.
    assert t["unacked_mutex_expire"] <= 10
    assert "confirm_publish" not in t


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672//",
                                 "amqps://u:p@mq.example:5671/vh", "pyamqp://127.0.0.1//"])
def test_confirm_publish_for_amqp(url):
    t = celery_config(WorkerSettings(broker_url=url))["broker_transport_options"]
    assert t["confirm_publish"] is True
    assert "visibility_timeout" not in t


@pytest.mark.parametrize("url, masked", [
    ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
    ("rediss://:pw@host:6380/0?ssl_cert_reqs=required",
     "rediss://:***@host:6380/0?ssl_cert_reqs=required"),
    ("amqp://guest:guest@127.0.0.1:5672//", "amqp://guest:***@127.0.0.1:5672//"),
    (f"redis://app:{SECRET}@10.0.0.5/1", "redis://app:***@10.0.0.5/1"),
    ("redis://app:p%40ss%23word@host/0", "redis://app:***@host/0"),  # URL-encoded @ and #
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("amqp://127.0.0.1//", "amqp://127.0.0.1//"),
])
def test_mask_url_hides_passwords(url, masked):
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", [None, "", "redis://:@host/0", "not a url", "redis://user@h/0"])
def test_mask_url_odd_inputs_do_not_raise(url):
    out = mask_url(url)
    assert isinstance(out, str)


def test_rediss_urls_are_accepted():
    url = "rediss://:pw@cache.example:6380/0?ssl_cert_reqs=required"
    s = WorkerSettings.from_env({"EMBED_BROKER_URL": url})
    assert s.broker_url == url
    assert s.cache_url == url  # the cache defaults to the broker's Redis, TLS included
    cfg = celery_config(s)
    assert cfg["broker_transport_options"]["visibility_timeout"] == s.visibility_timeout
    s2 = WorkerSettings.from_env({"EMBED_BROKER_URL": "amqp://guest:guest@mq//",
                                  "EMBED_CACHE_URL": url})
    assert s2.cache_url == url


def test_invalid_precision_names_the_variable():
    with pytest.raises(ValueError, match="EMBED_PRECISION"):
        WorkerSettings.from_env({"EMBED_PRECISION": "fp64"})


@pytest.mark.parametrize("var, value", [
    ("EMBED_DEVICE", "tpu"), ("EMBED_CACHE_DTYPE", "int8"), ("EMBED_MAX_ATTEMPTS", "0"),
    ("EMBED_TIME_LIMIT", "ten"), ("EMBED_VISIBILITY_TIMEOUT", "1.5"),
])
def test_invalid_values_name_the_variable(var, value):
    with pytest.raises(ValueError, match=var):
        WorkerSettings.from_env({var: value})


def test_fleet_defaults_send_no_events_and_skip_gossip_and_mingle():
    from worker.celery_app import FleetConsumer, fleet_worker_options

    quiet = WorkerSettings()
    cfg = celery_config(quiet)
    assert cfg["worker_send_task_events"] is False and cfg["task_send_sent_event"] is False
    assert cfg["result_backend"] is None
    assert cfg["worker_consumer"] == "worker.celery_app:FleetConsumer"
    assert fleet_worker_options(quiet) == {"without_gossip": True, "without_mingle": True,
                                           "without_heartbeat": True}
    loud = WorkerSettings.from_env({"EMBED_EVENTS": "1"})
    assert celery_config(loud)["worker_send_task_events"] is True
    assert fleet_worker_options(loud)["without_heartbeat"] is False
    assert FleetConsumer.__mro__[1].__name__ == "Consumer"
