"""Bundles, provider choice and session loading, with hand-made files (no real model).

A bundle that is missing a file, or has a broken one, fails at load with a BundleError naming
that file; a GPU request on a machine without CUDA runs on the CPU and says so loudly. The
tiny ONNX graphs below are built with onnx.helper: hidden state = token id x a fixed vector.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from storage.bundle import BundleConfig, Pooling, load_bundle
from worker.errors import BundleError, ProviderUnavailable
from worker.model.providers import CPU, CUDA

DIM = 4
W = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
VOCAB = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "again": 4}
CONFIG = {"source": "test/tiny", "pooling": "mean", "normalize": True, "max_length": 16,
          "dim": DIM}


def make_bundle(root: Path, *, config: dict | None = None, onnx_bytes: bytes | None = None,
                pooled: bool = False, tokenizer: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "embedfleet.json").write_text(json.dumps(config or CONFIG))
    if tokenizer:
        write_tokenizer(root / "tokenizer.json")
    (root / "model.onnx").write_bytes(onnx_bytes if onnx_bytes is not None else tiny_onnx(pooled))
    return root


def write_tokenizer(path: Path, *, baked_padding: int | None = None) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if baked_padding:  # what sentence-transformers' tokenizer.json files often carry
        tok.enable_padding(length=baked_padding, pad_id=0, pad_token="[PAD]")
        tok.enable_truncation(max_length=baked_padding)
    tok.save(str(path))


def tiny_onnx(pooled: bool = False) -> bytes:
    """last_hidden_state[b, s, :] = input_ids[b, s] * W; optionally a constant pooled output."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids_f", "last_axis"], ["ids_3d"]),
        helper.make_node("Mul", ["ids_3d", "w"], ["last_hidden_state"]),
    ]
    inits = [numpy_helper.from_array(W, "w"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "seq", DIM])]
    if pooled:  # sentence_embedding = mean over tokens * 0 + V: differs from any pooling of W
        nodes += [
            helper.make_node("ReduceMean", ["last_hidden_state", "seq_axis"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "zero"], ["m0"]),
            helper.make_node("Add", ["m0", "v"], ["sentence_embedding"]),
        ]
        inits += [numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
                  numpy_helper.from_array(np.zeros(DIM, dtype=np.float32), "zero"),
                  numpy_helper.from_array(W[::-1].copy(), "v")]
        outputs.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                                     ["batch", DIM]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
         for n in ("input_ids", "attention_mask")],
        outputs, inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def no_cuda() -> bool:
    ort = pytest.importorskip("onnxruntime")
    return CUDA not in ort.get_available_providers()


# --- bundle files --------------------------------------------------------------------------


def test_valid_bundle_loads(tmp_path: Path) -> None:
    b = load_bundle(make_bundle(tmp_path / "b"))
    assert b.config.pooling is Pooling.MEAN and b.variants == ["fp32"]
    assert len(b.fingerprint("fp32")) == 32


def test_missing_tokenizer_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="tokenizer.json"):
        load_bundle(make_bundle(tmp_path / "b", tokenizer=False))


def test_missing_config_names_the_file(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "embedfleet.json").unlink()
    with pytest.raises(BundleError, match="embedfleet.json"):
        load_bundle(root)


def test_a_model_directory_given_as_bundle_says_to_export_it(tmp_path: Path) -> None:
    root = tmp_path / "bge-m3"
    root.mkdir()
    (root / "config.json").write_text("{}")  # as Hugging Face saves a model
    with pytest.raises(BundleError) as err:
        load_bundle(root)
    assert str(err.value) == (
        f"{root / 'embedfleet.json'}: missing bundle config; {root} is a model directory, not a "
        f"bundle: export it first (`producer export {root} --out BUNDLE`; for --outputs sparse "
        "or colbert it must hold colbert_linear.pt and sparse_linear.pt)")


def test_unknown_pooling_mode_lists_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"unknown pooling mode 'max'.*cls, mean, last"):
        load_bundle(make_bundle(tmp_path / "b", config={**CONFIG, "pooling": "max"}))


def test_missing_variant_says_how_to_export(tmp_path: Path) -> None:
    b = load_bundle(make_bundle(tmp_path / "b"))
    with pytest.raises(BundleError, match=r"no int8 variant.*producer export"):
        b.onnx_path("int8")


def test_config_round_trip_keeps_extra_entries() -> None:
    d = {**CONFIG, "opset": 18, "quality_gate": {"int8": {"mean": 0.995}}}
    cfg = BundleConfig.from_dict(d)
    assert cfg.to_dict() == {**d, "format": 1, "query_prefix": "", "passage_prefix": ""}


def test_evaluation_figures_round_trip_and_leave_the_fingerprint_alone(tmp_path: Path) -> None:
    old = make_bundle(tmp_path / "old")  # a bundle from before the field: loads, no figures
    assert load_bundle(old).config.evaluation is None
    assert "evaluation" not in load_bundle(old).config.to_dict()
    figures = {"task": "triplets", "metric": "accuracy", "variants": {"fp32": {"accuracy": 1.0}}}
    new = make_bundle(tmp_path / "new", config={**CONFIG, "evaluation": figures},
                      onnx_bytes=(old / "model.onnx").read_bytes())
    cfg = load_bundle(new).config
    assert cfg.evaluation == figures and cfg.to_dict()["evaluation"] == figures
    assert load_bundle(new).fingerprint("fp32") == load_bundle(old).fingerprint("fp32")
    (new / "embedfleet.json").write_text(json.dumps({**CONFIG, "evaluation": [1]}))
    with pytest.raises(BundleError, match="'evaluation' must be an object"):
        load_bundle(new)


def test_matryoshka_flag_round_trips_and_leaves_the_fingerprint_alone(tmp_path: Path) -> None:
    old = make_bundle(tmp_path / "old")
    assert load_bundle(old).config.matryoshka is None
    flag = {"dims": [384, 128], "from": "README.md"}
    new = make_bundle(tmp_path / "new", config={**CONFIG, "matryoshka": flag},
                      onnx_bytes=(old / "model.onnx").read_bytes())
    cfg = load_bundle(new).config
    assert cfg.matryoshka == flag and cfg.to_dict()["matryoshka"] == flag
    assert load_bundle(new).fingerprint("fp32") == load_bundle(old).fingerprint("fp32")


def test_loaded_tokenizer_drops_baked_padding_and_truncates_at_window(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b", tokenizer=False)
    write_tokenizer(root / "tokenizer.json", baked_padding=8)
    tok = load_bundle(root).load_tokenizer()
    assert tok.encode("hello world").ids == [2, 3]
    assert len(tok.encode(" ".join(["hello"] * 40)).ids) == CONFIG["max_length"]


# --- sessions ------------------------------------------------------------------------------


def test_corrupt_onnx_names_the_file(tmp_path: Path) -> None:
    from worker.model.session import load_model

    root = make_bundle(tmp_path / "b", onnx_bytes=b"this is not an onnx model")
    with pytest.raises(BundleError, match=r"model\.onnx.*cannot load"):
        load_model(root, device="cpu")


def test_cpu_session_embeds_unit_vectors(tmp_path: Path) -> None:
    from worker.model.session import load_model

    m = load_model(make_bundle(tmp_path / "b"), device="cpu")
    vecs = m.embed(["hello world", "again", "hello hello hello again world"])
    assert vecs.shape == (3, DIM)
    np.testing.assert_allclose(vecs, np.tile(W / np.linalg.norm(W), (3, 1)), atol=1e-6)
    assert m.provider == CPU and not m.fallback


def test_pooled_output_graph_is_used_as_is(tmp_path: Path) -> None:
    from worker.model.session import load_model

    m = load_model(make_bundle(tmp_path / "b", pooled=True), device="cpu")
    assert m.pooled_output and m.output_name == "sentence_embedding"
    v = W[::-1] / np.linalg.norm(W)
    np.testing.assert_allclose(m.embed(["hello", "world again"]), np.tile(v, (2, 1)), atol=1e-6)


def test_gpu_request_without_cuda_falls_back_to_cpu_loudly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not no_cuda():
        pytest.skip("CUDA is available here: nothing falls back")
    from worker.model.session import load_model

    with caplog.at_level(logging.WARNING, logger="worker.model.session"):
        m = load_model(make_bundle(tmp_path / "b"), device="gpu")
    assert m.fallback and m.provider == CPU and m.active_providers == [CPU]
    assert CUDA in m.requested_providers
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "CUDA REQUESTED BUT NOT AVAILABLE" in warnings[0].getMessage()
    assert m.embed(["hello"]).shape == (1, DIM)


def test_strict_gpu_request_without_cuda_raises(tmp_path: Path) -> None:
    if not no_cuda():
        pytest.skip("CUDA is available here")
    from worker.model.session import load_model

    with pytest.raises(ProviderUnavailable, match="CUDAExecutionProvider"):
        load_model(make_bundle(tmp_path / "b"), device="gpu", strict=True)


# --- external data (graphs over 2 GB keep their weights in model.onnx.data) ----------------


def external_bundle(root: Path) -> Path:
    """The tiny bundle with its weights moved to ``model.onnx.data`` (as past 2 GB)."""
    import onnx
    from onnx.external_data_helper import set_external_data

    make_bundle(root)
    model = onnx.load(str(root / "model.onnx"))
    w = next(t for t in model.graph.initializer if t.name == "w")
    (root / "model.onnx.data").write_bytes(w.raw_data)
    set_external_data(w, location="model.onnx.data", offset=0, length=len(w.raw_data))
    w.ClearField("raw_data")
    onnx.save_model(model, str(root / "model.onnx"))
    return root


def test_external_data_bundle_loads_and_its_fingerprint_covers_the_data(tmp_path: Path) -> None:
    from worker.model.session import load_model

    root = external_bundle(tmp_path / "b")
    m = load_model(root, device="cpu")
    np.testing.assert_allclose(m.embed(["hello"])[0], W / np.linalg.norm(W), atol=1e-6)
    before = load_bundle(root).fingerprint("fp32")
    data = (root / "model.onnx.data").read_bytes()
    (root / "model.onnx.data").write_bytes(data[::-1])  # same size, other weights
    assert load_bundle(root).fingerprint("fp32") != before


def test_missing_external_data_names_the_data_file(tmp_path: Path) -> None:
    from worker.model.session import load_model

    root = external_bundle(tmp_path / "b")
    (root / "model.onnx.data").unlink()
    with pytest.raises(BundleError) as err:
        load_model(root, device="cpu")
    msg = str(err.value)
    assert msg.startswith(f"{root.resolve() / 'model.onnx.data'}: missing; model.onnx keeps "
                          "its weights in it") and "\n" not in msg
    assert msg.endswith("copy the whole bundle directory again, or re-export it with "
                        "`producer export`")


def test_truncated_external_data_names_the_data_file(tmp_path: Path) -> None:
    from worker.model.session import load_model

    root = external_bundle(tmp_path / "b")
    (root / "model.onnx.data").write_bytes(b"short")
    with pytest.raises(BundleError, match=r"model\.onnx\.data: truncated or damaged"):
        load_model(root, device="cpu")
