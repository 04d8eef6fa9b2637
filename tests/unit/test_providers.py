"""Provider lists per device (pure): CPU last, CUDA asked for on gpu, strict mode, TensorRT."""

from __future__ import annotations

import pytest

from worker.contract import Device
from worker.errors import ProviderUnavailable
from worker.model.providers import CPU, CUDA, TENSORRT, provider_names, select_providers

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
