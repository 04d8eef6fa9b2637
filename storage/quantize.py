"""Compact dense vectors: Matryoshka truncation and float16 / int8 / uint8 / binary casts.

Pure NumPy. The int8/uint8/binary/ubinary values are those of sentence-transformers'
``quantize_embeddings`` (``sentence_transformers.util.quantization``) given the same calibration
vectors: per-dimension ``[min, max]`` ranges cut into 255 steps, ``floor`` then ``clip`` to
0..255 (int8 shifts by -128); binary packs the sign bits (``> 0``) big-endian with
``np.packbits`` (ubinary: those bytes as uint8; binary: ``byte - 128`` as int8).

A job's dim, dtype and (int8/uint8) ranges are in its manifest (``dense``, ``calibration``);
``storage.readers.quantize_queries`` turns query vectors into the same representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
RANGED = ("int8", "uint8")
"""Dtypes that need per-dimension ranges calibrated on a sample of the job's vectors."""
BITS = ("binary", "ubinary")
CALIBRATION_MAX = 10_000
"""At most this many vectors (evenly spaced) calibrate the int8/uint8 ranges."""

_NUMPY = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
          "binary": np.int8, "ubinary": np.uint8}


def numpy_dtype(dtype: str) -> type:
    """The NumPy dtype of a stored vector (binary: int8 bytes, as sentence-transformers)."""
    return _NUMPY[check_dtype(dtype)]  # type: ignore[return-value]


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: unknown; valid: {', '.join(DTYPES)}")
    return dtype


def stored_width(dtype: str, dim: int) -> int:
    """Values per stored vector: ``dim``, or ``ceil(dim / 8)`` bytes of packed bits."""
    return (dim + 7) // 8 if check_dtype(dtype) in BITS else dim


def bytes_per_vector(dtype: str, dim: int) -> int:
    """Raw bytes of one stored vector.

    >>> [bytes_per_vector(d, 384) for d in DTYPES]
    [1536, 768, 384, 384, 48, 48]
    """
    return stored_width(dtype, dim) * np.dtype(numpy_dtype(dtype)).itemsize


def truncate(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """Keep the first ``dim`` dimensions and re-normalise (Matryoshka); float32.

    ``dim`` None or the full width: the vectors unchanged (as float32).

    >>> truncate(np.array([[3.0, 4.0, 12.0]]), 2).astype(float).round(2).tolist()
    [[0.6, 0.8]]
    """
    v = np.asarray(vectors, dtype=np.float32)
    if dim is None or dim == v.shape[1]:
        return v
    if not 0 < dim < v.shape[1]:
        raise ValueError(f"dim {dim}: must be between 1 and {v.shape[1]}")
    cut = v[:, :dim]
    norm = np.linalg.norm(cut, axis=1, keepdims=True)
    return (cut / np.maximum(norm, 1e-12)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Calibration:
    """Per-dimension ``[min, max]`` (shape ``(2, dim)`` float32) and the sample they came from."""

    ranges: np.ndarray
    sample_size: int
    shard: int | None = None
    """The shard whose vectors were the sample (None: given by the caller)."""

    def to_dict(self) -> dict[str, Any]:
        return {"sample_size": self.sample_size, "shard": self.shard,
                "min": [float(x) for x in self.ranges[0]],
                "max": [float(x) for x in self.ranges[1]]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        ranges = np.array([d["min"], d["max"]], dtype=np.float32)
        return cls(ranges, int(d["sample_size"]), d.get("shard"))


def calibration_sample(vectors: np.ndarray, limit: int = CALIBRATION_MAX) -> np.ndarray:
    """At most ``limit`` rows, evenly spaced (deterministic), of ``vectors``."""
    if len(vectors) <= limit:
        return vectors
    return vectors[np.linspace(0, len(vectors) - 1, limit).astype(np.int64)]


def calibrate(sample: np.ndarray, shard: int | None = None) -> Calibration:
    """Ranges from calibration vectors, as ``quantize_embeddings(calibration_embeddings=...)``.

    Raises:
        ValueError: fewer than two vectors (a range from one vector is a point).
    """
    s = np.asarray(sample)
    if s.ndim != 2 or len(s) < 2:
        raise ValueError(f"int8/uint8 calibration needs at least 2 vectors, got {len(s)}")
    ranges = np.vstack((s.min(axis=0), s.max(axis=0))).astype(np.float32)
    return Calibration(ranges, len(s), shard)


def quantize(vectors: np.ndarray, dtype: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Cast float vectors to ``dtype`` (``ranges``: int8/uint8 only, shape ``(2, dim)``).

    Raises:
        ValueError: an unknown dtype, or int8/uint8 without ranges.
    """
    v = np.asarray(vectors)
    if check_dtype(dtype) == "float32":
        return v.astype(np.float32)
    if dtype == "float16":
        return v.astype(np.float16)
    if dtype in BITS:
        packed = np.packbits(v > 0, axis=-1)
        return packed if dtype == "ubinary" else (packed - 128).astype(np.int8)
    if ranges is None:
        raise ValueError(f"dtype {dtype}: needs calibration ranges (see calibrate)")
    r = np.asarray(ranges, dtype=np.float32)
    if r.shape != (2, v.shape[-1]):
        raise ValueError(f"ranges of shape {r.shape} for vectors of dim {v.shape[-1]}")
    starts = r[0, :]
    steps = (r[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q = np.clip(np.floor((v - starts) / steps), 0, 255)
    return q.astype(np.uint8) if dtype == "uint8" else (q - 128).astype(np.int8)


def packed_bits(stored: np.ndarray, dtype: str) -> np.ndarray:
    """The packed sign bits (uint8) of binary/ubinary vectors as read back.

    >>> packed_bits(np.array([[-128, 127]], dtype=np.int8), "binary").tolist()
    [[0, 255]]
    """
    if dtype not in BITS:
        raise ValueError(f"dtype {dtype}: not packed bits")
    a = np.asarray(stored)
    return a.view(np.uint8) ^ np.uint8(128) if dtype == "binary" else a.view(np.uint8)


def from_packed(packed: np.ndarray, dtype: str) -> np.ndarray:
    """Stored bytes (packed bits, uint8) as the NumPy values of ``dtype`` (binary: int8)."""
    p = np.asarray(packed, dtype=np.uint8)
    return (p ^ np.uint8(128)).view(np.int8) if dtype == "binary" else p


def to_stored(vectors: np.ndarray, dim: int | None, dtype: str,
            calibration: Calibration | None = None) -> np.ndarray:
    """Truncate (and re-normalise) to ``dim``, then cast to ``dtype``."""
    v = truncate(vectors, dim)
    return quantize(v, dtype, calibration.ranges if calibration is not None else None)
