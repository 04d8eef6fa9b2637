"""The chunks of one shard as a worker holds them, and what has happened to each."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from worker.extra_outputs import DENSE, ShardOutputs


@dataclass
class ShardRows:
    """The chunks of one shard and what has happened to each: cached, embedded or rejected."""

    inputs: pa.Table
    texts: list[str]
    vectors: np.ndarray
    cached: np.ndarray
    ok: np.ndarray
    rejects: list[dict[str, Any]] = field(default_factory=list)
    outputs: ShardOutputs = field(default_factory=lambda: ShardOutputs(DENSE, 0))

    @classmethod
    def read(cls, path: os.PathLike[str] | str, dim: int,
             outputs: Sequence[str] = DENSE) -> ShardRows:
        inputs = pq.read_table(path)
        n = inputs.num_rows
        return cls(inputs, inputs["text"].to_pylist(), np.zeros((n, dim), dtype=np.float32),
                   np.zeros(n, dtype=bool), np.ones(n, dtype=bool),
                   outputs=ShardOutputs(outputs, n))

    def output_bytes(self, positions: Sequence[int]) -> int:
        """Raw bytes of what these positions write (rejected ones write nothing)."""
        return self.outputs.nbytes([i for i in positions if self.ok[i]], self.vectors.shape[1])

    def stored_ids(self, vocab: int, max_length: int) -> dict[int, np.ndarray] | None:
        """The ids staging stored per row (rows it had none for are absent); None when any is
        inconsistent (count differs from ``n_tokens``, an id outside the vocabulary, longer than
        the window): the caller then tokenises every row."""
        if "input_ids" not in self.inputs.column_names:
            return {}
        col = self.inputs["input_ids"].combine_chunks()
        valid = ~col.is_null().to_numpy(zero_copy_only=False)
        if not valid.any():
            return {}
        offsets, values = col.offsets.to_numpy(), col.values.to_numpy(zero_copy_only=False)
        lengths = np.diff(offsets)
        n_tokens = self.inputs["n_tokens"].to_numpy(zero_copy_only=False)
        bad = valid & ((lengths != n_tokens) | (lengths > max_length))
        if bad.any() or (len(values) and (values.min() < 0 or values.max() >= vocab)):
            return None
        return {int(i): values[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(valid)}

    def todo(self) -> list[int]:
        """Positions still to embed: not cached, not rejected."""
        return [i for i in range(len(self.texts)) if not self.cached[i] and self.ok[i]]

    def reject(self, i: int, reason: str) -> None:
        self.ok[i] = False
        self.rejects.append({"line": self.inputs["line"][i].as_py(),
                             "doc_id": self.inputs["doc_id"][i].as_py(),
                             "chunk_index": self.inputs["chunk_index"][i].as_py(),
                             "reason": reason})
