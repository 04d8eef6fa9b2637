"""Stage 5a: choose ONNX Runtime providers and the precision for a device (pure).

The pattern is fastembed's ``_load_onnx_model`` with infinity's ``device_to_onnx``: an explicit,
priority-ordered provider list; after loading, the caller reads ``session.get_providers()`` back
and reports a CUDA request that silently fell back to CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.contract import Device
from worker.errors import ProviderUnavailable

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"


def select_providers(
    device: Device | str,
    available: Sequence[str],
    *,
    device_id: int = 0,
    tensorrt: bool = False,
    strict: bool = False,
) -> list[Any]:
    """Provider list (names or ``(name, options)`` pairs) for ``device``, CPU last.

    ``gpu`` asks for CUDA even when it is not listed as available: ONNX Runtime then falls back
    to CPU and the loader reports it loudly. ``strict=True`` turns that into an error instead.
    ``auto`` uses CUDA only when available.

    >>> select_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    device = Device(device)
    if device is Device.CPU:
        return [CPU]
    has_cuda = CUDA in available
    if device is Device.AUTO and not has_cuda:
        return [CPU]
    if strict and not has_cuda:
        raise ProviderUnavailable(
            f"--device gpu (strict): {CUDA} is not available (available: {', '.join(available)}); "
            "install the `gpu` extra (onnxruntime-gpu, not together with onnxruntime) and CUDA"
        )
    cuda_opts = {
        "device_id": device_id,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
    }
    providers: list[Any] = []
    if tensorrt and TENSORRT in available:
        providers.append((TENSORRT, {
            "device_id": device_id,
            "trt_fp16_enable": True,
            # fp16 LayerNorm overflows in TensorRT give wrong sentence embeddings
            # (triton-inference-server/server#7507): keep LayerNorm in fp32.
            "trt_layer_norm_fp32_fallback": True,
            "trt_engine_cache_enable": True,
        }))
    providers.append((CUDA, cuda_opts))
    providers.append(CPU)
    return providers


def provider_names(providers: Sequence[Any]) -> list[str]:
    """Provider names of a ``select_providers`` list (options dropped).

    >>> provider_names([("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    """
    return [p[0] if isinstance(p, tuple) else p for p in providers]
