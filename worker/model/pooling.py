"""Stage 8: pool token states into one vector per text, then L2-normalise (pure NumPy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def mean_pool(hidden: FloatArray, attention_mask: IntArray) -> FloatArray:
    """Average of the token states where the mask is 1."""
    mask = attention_mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * mask).sum(axis=1)
    return summed / np.maximum(mask.sum(axis=1), 1e-9)


def cls_pool(hidden: FloatArray, attention_mask: IntArray) -> FloatArray:
    """The first token's state (BERT [CLS], XLM-R <s>; BGE-M3 uses this)."""
    return hidden[:, 0].astype(np.float32)


def last_pool(hidden: FloatArray, attention_mask: IntArray) -> FloatArray:
    """The state of the last real token of each row (right padding)."""
    last = np.maximum(attention_mask.sum(axis=1) - 1, 0)
    return hidden[np.arange(hidden.shape[0]), last].astype(np.float32)


def l2_normalize(x: FloatArray, eps: float = 1e-12) -> FloatArray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


POOLERS = {"mean": mean_pool, "cls": cls_pool, "last": last_pool}


def pool(mode: str, hidden: FloatArray, attention_mask: IntArray, normalize: bool) -> FloatArray:
    """Pool with the bundle's mode and optionally normalise; always float32."""
    out = POOLERS[mode](hidden, attention_mask)
    return (l2_normalize(out) if normalize else out).astype(np.float32, copy=False)


def cosine_rows(a: FloatArray, b: FloatArray) -> FloatArray:
    """Row-wise cosine similarity of two equally shaped matrices (zero rows give 0).

    >>> cosine_rows(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [1.0, 1.0]]))
    array([1., 0.])
    """
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(den, 1e-12)
