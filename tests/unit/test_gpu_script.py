"""benchmarks/gpu.py's nvidia-smi readings, against a fake ``nvidia-smi`` on PATH (there is no
GPU on these machines: this fake stands in for the driver's tool, nothing else is faked)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.gpu import GpuMemory, gpu_info

FAKE = """#!/bin/sh
case "$1" in
  --query-gpu=memory.used) cat "$FAKE_SMI/used" ;;
  --query-compute-apps=pid,used_memory) cat "$FAKE_SMI/apps" ;;
  --query-gpu=name,driver_version,memory.total) echo "NVIDIA H200, 550.54.15, 143771 MiB" ;;
esac
"""


@pytest.fixture
def smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir()
    exe.write_text(FAKE)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{exe.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SMI", str(tmp_path))
    (tmp_path / "used").write_text("1000\n")
    (tmp_path / "apps").write_text("")
    return tmp_path


def poll(mem: GpuMemory, pid: int) -> None:
    mem.last = 0.0  # poll() reads at most every 0.5 s
    mem.poll(pid)


def test_peak_is_the_processs_own_memory_when_listed(smi: Path) -> None:
    mem = GpuMemory()
    (smi / "apps").write_text("4242, 2048\n77, 60000\n")
    (smi / "used").write_text("70000\n")
    poll(mem, 4242)
    (smi / "apps").write_text("4242, 1024\n")
    poll(mem, 4242)
    assert mem.peak_mb() == 2048.0 and mem.how == "nvidia-smi per process"


def test_peak_falls_back_to_device_memory_above_the_baseline(smi: Path) -> None:
    mem = GpuMemory()  # baseline 1000 MiB
    (smi / "apps").write_text("[N/A], [N/A]\n")  # a container hides the PIDs
    (smi / "used").write_text("3500\n")
    poll(mem, 4242)
    (smi / "used").write_text("2000\n")
    poll(mem, 4242)
    assert mem.peak_mb() == 2500.0 and mem.how == "device used memory above the baseline"


def test_gpu_info_reads_name_driver_memory(smi: Path) -> None:
    assert gpu_info() == {"gpu": "NVIDIA H200", "gpu_driver": "550.54.15",
                          "gpu_memory": "143771 MiB", "gpus": 1}


def test_no_nvidia_smi_means_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_info() == {"gpu": None}
    mem = GpuMemory()
    poll(mem, 1)
    assert mem.peak_mb() is None
