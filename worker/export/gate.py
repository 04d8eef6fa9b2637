"""The export quality gate: a variant is written only when its vectors stay close to fp32's.

Part of export (worker/export/__init__.py). Each fp16/int8 variant embeds the multilingual
SAMPLE_TEXTS (samples.py) and is compared with the fp32 ONNX model on the same texts: cosine
per text, and the variant passes when both the mean and the worst text reach GATE_THRESHOLDS.
The embedding runs through the worker's own path (tokenizer, batching, pooling), passed in as
``embed`` so the decision can be tested without a model; ``session_embed`` is the real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.bundle import CONFIG_NAME, VARIANT_FILES
from worker.errors import BundleError
from worker.export.samples import SAMPLE_TEXTS

Log = Callable[[str], Any]
Embed = Callable[[Path, str, Sequence[str]], np.ndarray]
"""``embed(bundle_dir, precision, texts)`` -> one row per text."""
GATE_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp16": {"mean": 0.999, "min": 0.995},
    "int8": {"mean": 0.99, "min": 0.97},
}
"""Cosine vs the fp32 ONNX model on SAMPLE_TEXTS that a variant must reach to be written."""


def session_embed(bundle_path: Path, precision: str, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` with the bundle's variant on the CPU, the way a worker does."""
    from worker.model.session import load_model  # onnxruntime only when a gate really runs

    return load_model(bundle_path, device="cpu", precision=precision).embed(texts)


def quality_gate(
    bundle_path: str | os.PathLike[str],
    precisions: Iterable[str],
    log: Log = print,
    *,
    texts: Sequence[str] = SAMPLE_TEXTS,
    thresholds: dict[str, dict[str, float]] | None = None,
    embed: Embed = session_embed,
) -> dict[str, dict[str, Any]]:
    """Cosine of each variant's embeddings vs the fp32 ONNX model's on ``texts``.

    Returns:
        Per precision: ``mean``, ``min``, ``thresholds``, ``passed``, ``texts`` (and a
        ``reason`` when it failed). An fp16 variant the CPU provider has no kernels for gets
        ``passed: None`` and a ``skipped`` reason: it is kept for the GPU, unchecked.
    """
    root = Path(bundle_path)
    limits = gate_limits(thresholds)
    ref = embed(root, "fp32", texts)
    results: dict[str, dict[str, Any]] = {}
    for prec in precisions:
        if prec == "fp32":
            continue
        lim = limits[prec]
        try:
            vecs = embed(root, prec, texts)
        except BundleError as exc:
            if prec == "fp16" and "NOT_IMPLEMENTED" in str(exc):
                # Some CPU builds lack fp16 kernels: the variant is for the GPU, keep it unchecked.
                results[prec] = {"passed": None, "skipped": "CPU provider cannot run it"}
                log(f"gate {prec}: not checked, the CPU provider cannot run it")
                continue
            results[prec] = {"passed": False, "thresholds": dict(lim), "reason": str(exc)}
            log(f"gate {prec}: FAIL, does not load ({exc})")
            continue
        cos = cosine_rows(ref, vecs)
        results[prec] = judge(cos, lim)
        ok = results[prec]["passed"]
        log(f"gate {prec:4} vs fp32 on {len(texts)} texts: mean {cos.mean():.4f} "
            f"min {cos.min():.4f} (needs {lim['mean']}/{lim['min']}) {'pass' if ok else 'FAIL'}")
    return results


def gate_limits(thresholds: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    """GATE_THRESHOLDS with per-precision overrides."""
    return {**GATE_THRESHOLDS, **(thresholds or {})}


def judge(cos: np.ndarray, lim: dict[str, float]) -> dict[str, Any]:
    """The gate's decision on per-text cosines: passes when finite and both limits are met.

    >>> judge(np.array([1.0, 0.98]), {"mean": 0.99, "min": 0.97})["passed"]
    True
    >>> judge(np.array([1.0, 0.96]), {"mean": 0.9, "min": 0.97})["reason"]
    'mean 0.9800, min 0.9600; needs mean >= 0.9 and min >= 0.97'
    """
    ok = bool(np.isfinite(cos).all() and cos.mean() >= lim["mean"] and cos.min() >= lim["min"])
    res: dict[str, Any] = {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6),
                           "thresholds": dict(lim), "passed": ok, "texts": len(cos)}
    if not ok:
        res["reason"] = (f"mean {cos.mean():.4f}, min {cos.min():.4f}; needs mean "
                         f">= {lim['mean']} and min >= {lim['min']}")
    return res


def check_width(root: Path, dim: int, embed: Embed = session_embed) -> None:
    """Embed two texts through the worker's own path: catches a ``dim`` the graph does not
    produce (e.g. a pooling config that disagrees with the hidden size)."""
    try:
        vecs = embed(root, "fp32", SAMPLE_TEXTS[:2])
    except ValueError as exc:  # numpy cannot fit the rows into (n, dim)
        raise BundleError(
            f"{root / CONFIG_NAME}: dim {dim} does not match the model ({exc})") from exc
    if not np.isfinite(vecs).all():
        raise BundleError(f"{root / VARIANT_FILES['fp32']}: non-finite embeddings")


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two equally shaped matrices."""
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)
