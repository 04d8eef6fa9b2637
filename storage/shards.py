"""Stage 10: write and validate the job's Parquet shards, atomically and idempotently.

Shard paths come only from integers (``part-00007.parquet``). Writing a shard that already
exists and validates is a no-op reported as "already done", so a redelivered task is harmless.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.atomic import write_atomic
from storage.jobfs import AnyPath, StorePath, write_once
from storage.quantize import BITS, from_packed, numpy_dtype, packed_bits
from storage.schema import INPUT_SCHEMA, METRICS_SCHEMA, dense_type, embeddings_schema

Sparse = tuple[np.ndarray, np.ndarray]
"""``(token ids, weights)`` of one chunk, sorted by id."""

META_PREFIX = b"embedfleet."


def shard_name(shard: int) -> str:
    """``part-NNNNN.parquet`` from an integer, never from input data."""
    if not isinstance(shard, int) or isinstance(shard, bool) or shard < 0:
        raise ValueError(f"shard number must be a non-negative int, got {shard!r}")
    return f"part-{shard:05d}.parquet"


def write_table(path: AnyPath, table: pa.Table, metadata: Mapping[str, Any] | None = None,
                *, expected_chunks: int | None = -1) -> bool:
    """Write ``table`` to ``path`` via a temporary file and rename; True when written.

    With ``expected_chunks`` (not -1) this is a commit: in an object store the shard is
    written once (a conditional PUT), so of two attempts racing for it the first wins and the
    other gets False and discards its result; an object that is there but does not validate
    (not a commit) is replaced. Locally the rename replaces it with the same content, as always.
    """
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({META_PREFIX + k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)

    # No dictionary for float vectors: nearly every value is distinct, so the dictionary page
    # is pure overhead (a float32 384-d vector took 2,217 bytes with it, about 1,420 without:
    # benchmarks/compact.py). Integer and bit vectors keep it (int8: 372 vs 542 bytes).
    plain = {f.name for f in table.schema
             if pa.types.is_fixed_size_list(f.type) and pa.types.is_floating(f.type.value_type)}
    dictionary = [n for n in table.column_names if n not in plain] if plain else True

    def _write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=dictionary)

    if expected_chunks == -1 or not isinstance(path, StorePath):
        write_atomic(path, _write)
        return True
    with tempfile.TemporaryDirectory(prefix="embedfleet-put-") as d:
        _write(Path(d) / path.name)
        data = (Path(d) / path.name).read_bytes()
    if write_once(path, data):
        return True
    if shard_is_valid(path, expected_chunks):
        return False
    write_atomic(path, _write)
    return True


def read_metadata(path: Path) -> dict[str, str]:
    """The ``embedfleet.*`` key-value metadata of a Parquet file."""
    meta = pq.read_schema(path).metadata or {}
    return {k[len(META_PREFIX):].decode(): v.decode() for k, v in meta.items()
            if k.startswith(META_PREFIX)}


def shard_is_valid(path: Path, expected_chunks: int | None) -> bool:
    """Footer readable and rows + rejected chunks equal to what the manifest expects."""
    try:
        md = pq.read_metadata(path)
        rejected = int(read_metadata(path).get("rejected", "0"))
    except (OSError, ValueError, pa.ArrowException):
        return False
    return expected_chunks is None or md.num_rows + rejected == expected_chunks


OUTPUT_COLUMNS = {"dense": ("embedding",), "sparse": ("sparse_ids", "sparse_weights"),
                  "colbert": ("colbert",)}


def output_sizes(paths: Sequence[Path]) -> dict[str, dict[str, int]]:
    """Per output (dense, sparse, colbert): rows, and the bytes its columns take in the files
    (``disk``: compressed column chunks; ``encoded``: before compression), from the footers.

    A BGE-M3 job's outputs side by side, or a ``--dtype`` job's dense column, in bytes that
    were written (``producer report``)."""
    out: dict[str, dict[str, int]] = {}
    for p in paths:
        md = pq.read_metadata(p)
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                top = col.path_in_schema.split(".")[0]
                name = next((o for o, cs in OUTPUT_COLUMNS.items() if top in cs), None)
                if name is None:
                    continue
                d = out.setdefault(name, {"rows": 0, "disk": 0, "encoded": 0})
                d["disk"] += col.total_compressed_size
                d["encoded"] += col.total_uncompressed_size
            for name in {n for n, cs in OUTPUT_COLUMNS.items()
                         if any(rg.column(c).path_in_schema.split(".")[0] in cs
                                for c in range(rg.num_columns))}:
                out[name]["rows"] += rg.num_rows
    return out


def input_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=INPUT_SCHEMA)


def embeddings_table(inputs: pa.Table, vectors: np.ndarray, cached: np.ndarray,
                     keep: np.ndarray | None = None, *,
                     sparse: Sequence[Sparse | None] | None = None,
                     colbert: Sequence[np.ndarray | None] | None = None,
                     colbert_dim: int = 0, dtype: str = "float32",
                     dim: int | None = None) -> pa.Table:
    """The embeddings shard: input columns + vectors + cached flag (rows in ``keep`` only).

    ``vectors`` are already in the stored ``dtype`` (storage/quantize.py ``to_stored``); for
    binary/ubinary they are the packed bytes and ``dim`` names the number of bits.

    ``sparse`` (``(ids, weights)`` per row) and ``colbert`` (a matrix per row) add the BGE-M3
    columns (storage/schema.py); rows not in ``keep`` may hold ``None``.
    """
    dim = int(vectors.shape[1]) if dim is None else dim
    rows = np.arange(len(vectors)) if keep is None else np.flatnonzero(keep)
    if keep is not None:
        inputs = inputs.filter(pa.array(keep))
        vectors, cached = vectors[keep], cached[keep]
    cols = {
        "doc_id": inputs["doc_id"], "chunk_index": inputs["chunk_index"],
        "char_start": inputs["char_start"], "char_end": inputs["char_end"],
        "n_tokens": inputs["n_tokens"], "text_sha256": inputs["text_sha256"],
        "embedding": dense_array(vectors, dtype, dim),
    }
    outputs = ["dense"]
    if sparse is not None:
        outputs.append("sparse")
        picked = [sparse[i] for i in rows]
        cols["sparse_ids"] = _lists([p[0] for p in picked], pa.int32())  # type: ignore[index]
        cols["sparse_weights"] = _lists([p[1] for p in picked], pa.float32())  # type: ignore
    if colbert is not None:
        outputs.append("colbert")
        cols["colbert"] = _colbert_array([colbert[i] for i in rows], colbert_dim)  # type: ignore
    cols["cached"] = pa.array(cached, type=pa.bool_())
    cols["line"] = inputs["line"]
    return pa.Table.from_pydict(cols, schema=embeddings_schema(dim, outputs, colbert_dim,
                                                                  dtype))


def dense_array(vectors: np.ndarray, dtype: str, dim: int) -> pa.Array:
    """The ``embedding`` column from stored vectors (storage/schema.py ``dense_type``)."""
    if dtype in BITS:
        raw = np.ascontiguousarray(packed_bits(vectors, dtype))
        return pa.FixedSizeBinaryArray.from_buffers(dense_type(dim, dtype), len(raw),
                                                    [None, pa.py_buffer(raw.tobytes())])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=numpy_dtype(dtype)).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, dim)


def dense_matrix(column: pa.Array | pa.ChunkedArray, dtype: str) -> np.ndarray:
    """The NumPy matrix of an ``embedding`` column, in the stored dtype."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if dtype in BITS:
        width = col.type.byte_width
        raw = np.frombuffer(col.buffers()[1], np.uint8, len(col) * width, col.offset * width)
        return from_packed(raw.reshape(-1, width), dtype)
    flat = col.values.to_numpy(zero_copy_only=False)
    return flat.astype(numpy_dtype(dtype), copy=False).reshape(-1, col.type.list_size)


def dense_spec(path: Path) -> tuple[str, int]:
    """``(dtype, dim)`` of a shard's dense column (shards from before --dtype: float32)."""
    schema = pq.read_schema(path)
    meta = schema.metadata or {}
    dtype = meta.get(b"embedfleet.dtype", b"float32").decode()
    typ = schema.field("embedding").type
    dim = int(meta.get(b"embedfleet.dim", b"0")) or getattr(typ, "list_size", 0)
    return dtype, dim


def _lists(values: Sequence[np.ndarray], typ: pa.DataType) -> pa.Array:
    """A list<typ> column from one numpy array per row, without a Python loop per element."""
    lengths = np.array([len(v) for v in values], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(values) if values else np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=typ))


def _colbert_array(mats: Sequence[np.ndarray], dim: int) -> pa.Array:
    """list<fixed_size_list<float32>[dim]>: one (n_vectors, dim) matrix per row."""
    inner = [np.ascontiguousarray(m, dtype=np.float32).reshape(-1, dim) for m in mats]
    lengths = np.array([len(m) for m in inner], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = np.concatenate(inner).reshape(-1) if inner else np.zeros(0, np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), dim)
    return pa.ListArray.from_arrays(pa.array(offsets), vectors)


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(list(rows), schema=METRICS_SCHEMA)
