"""The task message and the device/precision policy both sides share."""

from __future__ import annotations

import json

import pytest

from worker.contract import Device, ShardTask, default_precision


def test_shard_task_is_small_json():
    payload = ShardTask(job_id="j1", job_dir="/out/j1", shard=4).to_dict()
    assert payload == {"job_id": "j1", "job_dir": "/out/j1", "shard": 4}
    assert ShardTask(**json.loads(json.dumps(payload))) == ShardTask("j1", "/out/j1", 4)


@pytest.mark.parametrize("device, variants, requested, expected", [
    (Device.GPU, ["fp32", "fp16", "int8"], "auto", "fp16"),
    (Device.GPU, ["fp32", "int8"], "auto", "fp32"),  # int8 is never picked for CUDA
    (Device.CPU, ["fp32", "fp16", "int8"], "auto", "int8"),
    (Device.CPU, ["fp32", "fp16"], "auto", "fp32"),
    ("cpu", ["fp32", "int8"], "fp32", "fp32"),  # an explicit request wins
    (Device.AUTO, ["fp32", "fp16", "int8"], "auto", "int8"),
])
def test_default_precision(device, variants, requested, expected):
    assert default_precision(device, variants, requested) == expected


def test_device_values_are_the_queue_spelling():
    assert [d.value for d in Device] == ["cpu", "gpu", "auto"]
    with pytest.raises(ValueError):
        Device("cuda")
