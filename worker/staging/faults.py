"""Failpoints for the staging crash tests (``EMBED_STAGE_FAULTS``); inert when unset.

A comma-separated list of ``point=N``: the Nth time this producer passes ``point`` it is
SIGKILLed (with its staging processes). Points, in the order a shard passes them:

    mid_shard_write=N   a temporary input shard is half written
    after_record=N      the shard and its ledger checkpoint are durable, its task not yet sent
    after_send=N        the shard's task is on the broker
    slow_shard=SECONDS  sleep after every shard (a slow corpus, to watch staging progress)

Production never sets it; the tests use it to kill the producer at exact points (the producer
counterpart of ``worker/faults.py``).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

_counts: dict[str, int] = {}


def _spec() -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in os.environ.get("EMBED_STAGE_FAULTS", "").split(","))):
        key, _, value = part.partition("=")
        out[key] = value or "1"
    return out


def hit(point: str, before_kill: Callable[[], None] | None = None) -> None:
    """Count one pass of ``point``; SIGKILL the producer when the spec says so."""
    spec = _spec()
    if point not in spec:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(spec[point]):
        if before_kill is not None:
            before_kill()
        parent = os.environ.get("EMBED_STAGE_PARENT")
        if parent and int(parent) != os.getpid():  # a staging process takes the producer down
            os.kill(int(parent), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def pause(point: str) -> None:
    """Sleep as long as the spec says for ``point`` (a float, seconds)."""
    value = _spec().get(point)
    if value:
        time.sleep(float(value))
