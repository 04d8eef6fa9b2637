"""Embedding tables set aside while fp16/int8 are derived from an fp32 graph with external data.

Part of export (worker/export/variants.py). A model past 2 GB keeps its weights in
``model.onnx.data``; most of them are often one table that only a Gather reads (BGE-M3's word
embeddings: 250,002 x 1,024, 1 GB of its 2.27 GB). ONNX Runtime's fp16 converter and int8
quantiser load the whole model and work on whole tensors: the converter clips a tensor through
several full-size temporaries (10.4 GB peak RSS for a 2.25 GB table), the quantiser copies the
model three times. Neither needs a Gather table's values (int8 quantises MatMul weights only;
fp16 converts each table on its own), so ``load_without_tables`` hands them the graph with each
such table replaced by a one-row stub, and ``save_with_tables`` writes their result with the
tables put back, read from the fp32 data file a chunk at a time, in the type the converter gave
the stub, into the variant's own external data file: weights in memory are the rest of the
model plus one chunk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from worker.export.onnx import TWO_GB, external_data, remove_onnx

TABLE_MIN_BYTES = 64 << 20
"""Tables smaller than this stay in the graph the converters see (not worth the stub)."""
CHUNK_VALUES = 1 << 24
"""Values read, converted and written per step (64 MB of fp32)."""
INLINE_MAX = TWO_GB - (64 << 20)
"""Weights past this (tables aside) are too many for the converters' in-memory protobuf."""
ALIGN = 4096
FLOAT16 = 10
"""onnx.TensorProto.FLOAT16 (onnx is imported only where it is used)."""


@dataclasses.dataclass(frozen=True)
class Table:
    """Where a set-aside fp32 table lies in the source's external data file."""

    name: str
    dims: tuple[int, ...]
    data: Path
    offset: int
    length: int


def gather_tables(src: Path) -> dict[str, Table]:
    """The fp32 tables of at least TABLE_MIN_BYTES in ``src``'s external data that are read
    only as the data input of Gather nodes (embedding matrices); reads the graph, not the data."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(src), load_external_data=False)
    readers: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, set()).add((node.op_type, i))
    tables: dict[str, Table] = {}
    for t in model.graph.initializer:
        info = {e.key: e.value for e in t.external_data} if uses_external_data(t) else {}
        length = int(info.get("length", 0))
        if (t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1
                and length >= TABLE_MIN_BYTES and readers.get(t.name) == {("Gather", 0)}
                and length == 4 * int(np.prod(t.dims))):
            tables[t.name] = Table(t.name, tuple(t.dims), src.parent / info["location"],
                                   int(info.get("offset", 0)), length)
    return tables


def load_without_tables(src: Path, tables: dict[str, Table]) -> Any:
    """``src`` with its weights loaded except ``tables``: each is a zero stub of one row (same
    name, type and row width, so shape inference downstream is unchanged)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        if t.name in tables:
            t.dims[0] = 1
            t.raw_data = np.zeros(int(np.prod(t.dims)), dtype=np.float32).tobytes()
        elif uses_external_data(t):
            load_external_data_for_tensor(t, str(src.parent))
        else:
            continue
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    _set_shapes(model, {n: (1, *t.dims[1:]) for n, t in tables.items()})
    return model


def save_with_tables(model: Any, tables: dict[str, Table], dst: Path) -> None:
    """Write ``model`` at ``dst`` with its weights in ``<dst>.data``: ``tables`` in place of
    their stubs, streamed from their source file in the stub's type now (fp16 when the
    converter converted it, else fp32), and the rest of its weights as onnx would write them.
    External data whatever the size: the tables are never in memory whole, and ONNX Runtime
    maps the file instead of parsing a copy of it."""
    import onnx

    kinds = {t.name: t.data_type for t in model.graph.initializer if t.name in tables}
    _set_shapes(model, {n: t.dims for n, t in tables.items()})
    remove_onnx(dst)
    data = external_data(dst)
    with open(data, "wb") as f:
        for t in model.graph.initializer:
            if t.name in tables:
                del t.dims[:]
                t.dims.extend(tables[t.name].dims)
                offset = _pad(f)
                for part in _chunks(tables[t.name], kinds[t.name]):
                    f.write(part.tobytes())
            elif len(t.raw_data) >= 1024:  # onnx's own threshold for external data
                offset = _pad(f)
                f.write(t.raw_data)
            else:
                continue
            _external(t, data.name, offset, f.tell() - offset)
    onnx.save_model(model, str(dst))


def _set_shapes(model: Any, dims: dict[str, tuple[int, ...]]) -> None:
    """The shapes the graph records for these tensors (value_info, inputs), where it does."""
    for vi in [*model.graph.value_info, *model.graph.input]:
        shape = vi.type.tensor_type.shape
        if vi.name in dims and len(shape.dim) == len(dims[vi.name]):
            for dim, size in zip(shape.dim, dims[vi.name], strict=True):
                dim.dim_value = size


def _chunks(table: Table, kind: int) -> Iterator[np.ndarray]:
    """The table's values, CHUNK_VALUES at a time, in ``kind`` (fp16: see to_half)."""
    left = table.length // 4
    buf = np.empty(min(left, CHUNK_VALUES), dtype=np.float32)
    with open(table.data, "rb") as f:
        f.seek(table.offset)
        while left:
            part = buf[: min(left, buf.size)]
            if f.readinto(memoryview(part).cast("B")) != part.nbytes:
                raise OSError(f"{table.data}: cut short (tensor {table.name} needs "
                              f"{table.length} bytes from offset {table.offset})")
            left -= part.size
            yield to_half(part) if kind == FLOAT16 else part


def to_half(x: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 bit for bit as ONNX Runtime's converter (``convert_np_to_float16``) does
    it, at about 4x its speed: a finite value past fp16's range becomes +-65504 (not inf), a
    non-zero one that would round to zero becomes +-5.96e-08 (the smallest subnormal); zero,
    inf and NaN are kept. Works on the bit patterns of the plain cast."""
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)
    hb = half.view(np.uint16) & 0x7FFF
    xb = x.view(np.uint32) & 0x7FFFFFFF
    under = (hb == 0) & (xb != 0)
    over = (hb == 0x7C00) & (xb < 0x7F800000)
    if under.any():
        half[under] = np.copysign(np.float16(5.96e-08), x[under])
    if over.any():
        half[over] = np.copysign(np.float16(65504), x[over])
    return half


def _external(t: Any, location: str, offset: int, length: int) -> None:
    import onnx

    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")


def _pad(f: Any) -> int:
    at = f.tell()
    gap = -at % ALIGN
    if gap:
        f.write(b"\0" * gap)
    return at + gap

