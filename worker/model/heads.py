"""Stage 8: BGE-M3's sparse and ColBERT outputs from the graph's per-token values (pure numpy).

The graph returns raw per-token values for the whole padded batch (worker/export/m3.py); the
rules that need the attention mask are applied here, as FlagEmbedding applies them
(``FlagEmbedding/inference/embedder/encoder_only/m3.py``):

- sparse: per text, over its real tokens only, drop the ids in ``skip_ids`` (CLS, EOS, PAD,
  UNK), keep weights > 0, and keep the max weight per token id; returned sorted by id;
- ColBERT: per text, the vectors of real tokens 1..n-1 (CLS dropped, the final ``</s>`` kept),
  each L2-normalised: ``n_tokens - 1`` vectors.

Padding never reaches an output: every row is cut at its own mask length.
"""

from __future__ import annotations

import numpy as np

Sparse = tuple[np.ndarray, np.ndarray]
"""``(ids int32 sorted ascending, weights float32)`` of one text."""


def sparse_rows(weights: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray,
                skip_ids: tuple[int, ...]) -> list[Sparse]:
    """Lexical weights per row: max weight per token id, special tokens and zeros left out.

    >>> w = np.array([[[0.5], [0.2], [0.9], [0.0], [0.7]]], dtype=np.float32)
    >>> ids = np.array([[0, 7, 7, 9, 2]])
    >>> got_ids, got_w = sparse_rows(w, ids, np.ones_like(ids), (0, 1, 2, 3))[0]
    >>> got_ids.tolist(), [round(float(x), 3) for x in got_w]
    ([7], [0.9])
    """
    w = weights.reshape(weights.shape[0], weights.shape[1])
    lengths = attention_mask.sum(axis=1)
    skip = np.asarray(skip_ids, dtype=np.int64)
    out: list[Sparse] = []
    for r in range(w.shape[0]):
        n = int(lengths[r])
        ids, vals = input_ids[r, :n].astype(np.int64), w[r, :n].astype(np.float32)
        keep = (vals > 0) & ~np.isin(ids, skip)
        ids, vals = ids[keep], vals[keep]
        order = np.argsort(ids, kind="stable")
        ids, vals = ids[order], vals[order]
        uniq, start = np.unique(ids, return_index=True)
        best = np.maximum.reduceat(vals, start) if len(vals) else vals
        out.append((uniq.astype(np.int32), best.astype(np.float32)))
    return out


def colbert_rows(vectors: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
    """Per row, the L2-normalised vectors of real tokens 1..n-1: ``n_tokens - 1`` rows each."""
    lengths = attention_mask.sum(axis=1)
    out = []
    for r in range(vectors.shape[0]):
        v = vectors[r, 1: int(lengths[r])].astype(np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        out.append(v / np.maximum(norms, 1e-12))
    return out


def output_nbytes(dim: int, sparse: Sparse | None = None, colbert: np.ndarray | None = None,
                  dense_bytes: int | None = None) -> int:
    """Bytes one chunk's outputs take as raw Parquet values (before compression).

    ``dense_bytes``: the stored dense vector's size (--dim/--dtype); default float32 x ``dim``.

    >>> output_nbytes(4, (np.zeros(3, np.int32), np.zeros(3, np.float32)), np.zeros((5, 2)))
    80
    """
    n = 4 * dim if dense_bytes is None else dense_bytes
    if sparse is not None:
        n += 8 * len(sparse[0])
    if colbert is not None:
        n += 4 * int(np.prod(colbert.shape))
    return n
