"""fp16 and int8 variants derived from the fp32 ONNX export.

Part of export (worker/export/__init__.py). fp16 converts weights and compute and keeps fp32
inputs/outputs. int8 is dynamic quantisation of the weight MatMuls only, one scale per output
channel, with some FFN down-projections kept fp32 (INT8_KEEP_FP32, tried in order until the
quality gate in gate.py passes) and BGE-M3's two head layers always kept fp32. A variant that
fails the gate is not written to the bundle. Embedding tables of a model past 2 GB are set
aside while either is derived (tables.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.bundle import GRAPH_OUTPUTS, VARIANT_FILES
from worker.export.onnx import TWO_GB, onnx_bytes, quiet, remove_onnx, save_model
from worker.export.tables import INLINE_MAX, gather_tables, load_without_tables, save_with_tables

Log = Callable[[str], Any]
HEAD_OUTPUTS = (GRAPH_OUTPUTS["sparse"], GRAPH_OUTPUTS["colbert"])
Gate = Callable[[Path, str], dict[str, Any]]
"""Runs the quality gate on one variant of a bundle directory: ``gate(root, precision)``."""

INT8_OPTIONS: dict[str, Any] = {
    "op_types_to_quantize": ["MatMul"],
    "per_channel": True,
    "reduce_range": False,
    "extra_options": {"MatMulConstBOnly": True},
}
"""quantize_dynamic settings: only weight MatMuls (not the embedding Gather), one scale per
output channel. Default settings measured mean 0.92 / min 0.80 on all-MiniLM-L6-v2."""
INT8_KEEP_FP32 = ("early-ffn-down", "ffn-down")
"""Which MatMuls stay fp32, tried in order until int8 passes the gate. The FFN down-projections
take GELU outputs whose outliers ruin the per-tensor uint8 scale of dynamic quantisation; on
all-MiniLM-L6-v2 those of the first half of the layers cost the most (layer 0 alone a quarter
of the loss). ``early-ffn-down``: first half of the layers; ``ffn-down``: all of them."""


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 inputs/outputs (the file is checked to load).

    Works past protobuf's 2 GB limit. Embedding tables in external data are set aside and
    converted a chunk at a time into ``<dst>.data`` with the rest of the weights (tables.py:
    4.4 GB less peak RSS for a model whose 2.25 GB table is most of it); the rest is converted
    in memory. Without such tables, or when the rest alone passes 2 GB, shape inference runs
    on the file (``infer_shapes_path``, which the converter does when given a path), the
    weights are converted in place (one copy in memory), and the result is saved with external
    data when it is still over 2 GB.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    remove_onnx(dst)
    tables = gather_tables(src)
    if tables and onnx_bytes(src) - sum(t.length for t in tables.values()) <= INLINE_MAX:
        with quiet():
            half = convert_float_to_float16(load_without_tables(src, tables), keep_io_types=True)
        save_with_tables(half, tables, dst)
    else:
        with quiet():
            half = convert_float_to_float16(str(src), keep_io_types=True)
        save_model(half, dst)
    del half
    onnx.checker.check_model(str(dst))


def quantize_int8(src: Path, dst: Path, keep_fp32: str = INT8_KEEP_FP32[0]) -> None:
    """Dynamic int8 quantisation of the weight MatMuls (activations quantised at run time).

    Args:
        keep_fp32: one of INT8_KEEP_FP32, or ``none`` to quantise every weight MatMul.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    tables = gather_tables(src)  # embedding tables: never quantised (Gather), set aside
    graph = load_without_tables(src, tables) if tables else onnx.load(str(src),
                                                                      load_external_data=False)
    down = _ffn_down_projections(graph)
    exclude = {"none": [], "early-ffn-down": down[: len(down) // 2], "ffn-down": down}[keep_fp32]
    exclude = exclude + _head_matmuls(graph)
    remove_onnx(dst)  # onnx appends to an existing external data file
    if not tables:
        del graph
        with quiet():
            quantize_dynamic(src, dst, nodes_to_exclude=exclude or None,
                             use_external_data_format=onnx_bytes(src) > TWO_GB, **INT8_OPTIONS)
        return
    part = dst.with_name(dst.name + ".part")  # the quantiser's output, before the tables
    remove_onnx(part)
    try:
        with quiet():
            quantize_dynamic(graph, part, nodes_to_exclude=exclude or None,
                             use_external_data_format=onnx_bytes(src) - sum(
                                 t.length for t in tables.values()) > INLINE_MAX,
                             **INT8_OPTIONS)
        del graph
        save_with_tables(onnx.load(str(part)), tables, dst)
    finally:
        remove_onnx(part)


def int8_until_gate(root: Path, log: Log, gate: Gate) -> dict[str, Any]:
    """Quantise with each INT8_KEEP_FP32 recipe until one passes; the last result otherwise."""
    res: dict[str, Any] = {}
    for keep in INT8_KEEP_FP32:
        log(f"quantizing int8 (weight MatMuls per channel, fp32 kept for: {keep}) ...")
        quantize_int8(root / VARIANT_FILES["fp32"], root / VARIANT_FILES["int8"], keep)
        res = gate(root, "int8")
        res["recipe"] = {**INT8_OPTIONS, "keep_fp32": keep}
        if res["passed"]:
            break
    return res


def _ffn_down_projections(model: Any) -> list[str]:
    """Weight MatMuls that map a wider input to a narrower output, in graph order.

    In an encoder these are exactly the FFN output projections (intermediate -> hidden); the
    graph is topologically sorted, so list order is layer order.
    """
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(shapes.get(n.input[1], [])) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def _head_matmuls(model: Any) -> list[str]:
    """The MatMuls of the BGE-M3 heads (those feeding the sparse and ColBERT graph outputs).

    They stay fp32: one hidden x hidden and one hidden x 1 product per token, small next to
    the encoder, and quantised they cost the most: on the tiny test model ColBERT's worst
    per-token cosine was 0.9499 with them in int8 (gate 0.95).
    """
    made_by = {out: node for node in model.graph.node for out in node.output}
    heads = []
    for name in HEAD_OUTPUTS:
        node = made_by.get(name)
        while node is not None and node.op_type != "MatMul":
            node = next((made_by[i] for i in node.input if i in made_by), None)
        if node is not None:
            heads.append(node.name)
    return heads
