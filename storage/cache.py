"""Stage 9b: the Redis content-hash cache (an optimisation only).

Values are raw little-endian vectors (float16 by default, 2 × dim bytes), length-checked on
read: a wrong length is a miss. Lookups are one ``MGET``; writes are bounded, non-transactional
pipelines with an optional TTL. If Redis is down, slow or evicting, lookups count as misses and
writes are skipped, a warning is logged once, and the job's output stays complete and correct.
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
        if not keys or self.client is None:
            return [None] * len(keys)
        try:
            raw = self.client.mget(list(keys))
        except Exception as exc:  # redis.RedisError, OSError, timeouts: all mean "miss"
            self._failed("lookup", exc)
            return [None] * len(keys)
        nbytes = self.dim * self.dtype.itemsize
        out: list[np.ndarray | None] = []
        for v in raw:
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
        if not items or self.client is None:
            return 0
        values = [(key, raw) for key, raw in ((k, self._encode(v)) for k, v in items)
                  if raw is not None]
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

    def _failed(self, what: str, exc: Exception) -> None:
        self.errors += 1
        if not self._warned:
            self._warned = True
            log.warning("embedding cache unavailable (%s failed: %s); counting misses and "
                        "carrying on: output stays complete", what, exc)
