"""Stage 5b (edge): how much GPU memory a loaded CUDA session leaves for batches.

ONNX Runtime's Python API does not report device memory, so the free memory of the session's
device is read from ``nvidia-smi`` right after the session (and its weights) loaded; the CUDA
EP's ``gpu_mem_limit`` (``EMBED_GPU_MEM_LIMIT_MB``) caps it. The budget itself is the pure
``worker.model.batching.gpu_batch_budget``. Untested on a device in this repository's CI (no
GPU): the unit tests inject the figures.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Mapping

from worker.model.batching import gpu_batch_budget

log = logging.getLogger(__name__)


def physical_gpu(device_id: int, env: Mapping[str, str] = os.environ) -> str:
    """The ``nvidia-smi -i`` index of CUDA ordinal ``device_id`` under CUDA_VISIBLE_DEVICES.

    >>> physical_gpu(1, {"CUDA_VISIBLE_DEVICES": "3,5"}), physical_gpu(0, {})
    ('5', '0')
    """
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible[device_id] if device_id < len(visible) else str(device_id)


def free_bytes(device_id: int, run: Callable[..., str] | None = None) -> int | None:
    """Free memory of the device in bytes, from ``nvidia-smi``; None when it cannot tell."""
    run = run or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                             check=True).stdout)
    cmd = ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits",
           "-i", physical_gpu(device_id)]
    try:
        return int(float(run(cmd).strip().splitlines()[0])) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        log.warning("GPU memory unknown (%s: %s): the batch budget is the fixed default",
                    " ".join(cmd), exc)
        return None


def batch_tokens(device_id: int, limit_mb: int | None, weights_bytes: int, hidden: int,
                 max_length: int, dtype_bytes: int,
                 free: Callable[[int], int | None] = free_bytes) -> int:
    """The padded-token budget of a CUDA session just loaded (logged with its reasons)."""
    tokens, why = gpu_batch_budget(free(device_id), None if limit_mb is None else limit_mb * 2**20,
                                   weights_bytes, hidden, max_length, dtype_bytes)
    log.warning("GPU batch budget: %d padded tokens per batch (%s); EMBED_MAX_BATCH_TOKENS "
                "overrides it", tokens, why)
    return tokens
