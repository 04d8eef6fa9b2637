"""The worker's runtime policy as the producer reads it (worker/model/policy.py): from the
probe's stored figures, without onnxruntime. The probe itself: test_probe.py here."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from storage.bundle import load_bundle
from worker.model.policy import fingerprint, planned_runtime, stored_figures
from worker.model.probe import PROBE_VERSION

CPU, OV = "CPUExecutionProvider", "OpenVINOExecutionProvider"


def _figures(home: Path, bundle_path: str, rows: dict[tuple[str, str], float], *,
             name: str = "k1", at: float | None = None, version: int = PROBE_VERSION) -> Path:
    path = home / "runtime" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "version": version, "bundle": bundle_path,
        "measured_at": time.time() + 1 if at is None else at,
        "rows": [{"provider": p, "precision": q, "tokens_per_s": tps, "cos_min": 0.99999,
                  "error": ""} for (p, q), tps in rows.items()]}))
    return path


ROWS_OV_FP32 = {(CPU, "fp32"): 5000.0, (CPU, "int8"): 6000.0, (OV, "fp32"): 9000.0}
ROWS_OV_BF16 = {(CPU, "fp32"): 5000.0, (CPU, "int8"): 8000.0, (OV, "fp32"): 9000.0,
                (OV, "bf16"): 17000.0}


def test_no_figures_is_the_cpu_ep_default(minilm_bundle, tmp_path) -> None:
    b = load_bundle(minilm_bundle)
    default = "int8" if "int8" in b.variants else "fp32"  # int8 only when it passed its gate
    got = planned_runtime(b, "cpu", tmp_path)
    assert (got.provider, got.precision) == (CPU, default)
    assert fingerprint(b, got) == b.fingerprint(default)  # the key a CPU-EP worker uses


def test_stored_figures_give_the_worker_choice(minilm_bundle, tmp_path) -> None:
    b = load_bundle(minilm_bundle)
    _figures(tmp_path, str(b.path), ROWS_OV_BF16)
    got = planned_runtime(b, "cpu", tmp_path)
    assert (got.provider, got.precision) == (OV, "bf16")
    assert fingerprint(b, got) == b.fingerprint("bf16", provider=OV) != b.fingerprint("fp32")
    _figures(tmp_path, str(b.path), ROWS_OV_FP32, name="k2", at=time.time() + 5)  # newest wins
    got = planned_runtime(b, "cpu", tmp_path)
    assert (got.provider, got.precision) == (OV, "fp32")


def test_figures_of_another_bundle_stale_or_old_version_are_ignored(minilm_bundle,
                                                                   tmp_path) -> None:
    b = load_bundle(minilm_bundle)
    _figures(tmp_path, "/elsewhere/bundle", ROWS_OV_BF16, name="other")
    changed = max(os.stat(p).st_mtime for p in b.path.iterdir() if p.is_file())
    _figures(tmp_path, str(b.path), ROWS_OV_BF16, name="stale", at=changed - 10)
    _figures(tmp_path, str(b.path), ROWS_OV_BF16, name="old", version=PROBE_VERSION - 1)
    (tmp_path / "runtime" / "junk.json").write_text("{not json")
    assert stored_figures(b, tmp_path) is None
    assert planned_runtime(b, "cpu", tmp_path).provider == CPU


def test_explicit_precision_and_gpu_are_not_measured(minilm_bundle, tmp_path) -> None:
    b = load_bundle(minilm_bundle)
    _figures(tmp_path, str(b.path), ROWS_OV_BF16)
    got = planned_runtime(b, "cpu", tmp_path, "fp32")
    assert (got.provider, got.precision) == (CPU, "fp32")
    got = planned_runtime(b, "cpu", tmp_path, "bf16")
    assert (got.provider, got.precision) == (OV, "bf16")
    got = planned_runtime(b, "gpu", tmp_path)
    assert (got.provider, got.precision) == ("CUDAExecutionProvider", "fp16")
