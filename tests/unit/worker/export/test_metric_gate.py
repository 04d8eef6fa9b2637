"""The export gate on the user's data, with a scripted ``evaluate`` (no model needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.errors import BundleError
from worker.export.metric_gate import MetricGate, metric_gate


def scripted(figures: dict[str, float | Exception]):
    calls: list[str] = []

    def evaluate(root: Path, precision: str) -> dict[str, float]:
        calls.append(precision)
        value = figures[precision]
        if isinstance(value, Exception):
            raise value
        return {"ndcg@10": value, "mrr@10": value / 2}

    return evaluate, calls


def test_a_variant_losing_more_than_the_drop_is_refused_with_both_figures() -> None:
    evaluate, calls = scripted({"fp32": 0.82, "fp16": 0.8199, "int8": 0.79})
    logs: list[str] = []
    res = metric_gate(Path("b"), ["fp16", "int8"], MetricGate(evaluate, "ndcg@10", 0.01,
                                                               "dev", "retrieval"), logs.append)
    v = res["variants"]
    assert calls == ["fp32", "fp16", "int8"]
    assert v["fp16"]["passed"] is True and v["fp16"]["drop"] == pytest.approx(0.0001)
    assert v["int8"]["passed"] is False
    assert v["int8"]["reason"] == ("ndcg@10 0.7900 vs fp32 0.8200: drops 0.0300, "
                                   "more than the allowed 0.01")
    assert res["variants"]["fp32"] == {"metrics": {"ndcg@10": 0.82, "mrr@10": 0.41}}
    assert res["metric"] == "ndcg@10" and res["max_drop"] == 0.01 and res["task"] == "retrieval"
    assert any("0.7900" in line and "0.8200" in line and "FAIL" in line for line in logs)


def test_the_drop_is_absolute_and_inclusive() -> None:
    evaluate, _ = scripted({"fp32": 0.5, "int8": 0.49})
    assert metric_gate(Path("b"), ["int8"], MetricGate(evaluate, "ndcg@10", 0.01),
                       lambda _: None)["variants"]["int8"]["passed"] is True
    assert metric_gate(Path("b"), ["int8"], MetricGate(evaluate, "ndcg@10", 0.005),
                       lambda _: None)["variants"]["int8"]["passed"] is False


def test_an_fp16_the_cpu_cannot_run_is_kept_unchecked_other_errors_raise() -> None:
    evaluate, _ = scripted({"fp32": 0.5, "fp16": BundleError("x: NOT_IMPLEMENTED kernel")})
    res = metric_gate(Path("b"), ["fp16"], MetricGate(evaluate, "ndcg@10"), lambda _: None)
    assert res["variants"]["fp16"]["passed"] is None
    evaluate, _ = scripted({"fp32": 0.5, "int8": BundleError("int8 cannot be evaluated")})
    with pytest.raises(BundleError, match="cannot be evaluated"):
        metric_gate(Path("b"), ["int8"], MetricGate(evaluate, "ndcg@10"), lambda _: None)


def test_an_unknown_metric_is_an_error_naming_the_known_ones() -> None:
    evaluate, _ = scripted({"fp32": 0.5})
    with pytest.raises(BundleError, match=r"no 'accuracy' among \['mrr@10', 'ndcg@10'\]"):
        metric_gate(Path("b"), [], MetricGate(evaluate, "accuracy", data="dev"), lambda _: None)
