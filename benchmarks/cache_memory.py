"""Redis memory per cached vector (issue 27: the cache as a bounded hot layer).

Writes N vectors through ``storage.cache.EmbeddingCache`` (the workers' writer: real keys, TTL,
float16 values) into a fresh redis-server, then reads ``MEMORY USAGE`` of sample keys and the
server's ``used_memory`` growth, and fills a capped server past its ``maxmemory`` to show the
policy evicts instead of failing. Prints JSON; ``--write`` stores it in
benchmarks/results/cache_memory.json.

    python benchmarks/cache_memory.py --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.cache import EmbeddingCache  # noqa: E402
from storage.hashing import content_key, text_sha256  # noqa: E402
from tests.procs import RedisServer  # noqa: E402


def fill(cache: EmbeddingCache, n: int, dim: int, start: int = 0) -> list[str]:
    rng = np.random.default_rng(start)
    keys = [content_key("f" * 64, text_sha256(f"chunk {i}")) for i in range(start, start + n)]
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    for i in range(0, n, 5000):
        cache.put_many(list(zip(keys[i:i + 5000], vecs[i:i + 5000])))
    return keys


def measure(dim: int, n: int, dtype: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        srv = RedisServer(Path(d)).start()
        try:
            client = srv.client()
            base = client.info("memory")["used_memory"]
            keys = fill(EmbeddingCache(client, dim, dtype=dtype), n, dim)
            used = client.info("memory")["used_memory"] - base
            sample = [client.memory_usage(k, samples=0) for k in keys[:: max(1, n // 200)]]
        finally:
            srv.stop()
    return {"dim": dim, "dtype": dtype, "vectors": n, "value_bytes": dim * (2 if dtype ==
            "float16" else 4), "memory_usage_bytes": float(np.mean(sample)),
            "used_memory_per_vector": round(used / n, 1)}


def eviction(dim: int, cap_mb: int, policy: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        srv = RedisServer(Path(d)).start()
        try:
            client = srv.client()
            client.config_set("maxmemory", f"{cap_mb}mb")
            client.config_set("maxmemory-policy", policy)
            cache = EmbeddingCache(client, dim)
            n = cap_mb * 2**20 // 500  # about twice what fits
            fill(cache, n, dim)
            info = client.info()
            return {"policy": policy, "maxmemory_mb": cap_mb, "written": n,
                    "kept": client.dbsize(), "evicted_keys": info["evicted_keys"],
                    "cache_errors": cache.errors}
        finally:
            srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    out = {"command": "python benchmarks/cache_memory.py --write",
           "per_vector": [measure(384, a.n, "float16"), measure(384, a.n, "float32"),
                          measure(1024, a.n, "float16")],
           "eviction": [eviction(384, 16, "allkeys-lfu"), eviction(384, 16, "volatile-lru")]}
    print(json.dumps(out, indent=2))
    if a.write:
        (ROOT / "benchmarks" / "results" / "cache_memory.json").write_text(
            json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
