"""Scores over a BGE-M3 job's outputs, for reranking in a notebook (pure numpy).

Written the way FlagEmbedding computes them (``FlagEmbedding/inference/embedder/encoder_only/
m3.py``): dense is the dot product of unit vectors; sparse (lexical matching) sums
``q_w * p_w`` over the token ids both texts have; ColBERT is max-sim: for each query vector the
best dot product over the passage's vectors, averaged over the query's vectors; the combination
is ``(w0*dense + w1*sparse + w2*colbert) / sum(w)`` (FlagEmbedding's ``compute_score``; its
README uses weights 0.4, 0.2, 0.4). Inputs are what storage/readers.py returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Sparse = tuple[np.ndarray, np.ndarray]


def dense_score(q: np.ndarray, p: np.ndarray) -> float:
    """Dot product (the cosine, for the unit vectors a job writes).

    >>> dense_score(np.array([0.6, 0.8]), np.array([1.0, 0.0]))
    0.6
    """
    return float(np.dot(np.asarray(q, np.float64), np.asarray(p, np.float64)))


def sparse_score(q: Sparse, p: Sparse) -> float:
    """Lexical matching score: sum of ``q_w * p_w`` over shared token ids.

    >>> sparse_score((np.array([3, 7]), np.array([0.5, 0.2])),
    ...              (np.array([7, 9]), np.array([0.4, 0.9])))
    0.08
    """
    qi, qw = np.asarray(q[0]), np.asarray(q[1], np.float64)
    pi, pw = np.asarray(p[0]), np.asarray(p[1], np.float64)
    _, a, b = np.intersect1d(qi, pi, assume_unique=True, return_indices=True)
    return round(float((qw[a] * pw[b]).sum()), 12)


def colbert_score(q: np.ndarray, p: np.ndarray) -> float:
    """Max-sim: each query vector's best dot product over the passage, averaged over the query.

    >>> colbert_score(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.6, 0.8]]))
    0.9
    """
    if len(q) == 0 or len(p) == 0:
        return 0.0
    sims = np.asarray(q, np.float64) @ np.asarray(p, np.float64).T
    return round(float(sims.max(axis=1).mean()), 12)


def combined_score(dense: float, sparse: float, colbert: float,
                   weights: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """``(w0*dense + w1*sparse + w2*colbert) / sum(w)``.

    >>> round(combined_score(0.7796, 0.1956, 0.6260, (0.4, 0.2, 0.4)), 4)  # FlagEmbedding README
    0.6014
    """
    w0, w1, w2 = (float(w) for w in weights)
    total = w0 + w1 + w2
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    return (w0 * dense + w1 * sparse + w2 * colbert) / total
