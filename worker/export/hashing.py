"""The ``hashing`` bundle: a deterministic feature-hashing embedder, for smoke and load tests.

Not a model of meaning. Each token id is hashed (integer arithmetic inside the ONNX graph) into
one signed bucket in each of ``HASHES`` bands of ``dim``; the graph outputs those one-hot rows as
``last_hidden_state`` and the worker mean-pools and L2-normalises them like any other bundle. So
a hashing bundle goes through everything a real one does (the default model's tokenizer and
window, chunking, ONNX Runtime, pooling, the cache, metrics, Parquet) while inference costs
next to nothing: what a load test measures is the pipeline itself.

Chosen only explicitly (``producer export hashing --dim D --out DIR``, then ``--model DIR``),
never as a fallback. Its fingerprint cannot collide with a real model's: the fingerprinted
config says ``source: "hashing:<dim>"`` and ``embedder: "hashing"``, and the ONNX bytes are
this graph's. The first band is unsigned, so a row is never all zero (its norm is always 1).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from storage.bundle import DEFAULT_MODEL, TOKENIZER_NAME, VARIANT_FILES
from storage.bundle import BundleConfig, Pooling
from worker.errors import BundleError
from worker.export import _move_into_place, _temp_bundle_dir, _write_config
from worker.export.st_config import copy_tokenizer, read_model_config, resolve_source

HASHES = 4
"""Buckets per token (one per band of ``dim``): fewer collisions than one, still tiny."""
PRIME = 2_147_483_647  # 2**31 - 1: id * multiplier stays far below 2**63
MIN_DIM, MAX_DIM = HASHES, 8192
OPSET = 18
SOURCE_PREFIX = "hashing:"


def hashing_source(dim: int) -> str:
    return f"{SOURCE_PREFIX}{dim}"


def hash_constants() -> tuple[list[int], list[int]]:
    """Multipliers and offsets of the ``HASHES`` hashes, fixed forever (they define vectors)."""
    mul, add = [], []
    for k in range(HASHES):
        d = hashlib.sha256(f"embedfleet-hashing-{k}".encode()).digest()
        mul.append(int.from_bytes(d[:8], "little") % (PRIME - 1) + 1)
        add.append(int.from_bytes(d[8:16], "little") % PRIME)
    return mul, add


def bands(dim: int) -> tuple[list[int], list[int]]:
    """(offset, width) of each band: ``dim`` split into ``HASHES`` nearly equal parts."""
    edges = [k * dim // HASHES for k in range(HASHES + 1)]
    return edges[:-1], [edges[k + 1] - edges[k] for k in range(HASHES)]


def hashing_graph(dim: int) -> Any:
    """The ONNX model: ``input_ids``/``attention_mask`` [B, T] → ``last_hidden_state`` [B, T, dim].

    Per token and hash k: ``h = (id × a_k + b_k) mod PRIME``; bucket ``offset_k + h mod width_k``;
    sign ``+1`` for k = 0, else ``±1`` from the next bit of ``h``.
    """
    from onnx import TensorProto, helper

    _check_dim(dim)
    mul, add = hash_constants()
    offsets, widths = bands(dim)
    signed = [0] + [1] * (HASHES - 1)

    def const(name: str, values: list[int] | list[float], dtype: int = TensorProto.INT64) -> Any:
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_v", dtype, [len(values)], values))

    nodes = [
        const("mul", mul), const("add", add), const("prime", [PRIME]), const("width", widths),
        const("offset", offsets), const("signed", signed), const("one", [1]), const("two", [2]),
        const("depth", [dim]), const("onehot_values", [0.0, 1.0], TensorProto.FLOAT),
        const("axis_last", [-1]), const("axis_hash", [2]),
        helper.make_node("Unsqueeze", ["input_ids", "axis_last"], ["ids"]),          # [B,T,1]
        helper.make_node("Mul", ["ids", "mul"], ["h0"]),                            # [B,T,K]
        helper.make_node("Add", ["h0", "add"], ["h1"]),
        helper.make_node("Mod", ["h1", "prime"], ["h"]),
        helper.make_node("Mod", ["h", "width"], ["in_band"]),
        helper.make_node("Add", ["in_band", "offset"], ["bucket"]),
        helper.make_node("Div", ["h", "width"], ["hi"]),
        helper.make_node("Mod", ["hi", "two"], ["bit"]),
        helper.make_node("Mul", ["bit", "signed"], ["flip"]),
        helper.make_node("Mul", ["flip", "two"], ["flip2"]),
        helper.make_node("Sub", ["one", "flip2"], ["sign_i"]),
        helper.make_node("Cast", ["sign_i"], ["sign_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["sign_f", "axis_last"], ["sign"]),          # [B,T,K,1]
        helper.make_node("OneHot", ["bucket", "depth", "onehot_values"], ["onehot"],
                         axis=-1),                                                 # [B,T,K,D]
        helper.make_node("Mul", ["onehot", "sign"], ["signed_hot"]),
        helper.make_node("ReduceSum", ["signed_hot", "axis_hash"], ["last_hidden_state"],
                         keepdims=0),                                              # [B,T,D]
    ]
    graph = helper.make_graph(
        nodes, f"embedfleet_hashing_{dim}",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "seq", dim])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="embedfleet-hashing")
    model.ir_version = 8
    return model


def reference_vectors(ids: list[list[int]], dim: int) -> np.ndarray:
    """What the graph + mean pooling + L2 give, in NumPy (the tests check the graph by it)."""
    mul, add = hash_constants()
    offsets, widths = bands(dim)
    out = np.zeros((len(ids), dim), dtype=np.float64)
    for r, row in enumerate(ids):
        for t in row:
            for k in range(HASHES):
                h = (t * mul[k] + add[k]) % PRIME
                sign = -1.0 if k and (h // widths[k]) % 2 else 1.0
                out[r, offsets[k] + h % widths[k]] += sign
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


def export_hashing_bundle(out: str | os.PathLike[str], dim: int, *,
                          max_length: int | None = None,
                          log: Callable[[str], Any] = print) -> Path:
    """Write a hashing bundle at ``out``: this graph, the default model's tokenizer and window.

    Raises:
        BundleError: ``dim`` out of range, ``out`` is something other than a bundle, or the
            default model (whose tokenizer it uses) is not installed.
    """
    import onnx

    _check_dim(dim)
    model_dir, source = resolve_source(DEFAULT_MODEL)
    window = read_model_config(model_dir, source, max_length=max_length).max_length
    config = BundleConfig(source=hashing_source(dim), pooling=Pooling.MEAN, normalize=True,
                          max_length=window, dim=dim,
                          extra={"embedder": "hashing", "hashes": HASHES,
                                 "tokenizer_from": source})
    out, tmp = _temp_bundle_dir(out)
    try:
        model = hashing_graph(dim)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp / VARIANT_FILES["fp32"]))
        copy_tokenizer(model_dir, tmp / TOKENIZER_NAME)
        _write_config(tmp, config, OPSET, gate=None)
        _move_into_place(tmp, out, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"hashing bundle {out}: dim {dim}, window {window}, tokenizer of {source}; for smoke "
        "and load tests of the plumbing only (its vectors carry no meaning)")
    return out


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or not MIN_DIM <= dim <= MAX_DIM:
        raise BundleError(f"hashing bundle: --dim must be an integer in {MIN_DIM}..{MAX_DIM}, "
                          f"got {dim!r}")
