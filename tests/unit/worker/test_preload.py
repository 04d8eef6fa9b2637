"""worker/preload.py: the spec, and the pool-process thread that loads through model_for."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from worker.contract import TASK_NAME
from worker.preload import PreloadSpec, parse_preload, start_preload
from worker.settings import WorkerSettings


def test_parse_keeps_colons_in_the_bundle_path() -> None:
    assert parse_preload("gpu:fp16:/m/a:b") == PreloadSpec("gpu", "fp16", "/m/a:b")


@pytest.mark.parametrize("raw", ["cpu:auto", "tpu:auto:/m", "cpu:fp64:/m", "cpu:auto:"])
def test_parse_rejects_bad_specs(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_preload(raw)


def test_settings_name_the_variable_of_a_bad_spec() -> None:
    with pytest.raises(ValueError, match="EMBED_PRELOAD='cpu:auto'"):
        WorkerSettings.from_env({"EMBED_PRELOAD": "cpu:auto"})


class _Task:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    def model_for(self, bundle: str, device: str, precision: str) -> Any:
        self.calls.append((bundle, device, precision))
        if self.fail:
            raise RuntimeError("no such bundle")
        return SimpleNamespace(provider="CPUExecutionProvider", precision="fp32")


def _app(task: _Task, **env: str) -> Any:
    return SimpleNamespace(settings=WorkerSettings.from_env(env), tasks={TASK_NAME: task})


def test_unset_starts_nothing() -> None:
    assert start_preload(_app(_Task())) is None


def test_loads_the_key_the_shards_will_ask_for() -> None:
    task = _Task()
    thread = start_preload(_app(task, EMBED_PRELOAD="cpu:auto:/m", EMBED_PRECISION="int8"))
    assert thread is not None
    thread.join(10)
    assert task.calls == [("/m", "cpu", "int8")]  # auto: the worker's EMBED_PRECISION


def test_embed_device_wins_and_a_failure_is_only_logged(caplog: Any) -> None:
    task = _Task(fail=True)
    thread = start_preload(_app(task, EMBED_PRELOAD="cpu:fp32:/m", EMBED_DEVICE="gpu"))
    assert thread is not None
    thread.join(10)
    assert task.calls == [("/m", "gpu", "fp32")]
    assert "PRELOAD of cpu:fp32:/m failed" in caplog.text


def test_a_task_arriving_mid_load_waits_for_it(monkeypatch: Any) -> None:
    """ModelTask.model_for holds one lock per process: the second caller gets the first's model."""
    from worker import tasks

    loads: list[str] = []
    started = threading.Event()

    def slow_load(self: Any, path: str, device: str, precision: str) -> Any:
        started.set()
        time.sleep(0.3)
        loads.append(path)
        self._models = getattr(self, "_models", {})
        self._models[(path, device, precision)] = object()
        return self._models[(path, device, precision)]

    def cached(self: Any, path: str, device: str, precision: str) -> Any:
        models = getattr(self, "_models", {})
        if (path, device, precision) in models:
            return models[(path, device, precision)]
        return slow_load(self, path, device, precision)

    monkeypatch.setattr(tasks.ModelTask, "_model_for", cached)
    task = tasks.ModelTask()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(task.model_for("/m", "cpu", "fp32")))
    t.start()
    started.wait(5)
    second = task.model_for("/m", "cpu", "fp32")
    t.join(5)
    assert loads == ["/m"] and got == [second]
