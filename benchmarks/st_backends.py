"""sentence-transformers' own backends as rows of ``benchmarks/compare.py``, in their own venv.

    python benchmarks/compare.py --st-backends            # creates the venv on first use

Rows: torch fp32, torch bf16, onnx, onnx int8 (``export_dynamic_quantized_onnx_model``, the
config for this CPU's flags), openvino, openvino int8 (``export_static_quantized_openvino_model``
calibrated on a local JSONL of the benchmark's own chunks; its default downloads glue/sst2).

Why a separate venv: sentence-transformers' OpenVINO/optimum stack (optimum-intel) needs
``transformers < 4.58`` and plain ``onnxruntime``, while the project pins a newer transformers
and installs onnxruntime-openvino; they cannot share one environment. The venv is created with
pip (a registry, no model download) at ``--st-venv`` (default ``EMBED_HOME/st-bench-venv``);
when that fails, every row is listed as skipped with pip's reason.

A child run here gets only the chunk texts and the sentence-transformers model directory; it
never imports the project (the venv does not have it) and writes seconds, real tokens and the
vectors (``.npy``) for the cosine against torch fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ST_VENV_PACKAGES = ["sentence-transformers[onnx,openvino]", "transformers<4.58", "datasets",
                    "psutil"]
TORCH_PIN = "torch==2.13.0"  # the CPU build the project uses: a plain `torch` pulls CUDA
BACKENDS = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8 dynamic"),
            ("openvino", "default"), ("openvino", "int8 static")]
"""(backend, precision) rows; openvino `default` is bf16 on AMX CPUs (OpenVINO's own default)."""


def ensure_venv(path: Path, log: Any = print) -> tuple[Path | None, str]:
    """The venv's python, creating the venv if needed; (None, reason) when that fails."""
    py = path / "bin" / "python"
    probe = [str(py), "-c", "import sentence_transformers, optimum.intel, openvino, onnxruntime"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, ""
    log(f"creating the sentence-transformers benchmark venv at {path} (pip, a few minutes) ...")
    steps = [[sys.executable, "-m", "venv", str(path)],
             [str(py), "-m", "pip", "install", "-q", TORCH_PIN],
             [str(py), "-m", "pip", "install", "-q", *ST_VENV_PACKAGES]]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
            return None, f"`{' '.join(cmd[-3:])}` failed: {tail[0][:160]}"
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, "venv created but sentence_transformers/optimum.intel do not import"
    return py, ""


def skip_reason(backend: str, precision: str) -> str:
    """Rows not worth running on this machine ("" = run it)."""
    if backend == "torch" and precision == "bf16":
        flags = _cpu_flags()
        if not {"avx512_bf16", "amx_bf16"} & flags:
            # Measured on the 2-core AVX2 EPYC: over 300 s for 94 short texts (fp32: 36 s).
            return "no avx512_bf16/amx_bf16: torch emulates bf16 matmuls (minutes per batch)"
    return ""


def child_command(py: Path, backend: str, precision: str, cargs: dict[str, Any]) -> list[str]:
    return [str(py), str(Path(__file__).resolve()), backend, precision, json.dumps(cargs)]


def main(argv: list[str]) -> int:
    """Child: load the backend, warm up, time one ``encode`` over every chunk."""
    backend, precision, a = argv[0], argv[1], json.loads(argv[2])
    import numpy as np
    import torch

    torch.set_num_threads(a["threads"])
    texts: list[str] = json.loads(Path(a["chunks_file"]).read_text())
    model = _load(backend, precision, a, texts)
    model.encode(texts[:32], batch_size=32)
    t0, c0 = time.perf_counter(), time.process_time()
    vecs = model.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    tok = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]
    lengths = [len(t) for t in tok]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    padded = sum(max(lengths[i] for i in order[k:k + 32]) * len(order[k:k + 32])
                 for k in range(0, len(order), 32))
    np.save(a["vectors"], np.asarray(vecs, dtype=np.float32))
    Path(a["out"]).write_text(json.dumps({
        "seconds": secs, "cpu_seconds": cpu, "real_tokens": sum(lengths), "padded_tokens": padded,
        "chunks": len(texts), "backend": backend, "torch": torch.__version__}))
    return 0


def _load(backend: str, precision: str, a: dict[str, Any], texts: list[str]) -> Any:
    from sentence_transformers import SentenceTransformer

    src, work = a["st_model"], Path(a["work"])
    if backend == "torch":
        kw = {"model_kwargs": {"torch_dtype": torch_dtype(precision)}}
        return SentenceTransformer(src, device="cpu", **kw)
    if backend == "onnx" and precision == "fp32":
        return SentenceTransformer(src, device="cpu", backend="onnx")
    if backend == "openvino" and precision == "default":
        return SentenceTransformer(src, device="cpu", backend="openvino")
    if backend == "onnx":  # dynamic int8, the quantization config for this CPU's flags
        from sentence_transformers import export_dynamic_quantized_onnx_model

        out = _copy(src, work / "st-onnx-int8")
        model = SentenceTransformer(str(out), device="cpu", backend="onnx")
        model.save_pretrained(str(out))  # the exported onnx/model.onnx the quantizer reads
        export_dynamic_quantized_onnx_model(model, _onnx_qconfig(), str(out))
        name = next(p.name for p in (out / "onnx").glob("model_*int8*.onnx"))
        return SentenceTransformer(str(out), device="cpu", backend="onnx",
                                   model_kwargs={"file_name": f"onnx/{name}"})
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import export_static_quantized_openvino_model

    out = _copy(src, work / "st-openvino-int8")
    calib = work / "st-calibration"  # a local dataset of the benchmark's own chunks
    calib.mkdir(parents=True, exist_ok=True)
    sample = texts[:: max(1, len(texts) // 300)][:300]
    with open(calib / "train.jsonl", "w", encoding="utf-8") as f:
        for t in sample:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    model = SentenceTransformer(str(out), device="cpu", backend="openvino")
    model.save_pretrained(str(out))
    export_static_quantized_openvino_model(
        model, OVQuantizationConfig(num_samples=len(sample)), str(out), dataset_name=str(calib),
        dataset_config_name="default", dataset_split="train", column_name="text")
    return SentenceTransformer(str(out), device="cpu", backend="openvino",
                               model_kwargs={"file_name": "openvino/openvino_model_qint8_quantized.xml"})


def torch_dtype(precision: str) -> Any:
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onnx_qconfig() -> str:
    flags = _cpu_flags()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def _copy(src: str, dst: Path) -> Path:
    import shutil

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def default_venv() -> Path:
    home = os.environ.get("EMBED_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME")
                                                    or Path.home() / ".cache") / "embedfleet")
    return Path(home) / "st-bench-venv"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
