"""worker/tasks.py: message validation, queue → device, and the ShardContext it builds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from storage.errors import InvalidJobId
from tests.fakes import staged_job, text
from worker.contract import ShardTask
from worker.errors import BadMessage
from worker.settings import WorkerSettings
from worker.tasks import device_for_queue, read_payload, shard_context


def test_a_valid_payload_becomes_a_shard_task() -> None:
    assert read_payload({"job_dir": "/o/j-1", "job_id": "j-1", "shard": "7"}) == ShardTask(
        job_id="j-1", job_dir="/o/j-1", shard=7)


def test_job_dir_that_does_not_end_in_the_job_id_is_rejected() -> None:
    with pytest.raises(BadMessage, match=r"job_dir /o/other does not end in job id 'j-1'"):
        read_payload({"job_dir": "/o/other", "job_id": "j-1", "shard": 0})


@pytest.mark.parametrize("job_id", ["../etc", "a/b", "", ".hidden", "x" * 129])
def test_unsafe_job_ids_are_rejected(job_id: str) -> None:
    with pytest.raises(InvalidJobId, match="invalid job id"):
        read_payload({"job_dir": f"/o/{job_id}", "job_id": job_id, "shard": 0})


@pytest.mark.parametrize("payload, needle", [
    ({"job_dir": "/o/j", "job_id": "j"}, "lacks 'shard'"),
    ({"job_id": "j", "shard": 1}, "lacks 'job_dir'"),
    (["/o/j", "j", 1], "lacks"),
    ({"job_dir": "/o/j", "job_id": "j", "shard": "two"}, "shard 'two' in the message for /o/j"),
    ({"job_dir": "/o/j", "job_id": "j", "shard": True}, "shard True"),
    ({"job_dir": "/o/j", "job_id": "j", "shard": None}, "shard None"),
])
def test_malformed_payloads_name_what_is_wrong(payload: object, needle: str) -> None:
    with pytest.raises(BadMessage, match=needle.replace("(", r"\(")):
        read_payload(payload)


@pytest.mark.parametrize("device, queue, want", [
    ("queue", "gpu", "gpu"), ("queue", "cpu", "cpu"), ("queue", None, "cpu"),
    ("queue", "other", "cpu"), ("cpu", "gpu", "cpu"), ("gpu", "cpu", "gpu"),
    ("auto", "cpu", "auto"),
])
def test_device_for_queue(device: str, queue: str | None, want: str) -> None:
    assert device_for_queue(WorkerSettings(device=device), queue) == want


def test_device_for_queue_follows_a_renamed_gpu_queue() -> None:
    s = WorkerSettings(gpu_queue="cuda-a100")
    assert device_for_queue(s, "cuda-a100") == "gpu"
    assert device_for_queue(s, "gpu") == "cpu"


def fake_task(settings: WorkerSettings, routing_key: str | None) -> SimpleNamespace:
    loads: list[tuple[str, str, str]] = []
    return SimpleNamespace(
        settings=settings, loads=loads,
        request=SimpleNamespace(delivery_info={"routing_key": routing_key}, hostname="w1@h"),
        model_for=lambda *key: loads.append(key) or "model", cache_for=lambda dim: None)


def test_shard_context_from_queue_settings_and_manifest(tmp_path: Path) -> None:
    job = staged_job(tmp_path / "out", [[text(0)], [text(1)]], job_id="j")
    m = job.manifest.to_dict()  # the JSON form (a dict): write_manifest takes either
    m.update(model={"bundle_path": "/models/b"}, precision="auto")
    job.write_manifest(m)
    task = fake_task(WorkerSettings(precision="fp16", soft_time_limit=9), "gpu")
    ctx = shard_context(task, ShardTask("j", str(job.root), 1))
    assert (ctx.shard, ctx.queue, ctx.hostname, ctx.max_attempts) == (1, "gpu", "w1@h", 3)
    # 0: the loaded model's own budget (on CUDA sized to the GPU's memory: test_batching.py)
    assert ctx.max_batch_tokens == 0 and ctx.soft_time_limit == 9
    assert ctx.load_model() == "model" and task.loads == [("/models/b", "gpu", "fp16")]

    m.update(max_attempts=5, max_batch_tokens=512, precision="int8")
    job.write_manifest(m)
    task = fake_task(WorkerSettings(), None)
    ctx = shard_context(task, ShardTask("j", str(job.root), 0))
    assert (ctx.queue, ctx.max_attempts, ctx.max_batch_tokens) == ("cpu", 5, 512)
    ctx.load_model()
    assert task.loads == [("/models/b", "cpu", "int8")]
    m.pop("max_batch_tokens")
    job.write_manifest(m)
    assert shard_context(fake_task(WorkerSettings(), "cpu"),
                         ShardTask("j", str(job.root), 0)).max_batch_tokens == 0
    assert shard_context(fake_task(WorkerSettings(max_batch_tokens=2048), "gpu"),
                         ShardTask("j", str(job.root), 0)).max_batch_tokens == 2048


def test_a_jobs_own_queue_runs_as_its_base_queue(tmp_path: Path) -> None:
    """Fair share routes a job's tasks to ``gpu.job.<id>``: still the GPU, still queue 'gpu'."""
    job = staged_job(tmp_path / "out", [[text(0)]], job_id="j")
    m = job.manifest.to_dict()
    m.update(model={"bundle_path": "/models/b"}, precision="auto")
    job.write_manifest(m)
    task = fake_task(WorkerSettings(precision="fp16"), "gpu.job.j")
    ctx = shard_context(task, ShardTask("j", str(job.root), 0))
    assert ctx.queue == "gpu"
    ctx.load_model()
    assert task.loads == [("/models/b", "gpu", "fp16")]


def test_a_shard_the_manifest_does_not_list_is_a_bad_message(tmp_path: Path) -> None:
    job = staged_job(tmp_path / "out", [[text(0)]], job_id="j")
    with pytest.raises(BadMessage, match=r"shard 4 is not in .*manifest.json"):
        shard_context(fake_task(WorkerSettings(), "cpu"), ShardTask("j", str(job.root), 4))
