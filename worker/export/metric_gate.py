"""The export gate on the user's own data: a variant is written only when it keeps the metric.

Part of export (worker/export/__init__.py), after the cosine gate (gate.py): with
``producer export SRC --eval-data DATA``, fp32 and each remaining fp16/int8 variant are scored
on DATA (``producer eval``'s figures: triplet accuracy, pair Spearman or retrieval nDCG@10),
and a variant whose metric is more than ``max_drop`` (absolute) below fp32's is not written.
The scoring is passed in as ``evaluate`` (the producer's evaluation, which reads and chunks the
data), so worker/ imports nothing from producer/ and the decision is testable without a model.
The figures go into the bundle config (``BundleConfig.evaluation``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import BundleError

Log = Callable[[str], Any]
Evaluate = Callable[[Path, str], dict[str, float]]
"""``evaluate(bundle_dir, precision)`` -> the metrics of that variant on the user's data."""
DEFAULT_MAX_DROP = 0.01
"""Largest absolute loss of the metric vs fp32 a written variant may have."""


@dataclass(frozen=True)
class MetricGate:
    """What ``--eval-data`` asks: score with ``evaluate``, judge by ``metric``."""

    evaluate: Evaluate
    metric: str
    max_drop: float = DEFAULT_MAX_DROP
    data: str = ""
    task: str = ""


def metric_gate(bundle_path: Path, precisions: Iterable[str], gate: MetricGate,
                log: Log = print) -> dict[str, Any]:
    """Score fp32 and each variant; return the figures with a verdict per variant.

    Returns:
        ``{"data", "task", "metric", "max_drop", "variants": {prec: {"metrics", "drop",
        "passed", "reason"?}}}``; fp32 has no drop. A variant the CPU provider cannot run
        gets ``passed: None`` and is kept unchecked, as in the cosine gate.

    Raises:
        BundleError: fp32 itself cannot be scored (nothing to compare with).
    """
    ref = gate.evaluate(bundle_path, "fp32")
    if gate.metric not in ref:
        raise BundleError(f"--eval-data {gate.data}: no {gate.metric!r} among {sorted(ref)}")
    out: dict[str, Any] = {"data": gate.data, "task": gate.task, "metric": gate.metric,
                           "max_drop": gate.max_drop, "variants": {"fp32": {"metrics": ref}}}
    log(f"eval fp32 on {gate.data}: {gate.metric} {ref[gate.metric]:.4f}")
    for prec in precisions:
        if prec == "fp32":
            continue
        try:
            metrics = gate.evaluate(bundle_path, prec)
        except BundleError as exc:
            if prec == "fp16" and "NOT_IMPLEMENTED" in str(exc):
                out["variants"][prec] = {"passed": None, "skipped": "CPU provider cannot run it"}
                log(f"eval {prec}: not checked, the CPU provider cannot run it")
                continue
            raise
        out["variants"][prec] = judge_drop(metrics, ref, gate.metric, gate.max_drop, prec)
        log(f"eval {prec} on {gate.data}: {gate.metric} {metrics[gate.metric]:.4f} "
            f"(fp32 {ref[gate.metric]:.4f}, drop {ref[gate.metric] - metrics[gate.metric]:+.4f},"
            f" allowed {gate.max_drop:g}) {'pass' if out['variants'][prec]['passed'] else 'FAIL'}")
    return out


def judge_drop(metrics: dict[str, float], ref: dict[str, float], metric: str, max_drop: float,
               prec: str = "variant") -> dict[str, Any]:
    """The verdict on one variant: passes when fp32's metric minus its own is <= max_drop.

    >>> judge_drop({"ndcg@10": 0.80}, {"ndcg@10": 0.82}, "ndcg@10", 0.01, "int8")["reason"]
    'ndcg@10 0.8000 vs fp32 0.8200: drops 0.0200, more than the allowed 0.01'
    >>> judge_drop({"accuracy": 0.9}, {"accuracy": 0.9}, "accuracy", 0.0)["passed"]
    True
    """
    drop = float(ref[metric]) - float(metrics[metric])
    res: dict[str, Any] = {"metrics": metrics, "drop": round(drop, 6),
                           "passed": bool(drop <= max_drop + 1e-12)}
    if not res["passed"]:
        res["reason"] = (f"{metric} {metrics[metric]:.4f} vs fp32 {ref[metric]:.4f}: drops "
                         f"{drop:.4f}, more than the allowed {max_drop:g}")
    return res
