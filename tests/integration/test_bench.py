"""``producer bench`` on a real exported bundle: every variant the bundle has runs on CPU and
agrees with fp32; CUDA (absent here) and missing variants are listed as skipped, not failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main

pytestmark = pytest.mark.integration
FALLBACK_BUNDLE = Path("/tmp/bundle")  # fp32-only, until tests/model_fixtures.py is everywhere


@pytest.fixture
def bundle(request: pytest.FixtureRequest) -> Path:
    try:
        return Path(request.getfixturevalue("minilm_bundle"))
    except pytest.FixtureLookupError:
        if (FALLBACK_BUNDLE / "embedfleet.json").is_file():
            return FALLBACK_BUNDLE
        pytest.skip("needs the minilm_bundle fixture (tests/model_fixtures.py)")


def test_bench_all_variants_and_providers(bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, [
        "bench", "--model", str(bundle), "--limit", "30", "--threads", "1",
        "--precisions", "fp32,int8,fp16", "--providers", "cpu,cuda", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {(r["precision"], r["provider"]): r for r in json.loads(out.read_text())}
    assert len(rows) == 6
    have = {p for p in ("fp32", "int8", "fp16") if (bundle / {
        "fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}[p]).is_file()}
    for prec in ("fp32", "int8", "fp16"):
        r = rows[(prec, "cpu")]
        if prec not in have:
            assert r["status"] == "skipped" and f"no {prec} variant" in r["reason"]
            assert f"skipped (bundle has no {prec} variant" in res.output
            continue
        assert r["status"] == "ok", r
        assert r["docs"] == 30 and r["batches"] >= 1
        assert r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"]
        assert r["tokens_per_s"] > 0 and r["docs_per_s"] > 0 and r["peak_rss_mb"] > 50
        assert r["padded_tokens"] >= r["real_tokens"] > 30
        assert r["cos_min"] >= (0.9999 if prec == "fp32" else 0.9), r
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        for prec in ("fp32", "int8", "fp16"):
            r = rows[(prec, "cuda")]
            assert r["status"] == "skipped" and "not available" in r["reason"]
    header = next(line for line in res.output.splitlines() if line.startswith("variant"))
    for col in ("variant", "provider", "p50 ms", "p95 ms", "tokens/s", "docs/s", "peak RSS MB",
                "cos min", "cos mean"):
        assert col in header


def test_bench_rejects_unknown_names(bundle: Path) -> None:
    res = CliRunner().invoke(main, ["bench", "--model", str(bundle), "--limit", "2",
                                    "--providers", "tpu"])
    assert res.exit_code == 3 and "--providers: unknown provider 'tpu'" in res.output


def test_bench_openvino_rows_follow_the_workers_rule(bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    from worker.model.session import cpu_flags

    if "OpenVINOExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-openvino (the default `cpu` extra on x86-64 Linux)")
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(main, [
        "bench", "--model", str(bundle), "--limit", "20", "--threads", "1",
        "--precisions", "fp32,bf16", "--providers", "cpu,openvino", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {(r["precision"], r["provider"]): r for r in json.loads(out.read_text())}
    assert rows[("fp32", "openvino")]["status"] == "ok"
    assert rows[("fp32", "openvino")]["cos_min"] >= 0.9995
    cpu_bf16 = rows[("bf16", "cpu")]
    assert cpu_bf16["status"] == "skipped" and "OpenVINO" in cpu_bf16["reason"]
    ov_bf16 = rows[("bf16", "openvino")]
    if {"amx_bf16", "avx512_bf16"} & cpu_flags():
        assert ov_bf16["status"] == "ok" and ov_bf16["cos_min"] >= 0.9995, ov_bf16
    else:  # OpenVINO would compute f32 and call it bf16: the bench refuses like the worker
        assert ov_bf16["status"] == "skipped" and "avx512_bf16" in ov_bf16["reason"], ov_bf16
