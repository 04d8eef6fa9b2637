"""The BGE-M3-size table (benchmarks/m3_size.py) and the GPU script (benchmarks/gpu.py) run
end to end in their smoke modes, on tiny models, so their code paths cannot rot between the
days they run at full size. The GPU script runs on the CPU EP here (no GPU on these machines):
its CUDA parts (IO binding, nvidia-smi memory) are exercised only on a CUDA machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent.parent


def script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_m3_size_smoke_rows_rss_and_torch_check(tmp_path: Path) -> None:
    out = tmp_path / "m3.json"
    res = script("m3_size.py", "--smoke", "--json", str(out), "--workdir", str(tmp_path / "w"),
                 "--chunks", "16:4,256:1", "--providers", "cpu,openvino",
                 "--gpu-json", str(tmp_path / "absent.json"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    ok = {(r["provider"], r["precision"], r["outputs"], r["length"]): r
          for r in data["rows"] if r["status"] == "ok"}
    for length in (16, 256):
        assert ("torch", "fp32", "dense", length) in ok
        for outputs in ("dense", "all"):
            r = ok[("cpu", "fp32", outputs, length)]
            assert r["real_tokens"] <= r["padded_tokens"] and r["real_tokens"] > length / 2
            assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 50
            assert r["cos_min"] >= 0.999, r
    skipped = {(r["provider"], r["precision"]): r["reason"]
               for r in data["rows"] if r["status"] == "skipped"}
    assert skipped[("cpu", "int8")] == "not in the bundle (no int8 variant)"
    check = data["summary"]["check"]
    assert check["length"] == 256 and check["met"] and check["cos_min"] >= 0.999
    assert data["summary"]["by_runtime"]["cpu/fp32"]["load_s"]
    meta = data["meta"]
    assert set(meta["flags"]) >= {"avx2", "avx512_bf16", "amx_bf16"} and meta["onnxruntime"]
    assert "not measured" in res.stdout and "| CPU EP | fp32 | dense | ~256 |" in res.stdout
    again = script("m3_size.py", "--from-json", str(out), "--gpu-json",
                   str(tmp_path / "absent.json"), cwd=tmp_path)
    assert again.returncode == 0
    assert again.stdout.strip() == res.stdout.split("\n\nresults:")[0].strip()


def test_m3_size_takes_cuda_rows_from_a_real_gpu_json(tmp_path: Path) -> None:
    from benchmarks.m3_size import gpu_rows

    gpu = tmp_path / "gpu.json"
    row = {"status": "ok", "precision": "fp16", "outputs": "all", "length": 8192, "chunks": 8,
           "tokens_per_s": 12345.6, "gpu_mem_peak_mb": 2048.0}
    gpu.write_text(json.dumps({"meta": {"smoke": False, "gpu": "H100"}, "m3": {"rows": [row]}}))
    assert gpu_rows(gpu) == ["| CUDA EP (IO binding, H100) | fp16 | dense+sparse+ColBERT | "
                             "~8,192 | 8 | 12,346 | GPU 2,048 | - | - |"]
    gpu.write_text(json.dumps({"meta": {"smoke": True}, "m3": {"rows": [row]}}))
    assert "not measured" in gpu_rows(gpu)[0]  # a CPU smoke run is not a GPU measurement


def test_gpu_script_cpu_smoke_writes_every_section(tmp_path: Path, minilm_bundle: Path) -> None:
    out = tmp_path / "gpu.json"
    res = script("gpu.py", "--cpu-smoke", "--json", str(out), "--workdir", str(tmp_path / "w"),
                 "--minilm-bundle", str(minilm_bundle), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["meta"]["smoke"] is True and data["meta"]["cuda"] is False
    mini = data["minilm"]
    assert mini["status"] == "ok", mini
    rows = {r["precision"]: r for r in mini["rows"]}
    for prec in ("fp16", "fp32"):
        assert rows[prec]["status"] == "ok", rows[prec]
        assert 0 < rows[prec]["real_tokens"] <= rows[prec]["padded_tokens"]
        assert rows[prec]["active"] == "CPUExecutionProvider"
    assert mini["staging"]["mb_per_s"] > 0 and mini["staging"]["tokens_per_s"] > 0
    run = data["producer_run"]
    assert run["status"] == "ok", run
    assert run["workers"] and all(w["queue"] == "gpu" for w in run["workers"])
    assert all(w["fallback"] for w in run["workers"])  # the gpu queue on a CPU box says so
    m3 = data["m3"]
    assert m3["status"] == "ok", m3
    got = {(r["precision"], r["outputs"], r["length"]) for r in m3["rows"] if r["status"] == "ok"}
    assert got == {(p, o, n) for p in ("fp16", "fp32") for o in ("dense", "all")
                   for n in (16, 512)}
    assert all(r["cos_min_vs_fp32"] >= 0.99 for r in m3["rows"] if r["precision"] == "fp16")
    assert "producer run --queue gpu:" in res.stdout and "[CPU SMOKE]" in res.stdout


def test_gpu_script_without_cuda_is_one_clear_line(tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "gpu.json"
    res = script("gpu.py", "--json", str(out), "--workdir", str(tmp_path / "w"), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith(
        "CUDAExecutionProvider is not available")
    assert json.loads(out.read_text())["meta"]["cuda"] is False


def test_gpu_script_imports_with_only_the_gpu_and_export_extras() -> None:
    """A CUDA machine gets `pip install -e ".[gpu,export]"`: no pytest, no psutil."""
    code = ("import sys; sys.modules['pytest'] = None; sys.modules['psutil'] = None; "
            "import benchmarks.gpu, benchmarks.m3_size")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
