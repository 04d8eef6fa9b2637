"""Failpoints for the fault-injection suite (``EMBED_FAULTS``); inert when unset.

A comma-separated list, read once with the other settings:

    sleep=SECONDS          sleep before every inference batch (a slow task)
    kill_if_text=SUBSTR    SIGKILL the worker process when a batch contains SUBSTR (poison)
    raise_if_text=SUBSTR   raise an inference error when a batch contains SUBSTR
    grow=MB                allocate MB and keep it for the process's life, per batch (a leak)

Production deployments never set it; the tests use it to make faults deterministic.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from worker.errors import InferenceError

_LEAKED: list[bytearray] = []


def parse(spec: str) -> dict[str, str]:
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, _, value = part.partition("=")
        out[key] = value
    return out


def before_batch(faults: dict[str, str], texts: Sequence[str]) -> None:
    if not faults:
        return
    if "grow" in faults:
        block = bytearray(int(float(faults["grow"]) * 2**20))
        block[::4096] = b"\1" * len(block[::4096])  # touch every page: resident, not reserved
        _LEAKED.append(block)
    if "sleep" in faults:
        time.sleep(float(faults["sleep"]))
    needle = faults.get("kill_if_text")
    if needle and any(needle in t for t in texts):
        os.kill(os.getpid(), signal.SIGKILL)
    needle = faults.get("raise_if_text")
    if needle and any(needle in t for t in texts):
        raise InferenceError(f"injected failure (EMBED_FAULTS raise_if_text={needle})")
