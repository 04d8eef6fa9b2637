"""Load a pool process's model as the process starts (``EMBED_PRELOAD``), not at its first task.

``producer run`` knows the job's bundle, device and precision before it stages anything, so its
worker starts loading (the CPU-runtime probe, the session, OpenVINO's compile) while the
producer stages: the first shard finds the model ready instead of waiting for it. The load runs
in a thread of the pool process (``worker_process_init`` must return within Celery's few
seconds); ``ModelTask.model_for`` holds a per-process lock, so a task that arrives mid-load
waits for that load instead of starting a second one. A preload that fails is only logged: the
first task loads the model again and reports the error as it always did.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu", "auto")


@dataclass(frozen=True)
class PreloadSpec:
    """What to load: the ``model_for`` key of the shards to come."""

    device: str
    precision: str
    bundle: str

    def __str__(self) -> str:
        return f"{self.device}:{self.precision}:{self.bundle}"


def parse_preload(raw: str) -> PreloadSpec:
    """``DEVICE:PRECISION:BUNDLE`` (the bundle path may itself contain colons).

    >>> parse_preload("cpu:auto:/models/minilm")
    PreloadSpec(device='cpu', precision='auto', bundle='/models/minilm')
    """
    parts = raw.split(":", 2)
    if len(parts) != 3 or not parts[2]:
        raise ValueError("expected DEVICE:PRECISION:BUNDLE, e.g. cpu:auto:/models/minilm")
    device, precision, bundle = parts
    if device not in DEVICES:
        raise ValueError(f"device {device!r}: use {', '.join(DEVICES)}")
    if precision not in ("auto", "fp32", "fp16", "int8", "bf16"):
        raise ValueError(f"precision {precision!r}: use auto, fp32, fp16, int8 or bf16")
    return PreloadSpec(device, precision, bundle)


def start_preload(app: Any) -> threading.Thread | None:
    """In a pool process: load ``EMBED_PRELOAD``'s model in a daemon thread (None: not set).

    The key follows ``worker.tasks.shard_context``: ``EMBED_DEVICE`` wins over the spec's
    device, and ``auto`` precision means the worker's ``EMBED_PRECISION``."""
    from worker.contract import TASK_NAME

    s = app.settings
    if not s.preload:
        return None
    spec = parse_preload(s.preload)
    device = spec.device if s.device == "queue" else s.device
    precision = s.precision if spec.precision == "auto" else spec.precision
    task = app.tasks[TASK_NAME]

    def load() -> None:
        t0 = time.perf_counter()
        try:
            model = task.model_for(spec.bundle, device, precision)
        except Exception as exc:  # noqa: BLE001 - the first task loads again and reports it
            log.warning("PRELOAD of %s failed (%s: %s); the first task loads the model instead",
                        spec, type(exc).__name__, exc)
            return
        log.info("preloaded %s in %.1f s (%s/%s)", spec.bundle, time.perf_counter() - t0,
                 model.provider, model.precision)

    thread = threading.Thread(target=load, name="embedfleet-preload", daemon=True)
    thread.start()
    return thread
