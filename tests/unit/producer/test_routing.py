"""Stage 4: the routing rule (pure) and ``auto`` answered by real workers on a real broker."""

from __future__ import annotations

import pytest

from producer.broker import connect
from producer.routing import choose_queue, queue_for


@pytest.mark.parametrize("choice, gpu_consumed, expected", [
    ("cpu", True, "cpu"), ("gpu", False, "gpu"), ("auto", False, "cpu"), ("auto", True, "gpu"),
])
def test_queue_for(choice, gpu_consumed, expected):
    assert queue_for(choice, gpu_consumed) == expected


def test_queue_for_uses_the_configured_names():
    assert queue_for("auto", True, cpu_queue="c", gpu_queue="g-big") == "g-big"
    assert queue_for("cpu", True, cpu_queue="c", gpu_queue="g") == "c"


@pytest.mark.parametrize("choice", ["cuda", "GPU", ""])
def test_unknown_choice_names_the_option(choice):
    with pytest.raises(ValueError, match=f"--queue {choice!r}: use cpu, gpu or auto"):
        queue_for(choice, False)


def test_explicit_choice_never_asks_the_fleet():
    class NoBroker:  # any use of the app would raise AttributeError
        pass

    assert choose_queue(NoBroker(), "gpu") == "gpu"


@pytest.mark.integration
def test_auto_without_a_gpu_worker_goes_to_cpu(redis_url):
    said: list[str] = []
    assert choose_queue(connect(redis_url), "auto", log=said.append) == "cpu"
    assert said == ["--queue auto: no worker consumes 'gpu'; sending to 'cpu'"]


@pytest.mark.integration
def test_auto_with_a_gpu_worker_goes_to_gpu(fleet, redis_url):
    fleet(queue="gpu")
    said: list[str] = []
    assert choose_queue(connect(redis_url), "auto", log=said.append) == "gpu"
    assert said == ["--queue auto: a worker consumes 'gpu'; sending to 'gpu'"]
