"""Provider lists per device (pure): CPU last, CUDA asked for on gpu, strict mode, TensorRT;
the CPU provider/precision choice for every branch, and the cpuinfo parser."""

from __future__ import annotations

import pytest

from worker.contract import Device
from worker.errors import ProviderUnavailable
from worker.model.providers import (
    CPU, CUDA, OPENVINO, TENSORRT, Candidate, Measured, choose_cpu_runtime, cpu_candidates,
    parse_cpu_flags, provider_names, select_providers,
)

WITH_CUDA = [TENSORRT, CUDA, CPU]
CPU_ONLY = [CPU]


@pytest.mark.parametrize("device, available, names", [
    (Device.CPU, WITH_CUDA, [CPU]),
    ("cpu", CPU_ONLY, [CPU]),
    (Device.AUTO, CPU_ONLY, [CPU]),
    (Device.AUTO, WITH_CUDA, [CUDA, CPU]),
    (Device.GPU, WITH_CUDA, [CUDA, CPU]),
    # asked for even when missing: ONNX Runtime falls back and the loader reports it
    (Device.GPU, CPU_ONLY, [CUDA, CPU]),
])
def test_provider_order(device, available, names):
    assert provider_names(select_providers(device, available)) == names


def test_cuda_options_carry_the_device_id():
    providers = select_providers("gpu", WITH_CUDA, device_id=3)
    (name, opts), cpu = providers
    assert (name, cpu) == (CUDA, CPU)
    assert opts["device_id"] == 3 and opts["arena_extend_strategy"] == "kSameAsRequested"


def test_strict_gpu_without_cuda_raises_naming_what_is_available():
    with pytest.raises(ProviderUnavailable, match=f"{CUDA} is not available.*{CPU}"):
        select_providers("gpu", CPU_ONLY, strict=True)
    assert provider_names(select_providers("gpu", WITH_CUDA, strict=True)) == [CUDA, CPU]


def test_tensorrt_only_when_asked_and_available():
    assert provider_names(select_providers("gpu", WITH_CUDA, tensorrt=True)) == WITH_CUDA
    assert provider_names(select_providers("gpu", [CUDA, CPU], tensorrt=True)) == [CUDA, CPU]
    trt_opts = select_providers("gpu", WITH_CUDA, tensorrt=True)[0][1]
    assert trt_opts["trt_layer_norm_fp32_fallback"] is True


@pytest.mark.parametrize("device", ["cuda", "tpu"])  # the GPU is spelled gpu, never cuda
def test_unknown_device_is_refused(device):
    with pytest.raises(ValueError):
        select_providers(device, WITH_CUDA)


AMX = frozenset({"avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})
NO_BF16 = frozenset({"avx2", "fma"})
BOTH = [OPENVINO, CPU]
V_INT8 = ["fp32", "int8"]


def ms(*rows: tuple[str, str, float, float | None, str]) -> dict[Candidate, Measured]:
    return {Candidate(p, q): Measured(Candidate(p, q), tps, cos, err) for p, q, tps, cos, err in rows}


# Issue 14's figures on the AMX Xeon (tok/s, min cosine vs fp32).
AMX_MEASURED = ms((CPU, "fp32", 5448, 1.0, ""), (CPU, "int8", 8624, 0.99017, ""),
                  (OPENVINO, "fp32", 9000, 0.99999, ""), (OPENVINO, "bf16", 17141, 0.99995, ""))


def test_parse_cpu_flags_reads_the_first_flags_line() -> None:
    text = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512_bf16 amx_tile\n\nflags : other\n"
    assert parse_cpu_flags(text) == {"fpu", "avx512_bf16", "amx_tile"}
    assert parse_cpu_flags("no flags here") == frozenset()


def test_candidates_follow_providers_flags_and_variants() -> None:
    labels = lambda cs: [c.label for c in cs]  # noqa: E731
    assert labels(cpu_candidates(BOTH, AMX, V_INT8)) == [
        "CPU/fp32", "CPU/int8", "OpenVINO/fp32", "OpenVINO/bf16"]
    assert labels(cpu_candidates(BOTH, NO_BF16, ["fp32"])) == ["CPU/fp32", "OpenVINO/fp32"]
    assert labels(cpu_candidates([CPU], AMX, V_INT8)) == ["CPU/fp32", "CPU/int8"]
    assert labels(cpu_candidates(BOTH, AMX, V_INT8, "cpu")) == ["CPU/fp32", "CPU/int8"]


def test_auto_on_amx_picks_openvino_bf16_and_says_why() -> None:
    c = choose_cpu_runtime(BOTH, AMX, V_INT8, AMX_MEASURED)
    assert (c.provider, c.precision) == (OPENVINO, "bf16")
    assert "17,141 tok/s" in c.reason and "8,624" in c.reason


def test_flags_off_fall_back_to_the_faster_of_int8_and_openvino_fp32() -> None:
    # Same machine with the bf16 flags forced off: bf16 is not a candidate even if measured.
    c = choose_cpu_runtime(BOTH, NO_BF16, V_INT8, AMX_MEASURED)
    assert (c.provider, c.precision) == (OPENVINO, "fp32")
    slow_ov = ms((CPU, "fp32", 5448, 1.0, ""), (CPU, "int8", 8624, 0.99, ""),
                 (OPENVINO, "fp32", 6000, 1.0, ""))
    c = choose_cpu_runtime(BOTH, NO_BF16, V_INT8, slow_ov)
    assert (c.provider, c.precision) == (CPU, "int8")


def test_bf16_below_its_gate_is_not_used_and_the_reason_says_so() -> None:
    m = {**AMX_MEASURED, **ms((OPENVINO, "bf16", 17141, 0.9990, ""))}
    c = choose_cpu_runtime(BOTH, AMX, V_INT8, m)
    assert (c.provider, c.precision) == (OPENVINO, "fp32")
    assert "OpenVINO/bf16 min cosine 0.999 < 0.9995" in c.reason


def test_openvino_listed_but_failing_to_create_falls_back_with_the_error() -> None:
    err = "RuntimeError: listed but failed to create: the session runs on CPUExecutionProvider"
    m = ms((CPU, "fp32", 5448, 1.0, ""), (CPU, "int8", 8624, 0.99, ""),
           (OPENVINO, "fp32", 0, None, err), (OPENVINO, "bf16", 0, None, err))
    c = choose_cpu_runtime(BOTH, AMX, V_INT8, m)
    assert (c.provider, c.precision) == (CPU, "int8")
    assert "OpenVINO/bf16 failed to run" in c.reason and "failed to create" in c.reason


def test_without_openvino_or_measurements_it_is_todays_default() -> None:
    assert choose_cpu_runtime([CPU], AMX, V_INT8).candidate == Candidate(CPU, "int8")
    assert choose_cpu_runtime([CPU], AMX, ["fp32"]).candidate == Candidate(CPU, "fp32")
    c = choose_cpu_runtime(BOTH, AMX, ["fp32"], None)
    assert c.candidate == Candidate(CPU, "fp32") and "not measured" in c.reason


def test_cpu_override_never_uses_openvino() -> None:
    c = choose_cpu_runtime(BOTH, AMX, V_INT8, AMX_MEASURED, override="cpu")
    assert c.candidate == Candidate(CPU, "int8") and "EMBED_CPU_PROVIDER=cpu" in c.reason
    with pytest.raises(ProviderUnavailable, match="EMBED_CPU_PROVIDER=cpu"):
        choose_cpu_runtime(BOTH, AMX, V_INT8, override="cpu", precision="bf16")


def test_openvino_override_keeps_to_openvino_or_fails_loudly() -> None:
    m = {**AMX_MEASURED, **ms((CPU, "int8", 99999, 0.99, ""))}  # int8 fastest, but excluded
    assert choose_cpu_runtime(BOTH, AMX, V_INT8, m, override="openvino").candidate == \
        Candidate(OPENVINO, "bf16")
    assert choose_cpu_runtime(BOTH, AMX, V_INT8, override="openvino", precision="fp32"
                              ).candidate == Candidate(OPENVINO, "fp32")
    with pytest.raises(ProviderUnavailable, match="onnxruntime-openvino"):
        choose_cpu_runtime([CPU], AMX, V_INT8, override="openvino")
    broken = ms((CPU, "fp32", 1, 1.0, ""), (OPENVINO, "fp32", 0, None, "boom"))
    with pytest.raises(ProviderUnavailable, match="no OpenVINO candidate passed"):
        choose_cpu_runtime(BOTH, NO_BF16, ["fp32"], broken, override="openvino")


def test_explicit_precision_wins() -> None:
    for prec in ("fp32", "int8", "fp16"):
        assert choose_cpu_runtime(BOTH, AMX, V_INT8, AMX_MEASURED, precision=prec).candidate \
            == Candidate(CPU, prec)
    assert choose_cpu_runtime(BOTH, AMX, V_INT8, precision="bf16").candidate == \
        Candidate(OPENVINO, "bf16")


def test_explicit_bf16_that_cannot_run_is_an_error_not_a_silent_fp32() -> None:
    with pytest.raises(ProviderUnavailable, match="amx_bf16, avx512_bf16"):
        choose_cpu_runtime(BOTH, NO_BF16, V_INT8, precision="bf16")
    with pytest.raises(ProviderUnavailable, match=OPENVINO):
        choose_cpu_runtime([CPU], AMX, V_INT8, precision="bf16")
    broken = ms((OPENVINO, "bf16", 0, None, "listed but failed to create"))
    with pytest.raises(ProviderUnavailable, match="failed to create"):
        choose_cpu_runtime(BOTH, AMX, V_INT8, broken, precision="bf16")


def test_openvino_fp32_that_disagrees_with_the_cpu_ep_is_not_used() -> None:
    m = ms((CPU, "fp32", 5000, 1.0, ""), (OPENVINO, "fp32", 9000, 0.98, ""))
    c = choose_cpu_runtime(BOTH, NO_BF16, ["fp32"], m)
    assert c.candidate == Candidate(CPU, "fp32") and "0.98 < 0.9995" in c.reason


def test_int8_must_be_clearly_faster_than_the_near_lossless_best() -> None:
    # An AVX-512 bf16 EPYC under the old short probe: int8 a hair ahead of bf16.
    close = ms((CPU, "fp32", 8401, 1.0, ""), (CPU, "int8", 14153, 0.988, ""),
               (OPENVINO, "fp32", 10086, 1.0, ""), (OPENVINO, "bf16", 13860, 0.99996, ""))
    c = choose_cpu_runtime(BOTH, AMX, V_INT8, close)
    assert c.candidate == Candidate(OPENVINO, "bf16")
    assert "CPU/int8 is under 1.15x faster and lossy" in c.reason and "14,153" in c.reason
    clear = {**close, **ms((CPU, "int8", 13860 * 1.15 + 1, 0.988, ""))}
    assert choose_cpu_runtime(BOTH, AMX, V_INT8, clear).candidate == Candidate(CPU, "int8")
    # with bf16 flags off the comparison is against OpenVINO fp32 (and CPU-EP fp32)
    c = choose_cpu_runtime(BOTH, NO_BF16, V_INT8, {**close, **ms((CPU, "int8", 11000, 0.99, ""))})
    assert c.candidate == Candidate(OPENVINO, "fp32")
