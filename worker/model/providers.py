"""Stage 5: choose ONNX Runtime providers and the precision for a device (pure).

The pattern is fastembed's ``_load_onnx_model`` with infinity's ``device_to_onnx``: an explicit,
priority-ordered provider list; after loading, the caller reads ``session.get_providers()`` back
and reports a CUDA request that silently fell back to CPU.

On CPU there are two providers: ONNX Runtime's own CPU EP (fp32, int8 graphs) and the OpenVINO
EP (the fp32 graph at fp32, or at bf16 through OpenVINO's inference-precision hint). Issue 14
measured, on a 2-core Xeon with AMX: CPU EP fp32 5,448 tok/s, CPU EP int8 8,624, OpenVINO EP
bf16 17,141 (min cosine 0.99995 vs fp32, int8 0.990). ``choose_cpu_runtime`` decides from the
available providers, the CPU flags and the measured gate results (``worker/model/probe.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from worker.contract import Device
from worker.errors import ProviderUnavailable

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""CPU flags (``/proc/cpuinfo``) with native bf16 math; without them OpenVINO runs bf16 in f32."""
INT8_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
"""CPU flags with int8 dot products (VNNI/AMX): dynamic int8 pays most with them."""
BF16_MIN_COSINE = 0.9995
"""bf16 is used only when its min cosine vs fp32 on the gate sample reaches this (issue 14)."""
FP32_MIN_COSINE = 0.9995
"""A provider's fp32 must agree with the CPU EP's fp32 this well to be used at all."""
LOSSY = frozenset({"int8"})
"""Precisions that change the vectors measurably: dynamic int8 (min cosine ~0.99 vs fp32, and
its vectors move with batch composition, cosine ~0.98 alone vs batched)."""
LOSSY_MARGIN = 1.15
"""Under ``auto`` a lossy candidate is used only when it is this much faster than the fastest
near-lossless one (fp32, or bf16 within its gate) that passed: a few percent of speed, or
probe noise, does not buy vectors that differ by 1%."""


class CpuProvider(str, Enum):
    """``EMBED_CPU_PROVIDER``: which provider a CPU worker uses (auto = measured at start)."""

    AUTO = "auto"
    CPU = "cpu"
    OPENVINO = "openvino"


@dataclass(frozen=True)
class Candidate:
    """One way to run the bundle on CPU: a provider and a (runtime) precision."""

    provider: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.provider.removesuffix('ExecutionProvider')}/{self.precision}"


@dataclass(frozen=True)
class Measured:
    """What the start-up probe saw for one candidate (``error`` set: it did not run)."""

    candidate: Candidate
    tokens_per_s: float = 0.0
    cos_min: float | None = None
    error: str = ""


@dataclass(frozen=True)
class Choice:
    """The provider and precision a CPU worker runs, and why (logged, shown in the probe file)."""

    provider: str
    precision: str
    reason: str

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.provider, self.precision)


def select_providers(
    device: Device | str,
    available: Sequence[str],
    *,
    device_id: int = 0,
    tensorrt: bool = False,
    strict: bool = False,
    gpu_mem_limit_mb: int | None = None,
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
    if gpu_mem_limit_mb:
        cuda_opts["gpu_mem_limit"] = int(gpu_mem_limit_mb) * 2**20
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


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text.

    >>> sorted(parse_cpu_flags("processor : 0\\nflags : fpu avx512_vnni amx_bf16\\n"))
    ['amx_bf16', 'avx512_vnni', 'fpu']
    """
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_candidates(available: Sequence[str], flags: Iterable[str], variants: Sequence[str],
                   override: CpuProvider | str = CpuProvider.AUTO) -> list[Candidate]:
    """What the start-up probe measures, the reference (CPU EP fp32) first.

    >>> [c.label for c in cpu_candidates([OPENVINO, CPU], {"amx_bf16"}, ["fp32", "int8"])]
    ['CPU/fp32', 'CPU/int8', 'OpenVINO/fp32', 'OpenVINO/bf16']
    """
    out = [Candidate(CPU, "fp32")]
    if CpuProvider(override) is not CpuProvider.OPENVINO and "int8" in variants:
        out.append(Candidate(CPU, "int8"))
    if OPENVINO in available and CpuProvider(override) is not CpuProvider.CPU:
        out.append(Candidate(OPENVINO, "fp32"))
        if BF16_FLAGS & set(flags):
            out.append(Candidate(OPENVINO, "bf16"))
    return out


def choose_cpu_runtime(
    available: Sequence[str],
    flags: Iterable[str],
    variants: Sequence[str],
    measured: Mapping[Candidate, Measured] | None = None,
    *,
    override: CpuProvider | str = CpuProvider.AUTO,
    precision: str = "auto",
) -> Choice:
    """The CPU provider and precision to run (pure).

    An explicit ``precision`` wins (bf16 means the OpenVINO EP; fp32/int8 the CPU EP unless
    ``override`` says openvino). ``auto`` takes the fastest measured candidate that ran and passed
    its gate (bf16 and OpenVINO fp32: min cosine vs CPU-EP fp32; int8 passed at export), int8
    only when ``LOSSY_MARGIN`` faster than the fastest near-lossless one. Without
    measurements, or when nothing else passed, it is today's default: CPU EP int8, else fp32.

    Raises:
        ProviderUnavailable: the user asked for something this machine cannot run.
    """
    override, flags = CpuProvider(override), frozenset(flags)
    has_ov = OPENVINO in available
    if precision == "bf16" or (override is CpuProvider.OPENVINO and precision != "auto"):
        if override is CpuProvider.CPU:
            raise ProviderUnavailable("precision bf16 runs on the OpenVINO EP only; "
                                      "EMBED_CPU_PROVIDER=cpu excludes it")
        _need_openvino(available, f"precision {precision}")
        failed = (measured or {}).get(Candidate(OPENVINO, precision))
        if failed is not None and failed.error:
            raise ProviderUnavailable(f"{OPENVINO} cannot run {precision}: {failed.error}")
        if precision == "bf16" and not BF16_FLAGS & flags:
            raise ProviderUnavailable(
                "precision bf16: this CPU has none of " + ", ".join(sorted(BF16_FLAGS))
                + " (OpenVINO would silently compute in fp32); use fp32 or auto")
        return Choice(OPENVINO, precision, f"requested: {precision} on {OPENVINO}")
    if precision != "auto":
        return Choice(CPU, precision, f"requested: {precision} on {CPU}")
    fallback = Choice(CPU, "int8" if "int8" in variants else "fp32", "")
    if override is CpuProvider.OPENVINO:
        _need_openvino(available, "EMBED_CPU_PROVIDER=openvino")
    elif override is CpuProvider.CPU or not has_ov:
        why = "EMBED_CPU_PROVIDER=cpu" if override is CpuProvider.CPU else f"no {OPENVINO}"
        return Choice(fallback.provider, fallback.precision, f"{why}: CPU EP default")
    ok, notes = _passing(cpu_candidates(available, flags, variants, override), measured or {})
    if override is CpuProvider.OPENVINO:
        ok = [m for m in ok if m.candidate.provider == OPENVINO]
        if not ok:
            raise ProviderUnavailable("EMBED_CPU_PROVIDER=openvino: no OpenVINO candidate "
                                      "passed (" + "; ".join(notes) + ")")
    if not ok:
        return Choice(fallback.provider, fallback.precision,
                      "nothing measured passed (" + "; ".join(notes) + "): CPU EP default")
    best = max(ok, key=lambda m: m.tokens_per_s)
    figures = ", ".join(f"{m.candidate.label} {m.tokens_per_s:,.0f} tok/s" for m in ok)
    reason = f"fastest that passed: {figures}"
    exact = [m for m in ok if m.candidate.precision not in LOSSY]
    if best.candidate.precision in LOSSY and exact:
        alt = max(exact, key=lambda m: m.tokens_per_s)
        if best.tokens_per_s < LOSSY_MARGIN * alt.tokens_per_s:
            reason = (f"{alt.candidate.label}: {best.candidate.label} is under "
                      f"{LOSSY_MARGIN}x faster and lossy ({figures})")
            best = alt
    reason += f"; not used: {'; '.join(notes)}" if notes else ""
    return Choice(best.candidate.provider, best.candidate.precision, reason)


def _passing(cands: Sequence[Candidate], measured: Mapping[Candidate, Measured]
             ) -> tuple[list[Measured], list[str]]:
    ok, notes = [], []
    for c in cands:
        m = measured.get(c)
        floor = {"bf16": BF16_MIN_COSINE, "fp32": FP32_MIN_COSINE}.get(c.precision)
        if m is None:
            notes.append(f"{c.label} not measured")
        elif m.error:
            notes.append(f"{c.label} failed to run ({m.error})")
        elif c.provider != CPU and floor is not None and (m.cos_min is None or m.cos_min < floor):
            notes.append(f"{c.label} min cosine {m.cos_min} < {floor} vs fp32")
        else:
            ok.append(m)
    return ok, notes


def _need_openvino(available: Sequence[str], what: str) -> None:
    if OPENVINO not in available:
        raise ProviderUnavailable(
            f"{what} needs {OPENVINO} (available: {', '.join(available)}); install the `cpu` "
            "extra on x86-64 Linux (onnxruntime-openvino, instead of onnxruntime)")
