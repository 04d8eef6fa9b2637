"""Stage 10: the Parquet schemas of the job directory (a public contract: see the README)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

INPUT_SCHEMA = pa.schema([
    pa.field("line", pa.int64()),            # 1-based line (or row) of the input record
    pa.field("doc_id", pa.string()),
    pa.field("chunk_index", pa.int32()),
    pa.field("chunk_count", pa.int32()),
    pa.field("char_start", pa.int64()),
    pa.field("char_end", pa.int64()),
    pa.field("n_tokens", pa.int32()),         # tokens the model sees, special tokens included
    pa.field("text", pa.string()),            # exactly what is embedded (prefix included)
    pa.field("text_sha256", pa.string()),
    # The ids the model sees for ``text`` (special tokens included), when staging had them (a
    # document that is one chunk); null: the worker tokenises the text. Shards without the
    # column (earlier releases) are read the same way.
    pa.field("input_ids", pa.list_(pa.int32())),
])


def dense_type(dim: int, dtype: str = "float32") -> pa.DataType:
    """The ``embedding`` column's type: ``fixed_size_list<float32|float16|int8|uint8>[dim]``,
    or ``fixed_size_binary[ceil(dim / 8)]`` of packed sign bits (binary, ubinary: same bytes,
    the first dimension in the high bit of the first byte; ``read_matrix`` gives binary as
    int8 ``byte - 128`` and ubinary as uint8, as sentence-transformers)."""
    if dtype in ("binary", "ubinary"):
        return pa.binary((dim + 7) // 8)
    return pa.list_(_VALUE_TYPES[dtype], dim)


_VALUE_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(),
                "uint8": pa.uint8()}


def embeddings_schema(dim: int, outputs: Sequence[str] = ("dense",),
                      colbert_dim: int = 0, dtype: str = "float32") -> pa.Schema:
    """The output shard schema; a dense-only float32 job's is the same as before outputs existed.

    ``dtype``/``dim`` (``--dtype``, ``--dim``) set the ``embedding`` type (``dense_type``) and
    are named in the schema metadata (``embedfleet.dtype``, ``embedfleet.dim``).

    BGE-M3 outputs add, after ``embedding``: ``sparse_ids`` list<int32> and ``sparse_weights``
    list<float32> (sorted by id, max weight per id, special tokens left out), and ``colbert``
    list<fixed_size_list<float32>[colbert_dim]> (``n_tokens - 1`` unit vectors: CLS dropped).
    """
    fields = [
        pa.field("doc_id", pa.string()),
        pa.field("chunk_index", pa.int32()),
        pa.field("char_start", pa.int64()),
        pa.field("char_end", pa.int64()),
        pa.field("n_tokens", pa.int32()),
        pa.field("text_sha256", pa.string()),
        pa.field("embedding", dense_type(dim, dtype)),
    ]
    if "sparse" in outputs:
        fields += [pa.field("sparse_ids", pa.list_(pa.int32())),
                   pa.field("sparse_weights", pa.list_(pa.float32()))]
    if "colbert" in outputs:
        fields.append(pa.field("colbert", pa.list_(pa.list_(pa.float32(), colbert_dim))))
    # ``line``: the 1-based line (row) of the corpus record the chunk comes from (issue 27:
    # every row traceable to its source record; two records sharing an id differ here).
    return pa.schema([*fields, pa.field("cached", pa.bool_()), pa.field("line", pa.int64())],
                     metadata={b"embedfleet.dtype": dtype.encode(),
                               b"embedfleet.dim": str(dim).encode()})


METRICS_SCHEMA = pa.schema([
    pa.field("shard", pa.int32()),
    pa.field("batch_index", pa.int32()),
    pa.field("hostname", pa.string()),
    pa.field("queue", pa.string()),
    pa.field("provider", pa.string()),
    pa.field("precision", pa.string()),
    pa.field("fallback", pa.bool_()),          # CUDA requested, CPU used
    pa.field("chunks", pa.int32()),
    pa.field("real_tokens", pa.int64()),
    pa.field("padded_tokens", pa.int64()),
    pa.field("cache_hits", pa.int32()),
    pa.field("tokenize_ms", pa.float64()),
    pa.field("inference_ms", pa.float64()),
    pa.field("total_ms", pa.float64()),
    pa.field("tokens_per_s", pa.float64()),
    pa.field("rss_mb", pa.float64()),
    pa.field("output_bytes", pa.int64()),     # raw bytes of the batch's outputs (all columns)
    pa.field("attempt", pa.int32()),
    pa.field("timestamp", pa.timestamp("ms", tz="UTC")),
])
"""One row per inference batch. A shard answered wholly from the cache has one row with
``chunks == cache_hits`` and no inference time."""
