"""fp16/int8 variants (worker/export/variants.py) on a two-MatMul ONNX graph built here.

The graph is an FFN in miniature: x (4 wide) -> up (4x8) -> down (8x4). int8 recipes must
leave exactly the down-projections they name in fp32, and recipes are tried in order only
until the gate passes. fp16 is covered by tests/integration/test_export.py on real models (ORT's
converter leaves this hand-made graph unsorted, which its own checker then refuses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from worker.export.variants import (
    INT8_KEEP_FP32,
    _ffn_down_projections,
    int8_until_gate,
    quantize_int8,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")


def ffn_graph(path: Path, layers: int = 2, d: int = 4, inner: int = 8) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        for name, shape in ((f"up{i}", (d, inner)), (f"down{i}", (inner, d))):
            inits.append(numpy_helper.from_array(
                rng.standard_normal(shape).astype(np.float32), f"w_{name}"))
            nodes.append(helper.make_node("MatMul", [prev, f"w_{name}"], [f"y_{name}"],
                                          name=name))
            prev = f"y_{name}"
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", d])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", d])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path


def float_matmuls(path: Path) -> list[str]:
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]


def test_down_projections_are_the_narrowing_matmuls_in_layer_order(tmp_path: Path) -> None:
    model = onnx.load(str(ffn_graph(tmp_path / "m.onnx", layers=3)))
    assert _ffn_down_projections(model) == ["down0", "down1", "down2"]


@pytest.mark.parametrize(("keep", "kept"), [
    ("none", []),
    ("early-ffn-down", ["down0"]),  # first half of the layers
    ("ffn-down", ["down0", "down1"]),
])
def test_int8_recipe_keeps_the_named_matmuls_fp32(tmp_path: Path, keep: str,
                                                  kept: list[str]) -> None:
    src = ffn_graph(tmp_path / "m.onnx")
    quantize_int8(src, tmp_path / "q.onnx", keep)
    assert float_matmuls(tmp_path / "q.onnx") == kept
    ops = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops


def test_int8_recipes_are_tried_in_order_until_one_passes(tmp_path: Path) -> None:
    ffn_graph(tmp_path / "model.onnx")
    seen: list[list[str]] = []

    def gate(root: Path, prec: str) -> dict[str, Any]:
        seen.append(float_matmuls(root / "model.int8.onnx"))
        return {"passed": len(seen) == 2}

    res = int8_until_gate(tmp_path, lambda s: None, gate)
    assert seen == [["down0"], ["down0", "down1"]]
    assert res["passed"] and res["recipe"]["keep_fp32"] == INT8_KEEP_FP32[1]


def test_int8_reports_the_last_failure_when_no_recipe_passes(tmp_path: Path) -> None:
    ffn_graph(tmp_path / "model.onnx")
    res = int8_until_gate(tmp_path, lambda s: None, lambda r, p: {"passed": False, "why": p})
    assert res["passed"] is False and res["recipe"]["keep_fp32"] == INT8_KEEP_FP32[-1]


def test_bge_m3_head_matmuls_stay_fp32(tmp_path: Path) -> None:
    """The MatMuls feeding sparse_weights (through Add, Relu) and colbert_vectors are found."""
    from onnx import TensorProto, helper, numpy_helper

    from worker.export.variants import _head_matmuls

    w = {n: numpy_helper.from_array(np.ones(s, np.float32), n)
         for n, s in (("w_enc", (4, 4)), ("w_sp", (4, 1)), ("b_sp", (1,)), ("w_cb", (4, 4)))}
    nodes = [helper.make_node("MatMul", ["x", "w_enc"], ["h"], name="enc"),
             helper.make_node("MatMul", ["h", "w_sp"], ["sp0"], name="sparse_mm"),
             helper.make_node("Add", ["sp0", "b_sp"], ["sp1"], name="sparse_add"),
             helper.make_node("Relu", ["sp1"], ["sparse_weights"], name="sparse_relu"),
             helper.make_node("MatMul", ["h", "w_cb"], ["colbert_vectors"], name="colbert_mm")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
            for n in ("h", "sparse_weights", "colbert_vectors")]
    graph = helper.make_graph(nodes, "m3", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 4])], outs, list(w.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert _head_matmuls(model) == ["sparse_mm", "colbert_mm"]
    assert _head_matmuls(onnx.load(str(ffn_graph(tmp_path / "m.onnx")))) == []
    model.ir_version = 8
    onnx.save_model(model, str(tmp_path / "m3.onnx"))
    quantize_int8(tmp_path / "m3.onnx", tmp_path / "q.onnx", "none")
    assert float_matmuls(tmp_path / "q.onnx") == ["sparse_mm", "colbert_mm"]


def test_int8_past_the_limit_writes_external_data_once_per_recipe(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """As past 2 GB (the limit lowered to 0 bytes): int8 goes to ``model.int8.onnx.data``,
    and a second recipe replaces that file instead of appending to it (onnx appends)."""
    import onnxruntime as ort

    import worker.export.variants as variants

    monkeypatch.setattr(variants, "TWO_GB", 0)
    ffn_graph(tmp_path / "model.onnx", d=64, inner=256)  # weights over onnx's 1 KB inline limit
    sizes: list[int] = []

    def gate(root: Path, prec: str) -> dict[str, Any]:
        sizes.append((root / "model.int8.onnx.data").stat().st_size)
        ort.InferenceSession(str(root / "model.int8.onnx"), providers=["CPUExecutionProvider"])
        return {"passed": False}

    int8_until_gate(tmp_path, lambda s: None, gate)
    assert len(sizes) == 2 and 0 < sizes[1] < 2 * sizes[0]  # ffn-down keeps more fp32: larger


def test_save_model_past_the_limit_rewrites_its_external_data(tmp_path: Path,
                                                              monkeypatch) -> None:
    import worker.export.onnx as wonnx

    monkeypatch.setattr(wonnx, "TWO_GB", 0)
    src = ffn_graph(tmp_path / "src.onnx", d=64, inner=256)
    dst = tmp_path / "model.onnx"
    wonnx.save_model(onnx.load(str(src)), dst)  # (saving moves the weights out of the model)
    first = (tmp_path / "model.onnx.data").read_bytes()
    wonnx.save_model(onnx.load(str(src)), dst)
    assert (tmp_path / "model.onnx.data").read_bytes() == first
    assert wonnx.onnx_bytes(dst) == dst.stat().st_size + len(first)
    wonnx.remove_onnx(dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.onnx"]
