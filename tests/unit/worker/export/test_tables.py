"""Embedding tables set aside while fp16/int8 are derived (worker/export/tables.py).

A small graph with the shape of the problem: ids -> Gather(table) -> MatMul(w) -> MatMul(w2),
its weights in external data like a model over 2 GB. With the size limits lowered, fp16 and
int8 go through the set-aside path and must write exactly what ONNX Runtime's converters write
on the whole model (same initializers bit for bit, same nodes), inline or in external data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import worker.export.tables as tables
import worker.export.variants as variants

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

ROWS, WIDTH = 300, 16


def table_graph(root: Path) -> Path:
    """model.onnx + model.onnx.data: a 300 x 16 table read by Gather, then two MatMuls."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.standard_normal((ROWS, WIDTH)).astype(np.float32)
    table[0, :4] = [1e-9, -7e4, 65510.0, 0.0]  # values the fp16 conversion must clip
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.standard_normal((WIDTH, 32)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((32, WIDTH)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="gather"),
             helper.make_node("MatMul", ["e", "w"], ["h"], name="up"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="down")]
    graph = helper.make_graph(
        nodes, "tables", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", WIDTH])], inits,
        value_info=[helper.make_tensor_value_info("table", TensorProto.FLOAT, [ROWS, WIDTH])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    root.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(root / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=0)
    return root / "model.onnx"


def weights(path: Path) -> dict[str, bytes]:
    m = onnx.load(str(path))
    return {t.name: onnx.numpy_helper.to_array(t).tobytes() + str(t.data_type).encode()
            for t in m.graph.initializer}


def nodes(path: Path) -> list[tuple[str, list[str]]]:
    return [(n.op_type, list(n.input)) for n in onnx.load(str(path)).graph.node]


def run(path: Path) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": np.array([0, 5, ROWS - 1], dtype=np.int64)})[0]


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables, "TABLE_MIN_BYTES", 1024)
    monkeypatch.setattr(tables, "CHUNK_VALUES", 1000)  # several chunks per table


def test_only_a_table_that_only_gather_reads_is_set_aside(tmp_path: Path, small_limits) -> None:
    src = table_graph(tmp_path / "src")
    found = tables.gather_tables(src)
    assert list(found) == ["table"] and found["table"].dims == (ROWS, WIDTH)
    assert found["table"].length == ROWS * WIDTH * 4
    model = tables.load_without_tables(src, found)
    init = {t.name: t for t in model.graph.initializer}
    assert list(init["table"].dims) == [1, WIDTH] and len(init["table"].raw_data) == 4 * WIDTH
    assert len(init["w"].raw_data) == 4 * WIDTH * 32  # the rest is loaded
    assert not any(t.external_data for t in model.graph.initializer)


@pytest.mark.parametrize("prec", ["fp16", "int8"])
def test_variants_match_the_whole_model_conversion(tmp_path: Path, small_limits,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   prec: str) -> None:
    """Same initializers bit for bit, same nodes, same outputs; every weight of the variant in
    its own external data file (the tables streamed there), the quantiser's part file gone."""
    src = table_graph(tmp_path / "src")
    derive = variants.convert_fp16 if prec == "fp16" else variants.quantize_int8
    with monkeypatch.context() as m:
        m.setattr(tables, "TABLE_MIN_BYTES", 1 << 40)  # no table: ORT's converter, whole model
        derive(src, tmp_path / "whole.onnx")
    (tmp_path / "out").mkdir()
    got = tmp_path / "out" / "model.onnx"
    derive(src, got)
    assert weights(got) == weights(tmp_path / "whole.onnx")
    assert nodes(got) == nodes(tmp_path / "whole.onnx")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
        ["model.onnx", "model.onnx.data"]
    inline = [t.name for t in onnx.load(str(got), load_external_data=False).graph.initializer
              if t.raw_data]
    assert "table" not in inline and "w" not in inline
    np.testing.assert_array_equal(run(got), run(tmp_path / "whole.onnx"))


def test_fp16_of_a_model_whose_rest_passes_the_limit_converts_the_whole_file(
        tmp_path: Path, small_limits, monkeypatch: pytest.MonkeyPatch) -> None:
    """The converters' in-memory protobuf cannot hold the rest: the whole-file path, as before."""
    src = table_graph(tmp_path / "src")
    monkeypatch.setattr(variants, "INLINE_MAX", 0)
    monkeypatch.setattr(variants, "load_without_tables", None)  # must not be used
    variants.convert_fp16(src, tmp_path / "model.fp16.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx", "src"]  # inline
    assert run(tmp_path / "model.fp16.onnx").shape == (3, WIDTH)


def test_to_half_is_the_converters_fp16_bit_for_bit() -> None:
    from onnxruntime.transformers.float16 import convert_np_to_float16

    rng = np.random.default_rng(1)
    x = np.concatenate([
        rng.standard_normal(4000).astype(np.float32) * scale for scale in (1e-8, 1e-7, 0.02, 7e4)
    ] + [np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519, 65520, -65520,
                   2.98e-8, -2.98e-8, 5.96e-8, 1e-45], dtype=np.float32)])
    want = convert_np_to_float16(x.copy())
    got = tables.to_half(x)
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_a_data_file_cut_short_is_named(tmp_path: Path, small_limits) -> None:
    src = table_graph(tmp_path / "src")
    found = tables.gather_tables(src)
    data = src.with_name("model.onnx.data")
    data.write_bytes(data.read_bytes()[: found["table"].offset + 100])
    with pytest.raises(OSError, match=r"model\.onnx\.data: cut short \(tensor table"):
        list(tables._chunks(found["table"], tables.FLOAT16))
