"""WorkerSettings: parsed by field type, every variable named once, the README table in step."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest

from tests.procs import ROOT
from worker.model.batching import DEFAULT_MAX_BATCH_TOKENS
from worker.settings import (DEFAULT_BROKER_URL, WorkerSettings, env_broker, env_name,
                             settings_table)


def test_defaults_without_environment():
    s = WorkerSettings.from_env({})
    assert s == WorkerSettings(cache_url=DEFAULT_BROKER_URL)
    assert s.broker_url == DEFAULT_BROKER_URL


@pytest.mark.parametrize("var, raw, attr, value", [
    ("EMBED_MAX_ATTEMPTS", "7", "max_attempts", 7),
    ("EMBED_THREADS", "3", "threads", 3),  # int | None parses as int
    ("EMBED_UNACKED_RESTORE_INTERVAL", "0.5", "unacked_restore_interval", 0.5),
    ("EMBED_GPU_STRICT", "yes", "gpu_strict", True),
    ("EMBED_TENSORRT", "0", "tensorrt", False),
    ("EMBED_TENSORRT", "On", "tensorrt", True),
    ("EMBED_HOME", "/data/home", "home", "/data/home"),
    ("EMBED_CPU_QUEUE", "cpu-big", "cpu_queue", "cpu-big"),
    ("EMBED_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
])
def test_each_value_is_parsed_by_its_field_type(var, raw, attr, value):
    got = getattr(WorkerSettings.from_env({var: raw}), attr)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("var, raw", [
    ("EMBED_MAX_ATTEMPTS", "three"), ("EMBED_THREADS", "1.5"), ("EMBED_GPU_STRICT", "maybe"),
    ("EMBED_UNACKED_RESTORE_INTERVAL", "soon"), ("EMBED_CACHE_TTL", "7d"),
])
def test_unparsable_values_name_variable_and_value(var, raw):
    with pytest.raises(ValueError, match=re.escape(f"{var}={raw!r}")):
        WorkerSettings.from_env({var: raw})


def test_empty_value_means_unset():
    assert WorkerSettings.from_env({"EMBED_MAX_ATTEMPTS": ""}).max_attempts == 3


def test_broker_variables_in_order():
    both = {"EMBED_BROKER_URL": "redis://a:1/0", "CELERY_BROKER_URL": "redis://b:2/0"}
    assert WorkerSettings.from_env(both).broker_url == "redis://a:1/0"
    assert WorkerSettings.from_env({"CELERY_BROKER_URL": "redis://b:2/0"}).broker_url \
        == "redis://b:2/0"
    assert env_broker(both) == "redis://a:1/0"
    assert env_broker({"CELERY_BROKER_URL": "redis://b:2/0"}) == "redis://b:2/0"
    assert env_broker({"EMBED_BROKER_URL": ""}) is None


@pytest.mark.parametrize("env, cache", [
    ({"EMBED_BROKER_URL": "redis://h:1/0"}, "redis://h:1/0"),
    ({"EMBED_BROKER_URL": "rediss://h:1/0"}, "rediss://h:1/0"),
    ({"EMBED_BROKER_URL": "amqp://guest@mq//"}, None),  # RabbitMQ has no cache of its own
    ({"EMBED_BROKER_URL": "redis://h:1/0", "EMBED_CACHE_URL": "redis://c:2/1"}, "redis://c:2/1"),
    ({"EMBED_BROKER_URL": "redis://h:1/0", "EMBED_CACHE_URL": "none"}, None),
    ({"EMBED_BROKER_URL": "redis://h:1/0", "EMBED_CACHE_URL": "OFF"}, None),
    ({"EMBED_BROKER_URL": "redis://h:1/0", "EMBED_CACHE_URL": ""}, None),
])
def test_cache_url_follows_the_broker_unless_set(env, cache):
    assert WorkerSettings.from_env(env).cache_url == cache


def test_every_variable_is_named_once():
    names = [v for f in fields(WorkerSettings) for v in f.metadata["env"]]
    assert len(names) == len(set(names)) == len(fields(WorkerSettings)) + 1  # + CELERY_BROKER_URL
    assert all(re.fullmatch(r"(EMBED|CELERY)_[A-Z_]+", n) for n in names)
    assert env_name("cache_ttl_s") == "EMBED_CACHE_TTL"


def test_the_broker_variables_are_the_ones_storage_reads():
    from storage.urls import BROKER_ENV

    assert next(f for f in fields(WorkerSettings) if f.name == "broker_url").metadata["env"] \
        == BROKER_ENV


def test_settings_source_names_each_variable_once():
    lines = (ROOT / "worker" / "settings.py").read_text(encoding="utf-8").splitlines()
    src = "\n".join(line for line in lines if ">>>" not in line)  # doctests may repeat them
    for f in fields(WorkerSettings):
        for var in f.metadata["env"]:
            assert len(re.findall(rf'"{var}"', src)) == 1, var


def test_check_names_the_variable():
    with pytest.raises(ValueError, match="EMBED_DEVICE='tpu'"):
        WorkerSettings.from_env({"EMBED_DEVICE": "tpu"})
    with pytest.raises(ValueError, match="EMBED_MAX_BATCH_TOKENS must be at least 16"):
        WorkerSettings.from_env({"EMBED_MAX_BATCH_TOKENS": "8"})
    with pytest.raises(ValueError, match="EMBED_GPU_QUEUE='a.job.b': a queue name may not"):
        WorkerSettings.from_env({"EMBED_GPU_QUEUE": "a.job.b"})  # a job queue's mark


def test_readme_table_is_the_generated_one():
    """README.md's configuration table is ``settings_table()``; on a mismatch paste the output
    of ``python -c 'from worker.settings import settings_table; print(settings_table())'``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = settings_table()
    assert table in readme, "README configuration table is stale; expected:\n" + table


def test_table_defaults_match_the_code():
    table = settings_table()
    assert f"`{DEFAULT_BROKER_URL}`" in table
    assert f"`{DEFAULT_MAX_BATCH_TOKENS['cpu']}` cpu / gpu: sized to its free memory" in table
    assert f"`{WorkerSettings().cache_ttl_s}` (7 days)" in table
    assert table.count("\n") == len(fields(WorkerSettings)) + 1


@pytest.mark.parametrize("threads, concurrency, expected", [(3, 8, 3), (None, 10**6, 1)])
def test_intra_op_threads(threads, concurrency, expected):
    assert WorkerSettings(threads=threads).intra_op_threads(concurrency) == expected
