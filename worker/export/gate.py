"""The export quality gate: a variant is written only when its vectors stay close to fp32's.

Part of export (worker/export/__init__.py). Each fp16/int8 variant embeds gate_texts (the
multilingual SAMPLE_TEXTS of samples.py and one long text, GATE_LONG_TOKENS) and is
compared with the fp32 ONNX model on the same texts: cosine per text, and the variant passes
when both the mean and the worst text reach GATE_THRESHOLDS. The embedding runs through the
worker's own path (tokenizer, batching, pooling), passed in as ``embed`` so the decision can
be tested without a model; ``session_embed`` is the real one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.bundle import CONFIG_NAME, VARIANT_FILES
from worker.errors import BundleError
from worker.export.samples import SAMPLE_TEXTS, long_sample
from worker.model.pooling import cosine_rows

Log = Callable[[str], Any]
Embed = Callable[[Path, str, Sequence[str]], np.ndarray]
"""``embed(bundle_dir, precision, texts)`` -> one row per text."""
GATE_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp16": {"mean": 0.999, "min": 0.995, "sparse_topk": 0.9, "sparse_err": 0.01,
             "colbert_mean": 0.999, "colbert_min": 0.99},
    "int8": {"mean": 0.99, "min": 0.97, "sparse_topk": 0.8, "sparse_err": 0.05,
             "colbert_mean": 0.99, "colbert_min": 0.95},
}
"""What a variant must reach vs the fp32 ONNX model on gate_texts to be written. Dense:
cosine per text, mean and worst. BGE-M3 sparse: per text, the share of fp32's top-SPARSE_TOP_K
ids the variant also has in its top k (worst text), and the largest weight difference relative
to the text's largest fp32 weight. ColBERT: cosine per token vector, mean and worst."""
SPARSE_TOP_K = 10
GATE_LONG_TOKENS = 2048
"""The gate's long text: the model's window, at most this many tokens. fp16 and int8 errors
grow with length (attention over more tokens, larger activations), so the gate checks one
long input besides the short samples. Not 8,192: on the CPU EP a BGE-M3-size fp32 graph
(eager attention, 16 heads x 8,192^2 scores per layer) needs about 14 GB for one such input;
benchmarks/m3_export.py checks fp16 at 8,192 tokens apart."""


def gate_texts(root: Path) -> list[str]:
    """SAMPLE_TEXTS (3 to about 200 tokens) and one text of min(window, GATE_LONG_TOKENS)
    tokens, cut with the bundle's tokenizer."""
    from storage.bundle import load_bundle

    bundle = load_bundle(root)
    room = min(bundle.config.max_length, GATE_LONG_TOKENS) - 2  # the special tokens
    return [*SAMPLE_TEXTS, long_sample(bundle.load_tokenizer(truncate=False), room)]


def session_embed(bundle_path: Path, precision: str, texts: Sequence[str]) -> np.ndarray:
    """Embed ``texts`` with the bundle's variant on the CPU, the way a worker does."""
    from worker.model.session import load_model  # onnxruntime only when a gate really runs

    model = load_model(bundle_path, device="cpu", precision=precision)
    if model.bundle.config.outputs == ("dense",):
        return model.embed(texts)
    return model.encode(texts, model.bundle.config.outputs)  # type: ignore[return-value]


def quality_gate(
    bundle_path: str | os.PathLike[str],
    precisions: Iterable[str],
    log: Log = print,
    *,
    texts: Sequence[str] | None = None,
    thresholds: dict[str, dict[str, float]] | None = None,
    embed: Embed = session_embed,
) -> dict[str, dict[str, Any]]:
    """Cosine of each variant's embeddings vs the fp32 ONNX model's on ``texts`` (default:
    gate_texts).

    Returns:
        Per precision: ``mean``, ``min``, ``thresholds``, ``passed``, ``texts`` (and a
        ``reason`` when it failed). An fp16 variant the CPU provider has no kernels for gets
        ``passed: None`` and a ``skipped`` reason: it is kept for the GPU, unchecked.
    """
    root = Path(bundle_path)
    texts = gate_texts(root) if texts is None else texts
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
        if isinstance(ref, dict):  # a BGE-M3 bundle: every output has its own gate
            results[prec] = judge_outputs(ref, vecs, lim)  # type: ignore[arg-type]
        else:
            results[prec] = judge(cosine_rows(ref, vecs), lim)
        log(_gate_line(prec, results[prec]))
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


def judge_outputs(ref: dict[str, Any], got: dict[str, Any], lim: dict[str, float]
                  ) -> dict[str, Any]:
    """The gate on every output of a BGE-M3 variant: passes only when each output passes."""
    res = judge(cosine_rows(ref["dense"], got["dense"]), lim)
    parts = {"sparse": judge_sparse, "colbert": judge_colbert}
    for name, fn in parts.items():
        if name in ref:
            res[name] = fn(ref[name], got[name], {**GATE_THRESHOLDS["int8"], **lim})
    failed = [n for n in parts if n in res and not res[n]["passed"]]
    if failed:
        res["passed"] = False
        res["reason"] = "; ".join([res.get("reason", "dense ok")]
                                  + [f"{n}: {res[n]['reason']}" for n in failed])
    return res


def judge_sparse(ref: list[Any], got: list[Any], lim: dict[str, float]) -> dict[str, Any]:
    """Top-k id agreement (worst text) and largest relative weight error of sparse outputs.

    >>> a = [(np.array([1, 5, 9]), np.array([0.5, 1.0, 0.2]))]
    >>> r = judge_sparse(a, [(np.array([1, 5]), np.array([0.5, 0.99]))], GATE_THRESHOLDS["int8"])
    >>> r["topk_min"], r["max_rel_err"], r["passed"]
    (0.666667, 0.2, False)
    """
    overlap, err = [], 0.0
    for (ri, rw), (gi, gw) in zip(ref, got, strict=True):
        k = min(SPARSE_TOP_K, len(ri))
        top_r = set(np.asarray(ri)[np.argsort(-np.asarray(rw), kind="stable")[:k]].tolist())
        top_g = set(np.asarray(gi)[np.argsort(-np.asarray(gw), kind="stable")[:k]].tolist())
        overlap.append(len(top_r & top_g) / k if k else float(len(gi) == 0))
        rd = dict(zip(np.asarray(ri).tolist(), np.asarray(rw, dtype=float).tolist()))
        gd = dict(zip(np.asarray(gi).tolist(), np.asarray(gw, dtype=float).tolist()))
        scale = max(rd.values(), default=1.0) or 1.0
        err = max([err, *(abs(rd.get(t, 0.0) - gd.get(t, 0.0)) / scale for t in rd.keys() | gd)])
    worst = min(overlap, default=1.0)
    ok = bool(worst >= lim["sparse_topk"] and err <= lim["sparse_err"])
    res: dict[str, Any] = {"topk_min": round(worst, 6), "max_rel_err": round(err, 6),
                           "passed": ok,
                           "summary": f"top-{SPARSE_TOP_K} ids {worst:.3f}, weight err {err:.4f}"}
    if not ok:
        res["reason"] = (f"needs top-k >= {lim['sparse_topk']} and weight err <= "
                         f"{lim['sparse_err']}")
    return res


def judge_colbert(ref: list[np.ndarray], got: list[np.ndarray], lim: dict[str, float]
                  ) -> dict[str, Any]:
    """Per-token cosine of ColBERT vectors; a text with a different vector count fails."""
    counts = [len(r) == len(g) for r, g in zip(ref, got, strict=True)]
    if not all(counts):
        return {"passed": False, "summary": "vector counts differ",
                "reason": f"{counts.count(False)} texts have a different number of vectors"}
    cos = cosine_rows(np.concatenate(ref), np.concatenate(got))
    ok = bool(np.isfinite(cos).all() and cos.mean() >= lim["colbert_mean"]
              and cos.min() >= lim["colbert_min"])
    res: dict[str, Any] = {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6),
                           "tokens": len(cos), "passed": ok,
                           "summary": f"token cos mean {cos.mean():.4f} min {cos.min():.4f}"}
    if not ok:
        res["reason"] = f"needs mean >= {lim['colbert_mean']} and min >= {lim['colbert_min']}"
    return res


def check_width(root: Path, dim: int, embed: Embed = session_embed) -> None:
    """Embed two texts through the worker's own path: catches a ``dim`` the graph does not
    produce (e.g. a pooling config that disagrees with the hidden size)."""
    try:
        vecs = embed(root, "fp32", SAMPLE_TEXTS[:2])
    except ValueError as exc:  # numpy cannot fit the rows into (n, dim)
        raise BundleError(
            f"{root / CONFIG_NAME}: dim {dim} does not match the model ({exc})") from exc
    if isinstance(vecs, dict):  # BGE-M3: every output must be finite
        arrays = [vecs["dense"], *(w for _, w in vecs.get("sparse", [])), *vecs.get("colbert", [])]
    else:
        arrays = [vecs]
    if not all(np.isfinite(a).all() for a in arrays):
        raise BundleError(f"{root / VARIANT_FILES['fp32']}: non-finite embeddings")


def _gate_line(prec: str, res: dict[str, Any]) -> str:
    extra = "".join(f"; {o} {res[o]['summary']}" for o in ("sparse", "colbert") if o in res)
    return (f"gate {prec:4} vs fp32 on {res['texts']} texts: dense mean {res['mean']:.4f} "
            f"min {res['min']:.4f} (needs {res['thresholds']['mean']}/"
            f"{res['thresholds']['min']}){extra} {'pass' if res['passed'] else 'FAIL'}")
