"""The export quality gate's decision (worker/export/gate.py) with a fake ``embed``: no model.

A variant passes only when every cosine is finite and both the mean and the worst text reach
the precision's thresholds; one that cannot load fails with the loader's message, except an
fp16 variant the CPU has no kernels for, which is kept unchecked for the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from worker.errors import BundleError
from worker.export.gate import (
    GATE_THRESHOLDS,
    check_width,
    gate_limits,
    judge,
    quality_gate,
)

TEXTS = ("a", "b", "c", "d")
REF = np.eye(4, dtype=np.float32)


def fake_embed(variants: dict[str, np.ndarray | Exception]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    def embed(root: Path, precision: str, texts: Sequence[str]) -> np.ndarray:
        calls.append(precision)
        out = REF if precision == "fp32" else variants[precision]
        if isinstance(out, Exception):
            raise out
        return out[: len(texts)]

    embed.calls = calls  # type: ignore[attr-defined]
    return embed


def tilted(cos: Sequence[float]) -> np.ndarray:
    """Rows whose cosine with the matching row of REF is ``cos``."""
    rows = []
    for i, c in enumerate(cos):
        v = REF[i] * c
        v[(i + 1) % 4] = np.sqrt(max(0.0, 1 - c * c))
        rows.append(v)
    return np.stack(rows)


@pytest.mark.parametrize(("cos", "passed"), [
    ([1.0, 1.0, 1.0, 1.0], True),
    ([0.99, 0.99, 0.99, 0.99], True),   # exactly at the mean limit
    ([1.0, 1.0, 1.0, 0.97], True),      # exactly at the min limit
    ([1.0, 1.0, 1.0, 0.969], False),    # one bad text fails it, however good the mean
    ([0.985, 0.985, 0.985, 0.985], False),  # every text above min, mean too low
    ([1.0, 1.0, 1.0, float("nan")], False),
])
def test_judge_needs_mean_and_min(cos: list[float], passed: bool) -> None:
    res = judge(np.array(cos), GATE_THRESHOLDS["int8"])
    assert res["passed"] is passed and res["texts"] == 4
    assert ("reason" in res) is (not passed)
    assert res["thresholds"] == GATE_THRESHOLDS["int8"]


def test_overrides_replace_one_precision_only() -> None:
    lim = gate_limits({"int8": {"mean": 0.5, "min": 0.1}})
    assert lim["int8"] == {"mean": 0.5, "min": 0.1} and lim["fp16"] == GATE_THRESHOLDS["fp16"]
    assert gate_limits(None) == GATE_THRESHOLDS


def test_gate_compares_each_variant_with_fp32(tmp_path: Path) -> None:
    embed = fake_embed({"fp16": tilted([1.0, 0.9999, 0.999, 1.0]),
                        "int8": tilted([0.99, 0.98, 0.96, 1.0])})
    lines: list[str] = []
    res = quality_gate(tmp_path, ["fp32", "fp16", "int8"], lines.append, texts=TEXTS, embed=embed)
    assert set(res) == {"fp16", "int8"}  # fp32 is the reference, not gated
    assert res["fp16"]["passed"] and res["fp16"]["min"] == pytest.approx(0.999, abs=1e-6)
    assert res["int8"]["passed"] is False and "min 0.9600" in res["int8"]["reason"]
    assert embed.calls == ["fp32", "fp16", "int8"]
    assert any("gate int8" in s and "FAIL" in s for s in lines)
    assert any("gate fp16" in s and "pass" in s for s in lines)


def test_variant_that_does_not_load_fails_with_the_reason(tmp_path: Path) -> None:
    embed = fake_embed({"int8": BundleError("model.int8.onnx: bad graph")})
    res = quality_gate(tmp_path, ["int8"], lambda s: None, texts=TEXTS, embed=embed)
    assert res["int8"]["passed"] is False and "bad graph" in res["int8"]["reason"]


def test_fp16_without_cpu_kernels_is_kept_unchecked(tmp_path: Path) -> None:
    embed = fake_embed({"fp16": BundleError("NOT_IMPLEMENTED: Could not find an implementation"),
                        "int8": BundleError("NOT_IMPLEMENTED: same message, but int8")})
    res = quality_gate(tmp_path, ["fp16", "int8"], lambda s: None, texts=TEXTS, embed=embed)
    assert res["fp16"]["passed"] is None and "skipped" in res["fp16"]
    assert res["int8"]["passed"] is False  # only fp16 has the GPU excuse


def test_check_width_names_the_config_on_a_dim_mismatch(tmp_path: Path) -> None:
    def wrong_dim(root: Path, precision: str, texts: Sequence[str]) -> np.ndarray:
        raise ValueError("could not broadcast input array from shape (2,32) into shape (2,48)")

    with pytest.raises(BundleError, match="embedfleet.json: dim 48 does not match"):
        check_width(tmp_path, 48, wrong_dim)
    with pytest.raises(BundleError, match="non-finite"):
        check_width(tmp_path, 4, lambda r, p, t: np.full((2, 4), np.nan))
    check_width(tmp_path, 4, lambda r, p, t: REF[:2])
