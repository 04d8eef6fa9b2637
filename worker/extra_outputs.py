"""What a shard job asks for beyond the dense vector: BGE-M3's sparse and ColBERT outputs.

Used by worker/pipeline.py at four points, so the pipeline reads the same for every job:
cache keys (they name the output set), cache lookup and store (multi-output entries), the
batch run (one session run returns every output, worker/model/session.py ``run_outputs``)
and the shard's columns. A dense-only job (the default) takes none of the extra paths: the
model's ``run`` is called as before, the cache holds plain vectors, the schema is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from storage.hashing import content_key
from worker.model.heads import output_nbytes

DENSE = ("dense",)


class ShardOutputs:
    """The output set of a job and, per chunk position, the sparse and ColBERT results."""

    def __init__(self, names: Sequence[str], n: int, colbert_dim: int = 0) -> None:
        self.names = tuple(names) or DENSE
        self.colbert_dim = colbert_dim
        self.dense_bytes: int | None = None
        """Bytes of one stored dense vector (--dim/--dtype); None: float32 at the model's dim."""
        self.extra: dict[str, list[Any]] = {o: [None] * n for o in self.names if o != "dense"}

    @property
    def dense_only(self) -> bool:
        return self.names == DENSE

    def keys(self, fingerprint: str, sha256s: Sequence[str]) -> list[str]:
        return [content_key(fingerprint, h, self.names) for h in sha256s]

    def lookup(self, cache: Any, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Dense vectors of the hits (None for a miss); a hit's other outputs are kept here."""
        if self.dense_only:
            return cache.get_many(keys)  # type: ignore[no-any-return]
        dense: list[np.ndarray | None] = []
        for i, entry in enumerate(cache.get_entries(keys)):
            if entry is None or any(o not in entry for o in self.extra):
                dense.append(None)
                continue
            for name in self.extra:
                self.extra[name][i] = entry[name]
            dense.append(entry["dense"])
        return dense

    def store(self, cache: Any, keys: Sequence[str], vectors: np.ndarray,
              positions: Sequence[int]) -> int:
        """Put the freshly embedded positions into the cache."""
        if self.dense_only:
            return cache.put_many([(keys[i], vectors[i]) for i in positions])  # type: ignore
        return cache.put_entries([(keys[i], {"dense": vectors[i], **{
            name: rows[i] for name, rows in self.extra.items()}}) for i in positions])

    def bind(self, model: Any) -> Any:
        """The model as the pipeline calls it: ``run(batch)`` -> dense vectors."""
        if self.dense_only:
            return model
        self.colbert_dim = model.bundle.config.colbert_dim
        return _MultiOutputRun(model, self)

    def nbytes(self, positions: Sequence[int], dim: int) -> int:
        """Raw bytes of the outputs of ``positions`` (the metrics' ``output_bytes``)."""
        sparse, colbert = self.extra.get("sparse"), self.extra.get("colbert")
        return sum(output_nbytes(dim, sparse[i] if sparse else None,
                                 colbert[i] if colbert else None, self.dense_bytes)
                   for i in positions)

    def table_columns(self) -> dict[str, Any]:
        """Keyword arguments of storage.shards.embeddings_table for the extra columns."""
        cols: dict[str, Any] = {f: rows for f, rows in self.extra.items()}
        if "colbert" in cols:
            cols["colbert_dim"] = self.colbert_dim
        return cols


class _MultiOutputRun:
    """A loaded model whose ``run`` also keeps the batch's sparse/ColBERT rows by position."""

    def __init__(self, model: Any, outputs: ShardOutputs) -> None:
        self._model, self._outputs = model, outputs

    def __getattr__(self, name: str) -> Any:  # pad_id, bundle, fingerprint, provider, ...
        return getattr(self._model, name)

    def run(self, batch: Any) -> np.ndarray:
        got = self._model.run_outputs(batch, self._outputs.names)
        for name, rows in self._outputs.extra.items():
            for pos, row in zip(batch.positions, got[name]):
                rows[pos] = row
        return got["dense"]  # type: ignore[no-any-return]
