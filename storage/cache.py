"""Stage 9: the Redis content-hash cache (an optimisation only).

Values are raw little-endian vectors (float16 by default, 2 × dim bytes), length-checked on
read: a wrong length is a miss. Lookups are one ``MGET``; writes are bounded, non-transactional
pipelines with an optional TTL. If Redis is down, slow or evicting, lookups count as misses and
writes are skipped, a warning is logged once, and the job's output stays complete and correct.

A BGE-M3 job's entry holds every output it asked for in one value (``get_entries`` /
``put_entries``): a small header, the dense vector and ColBERT vectors in the cache dtype, and
the sparse ids and weights as int32/float32 (float16 weights would exceed the 1e-4 error the
outputs are tested to). Its keys name the output set (storage/hashing.py), so a dense-only
entry is never a hit for a job that also wants sparse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600
"""Seed 004 keeps cache entries 7 days."""
PIPELINE_CHUNK = 500
DTYPES = {"float16": "<f2", "float32": "<f4"}
_MAGIC = 0x334D4546  # b"FEM3": a multi-output entry


class EmbeddingCache:
    """``get_many`` / ``put_many`` over a redis-py client; never raises on Redis errors."""

    def __init__(self, client: Any | None, dim: int, *, dtype: str = "float16",
                 ttl_s: int | None = DEFAULT_TTL_S) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.client = client
        self.dim = dim
        self.dtype = np.dtype(DTYPES[dtype])
        self.ttl_s = ttl_s or None
        self.errors = 0
        self._warned = False

    @classmethod
    def from_url(cls, url: str | None, dim: int, **kw: Any) -> EmbeddingCache:
        """A cache on ``url``; ``None`` or ``""`` gives a cache that always misses."""
        if not url:
            return cls(None, dim, **kw)
        import redis

        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2,
                                      health_check_interval=30)
        return cls(client, dim, **kw)

    def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        """Vectors (float32) or None per key, in one MGET."""
        nbytes = self.dim * self.dtype.itemsize
        out: list[np.ndarray | None] = []
        for v in self._mget(keys):
            if v is None or len(v) != nbytes:
                out.append(None)
            else:
                vec = np.frombuffer(v, dtype=self.dtype).astype(np.float32)
                out.append(vec if np.isfinite(vec).all() else None)
        return out

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> int:
        """Store vectors; returns how many were written (0 when Redis is unavailable).

        A vector that could never be read back as a hit (wrong length, or not finite once
        stored in the cache dtype: float16 overflows above 65504) is skipped, not written.
        """
        return self._set_many([(k, self._encode(v)) for k, v in items])

    def get_entries(self, keys: Sequence[str]) -> list[dict[str, Any] | None]:
        """Multi-output entries (``{"dense", "sparse"?, "colbert"?}``) or None, in one MGET."""
        return [None if v is None else self._unpack(v) for v in self._mget(keys)]

    def put_entries(self, items: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Store multi-output entries; unstorable ones (not finite, wrong width) are skipped."""
        return self._set_many([(k, self._pack(e)) for k, e in items])

    def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or self.client is None:
            return [None] * len(keys)
        try:
            return list(self.client.mget(list(keys)))
        except Exception as exc:  # redis.RedisError, OSError, timeouts: all mean "miss"
            self._failed("lookup", exc)
            return [None] * len(keys)

    def _set_many(self, encoded: Sequence[tuple[str, bytes | None]]) -> int:
        if not encoded or self.client is None:
            return 0
        values = [(key, raw) for key, raw in encoded if raw is not None]
        written = 0
        try:
            for i in range(0, len(values), PIPELINE_CHUNK):
                pipe = self.client.pipeline(transaction=False)
                for key, raw in values[i:i + PIPELINE_CHUNK]:
                    pipe.set(key, raw, ex=self.ttl_s)
                pipe.execute()
                written += len(values[i:i + PIPELINE_CHUNK])
        except Exception as exc:
            self._failed("store", exc)
        return written

    def _encode(self, vec: np.ndarray) -> bytes | None:
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.asarray(vec, dtype=self.dtype)
        if v.shape != (self.dim,) or not np.isfinite(v).all():
            return None
        return v.tobytes()

    def _pack(self, entry: dict[str, Any]) -> bytes | None:
        dense = self._encode(entry["dense"])
        ids, weights = entry.get("sparse", (np.zeros(0, np.int32), np.zeros(0, np.float32)))
        colbert = np.asarray(entry.get("colbert", np.zeros((0, 0))))
        with np.errstate(over="ignore", invalid="ignore"):
            cb = colbert.astype(self.dtype)
        if dense is None or not np.isfinite(cb).all() or not np.isfinite(weights).all():
            return None
        head = np.array([_MAGIC, len(ids), colbert.shape[0], colbert.shape[1],
                         "sparse" in entry, "colbert" in entry], dtype="<u4")
        return b"".join([head.tobytes(), dense, np.asarray(ids, "<i4").tobytes(),
                         np.asarray(weights, "<f4").tobytes(), cb.tobytes()])

    def _unpack(self, raw: bytes) -> dict[str, Any] | None:
        try:
            # Python ints: a garbage header's sizes must not wrap around in uint32 arithmetic.
            magic, n_sparse, n_cb, cb_dim, has_sparse, has_cb = (
                int(x) for x in np.frombuffer(raw[:24], "<u4"))
            sizes = [self.dim * self.dtype.itemsize, 4 * n_sparse, 4 * n_sparse,
                     n_cb * cb_dim * self.dtype.itemsize]
            if magic != _MAGIC or len(raw) != 24 + sum(sizes):
                return None
            at = np.cumsum([24, *sizes])
            entry: dict[str, Any] = {
                "dense": np.frombuffer(raw[at[0]:at[1]], self.dtype).astype(np.float32)}
            if has_sparse:
                entry["sparse"] = (np.frombuffer(raw[at[1]:at[2]], "<i4").astype(np.int32),
                                   np.frombuffer(raw[at[2]:at[3]], "<f4").astype(np.float32))
            if has_cb:
                entry["colbert"] = np.frombuffer(raw[at[3]:at[4]], self.dtype).astype(
                    np.float32).reshape(int(n_cb), int(cb_dim))
        except ValueError:  # a truncated or foreign value is a miss
            return None
        return entry if np.isfinite(entry["dense"]).all() else None

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            log.warning("embedding cache unavailable (%s failed: %s); counting misses and "
                        "carrying on: output stays complete", what, exc)
