"""What crosses the producer → worker boundary: the task message (JSON, a few hundred bytes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TASK_NAME = "embedfleet.embed_shard"


@dataclass(frozen=True)
class ShardTask:
    """One Celery message: a reference to a staged input shard, never texts or vectors."""

    job_id: str
    job_dir: str
    shard: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
