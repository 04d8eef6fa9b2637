"""Broker URLs from the environment and masked for logs (storage/urls.py)."""

from __future__ import annotations

from storage.urls import DEFAULT_BROKER_URL, env_broker, mask_url


def test_the_first_broker_variable_set_wins() -> None:
    assert env_broker({}) is None and env_broker({"EMBED_BROKER_URL": ""}) is None
    assert env_broker({"EMBED_BROKER_URL": "redis://a/0", "CELERY_BROKER_URL": "redis://b/0"}) \
        == "redis://a/0"
    assert env_broker({"CELERY_BROKER_URL": "amqp://b//"}) == "amqp://b//"
    assert DEFAULT_BROKER_URL.startswith("redis://127.0.0.1:")


def test_passwords_never_survive_masking() -> None:
    assert mask_url("rediss://u:s3cret@h:6380/1?ssl_cert_reqs=required") == \
        "rediss://u:***@h:6380/1?ssl_cert_reqs=required"
    assert mask_url("redis://:s3cret@h/0") == "redis://:***@h/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert mask_url(None) == "None" and mask_url("http://[bad") == "<unparsable url>"
