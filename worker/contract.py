"""What crosses the producer → worker boundary: the task message (JSON, a few hundred bytes),
the device a queue stands for, and the precision a device runs by default (the producer's dry
run keys the cache on the same fingerprint the worker will use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

TASK_NAME = "embedfleet.embed_shard"
PRIORITIES = {"high": 0, "normal": 3, "low": 6}
"""``--priority`` name → Celery task priority on Redis (lower runs first; producer/priority.py)."""


def task_priority(name: str | None) -> int:
    """The Celery priority of a job's tasks (None: normal).

    >>> task_priority("high"), task_priority(None), task_priority("low")
    (0, 3, 6)
    """
    return PRIORITIES[name or "normal"]



@dataclass(frozen=True)
class ShardTask:
    """One Celery message: a reference to a staged input shard, never texts or vectors."""

    job_id: str
    job_dir: str
    shard: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Device(str, Enum):
    """Where a shard runs: the queue names it (``cpu``/``gpu``); ``auto`` = GPU when present.

    ONNX Runtime's name for the GPU is the provider (``CUDAExecutionProvider``), never a device.
    """

    CPU = "cpu"
    GPU = "gpu"
    AUTO = "auto"


def default_precision(device: Device | str, variants: Sequence[str],
                      requested: str = "auto") -> str:
    """The precision to run: the requested one, or the fast variant the bundle has.

    GPU: fp16, else fp32. CPU: int8 (only written when it passed the quality gate), else fp32.
    Dynamically quantised int8 is never used on CUDA (Optimum: not supported there).

    >>> default_precision("cpu", ["fp32", "int8"])
    'int8'
    >>> default_precision(Device.GPU, ["fp32", "int8"])
    'fp32'
    """
    if requested and requested != "auto":
        return requested
    if Device(device) is Device.GPU:
        return "fp16" if "fp16" in variants else "fp32"
    return "int8" if "int8" in variants else "fp32"


STAGE_TASK_NAME = "embedfleet.stage_split"
STAGE_QUEUE = "stage"
"""Queue of stage tasks (``--stage-on fleet``): workers that can read the corpus consume it."""


@dataclass(frozen=True)
class StageTask:
    """One Celery message: stage split ``split`` of a job (the plan is in its manifest)."""

    job_id: str
    job_dir: str
    split: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
