"""Worker configuration, read once from an environment mapping and passed down.

Nothing reads ``os.environ`` at import time: ``WorkerSettings.from_env(os.environ)`` is called
once when the Celery app is built (``worker.celery_app.default_app``); tests hand in a dict.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every knob of a worker; the README's configuration table mirrors this class."""

    broker_url: str = DEFAULT_BROKER_URL
    """EMBED_BROKER_URL or CELERY_BROKER_URL: Redis (redis://, rediss://) or RabbitMQ (amqp://)."""
    cache_url: str | None = None
    """EMBED_CACHE_URL: Redis for the embedding cache; default the broker's Redis; 'none' = off."""
    cache_dtype: str = "float16"
    """EMBED_CACHE_DTYPE: float16 (half the memory) or float32 (bit-exact re-reads)."""
    cache_ttl_s: int = 7 * 24 * 3600
    """EMBED_CACHE_TTL: seconds a cached vector lives (0 = no TTL; rely on maxmemory)."""
    precision: str = "auto"
    """EMBED_PRECISION: auto (gpu: fp16, cpu: int8 if the bundle has it), fp32, fp16, int8."""
    device: str = "queue"
    """EMBED_DEVICE: queue (the task's queue decides), cpu, gpu, auto."""
    gpu_strict: bool = False
    """EMBED_GPU_STRICT: 1 = fail instead of falling back to CPU when CUDA is missing."""
    gpu_device_id: int = 0
    """EMBED_GPU_DEVICE_ID: CUDA device ordinal."""
    tensorrt: bool = False
    """EMBED_TENSORRT: 1 = put TensorRT before CUDA when available (opt-in)."""
    threads: int | None = None
    """EMBED_THREADS: ONNX Runtime intra-op threads; default cores / worker concurrency."""
    home: str | None = None
    """EMBED_HOME: where default bundles are exported (default ~/.cache/embedfleet)."""
    cpu_queue: str = "cpu"
    """EMBED_CPU_QUEUE: name of the CPU queue."""
    gpu_queue: str = "gpu"
    """EMBED_GPU_QUEUE: name of the GPU queue."""
    max_batch_tokens: int | None = None
    """EMBED_MAX_BATCH_TOKENS: padded tokens per inference batch (rows × longest); default
    4096 on CPU, 32768 on GPU."""
    max_attempts: int = 3
    """EMBED_MAX_ATTEMPTS: deliveries of one shard before it is marked failed."""
    soft_time_limit: int = 540
    """EMBED_SOFT_TIME_LIMIT: seconds before a shard task is asked to stop."""
    time_limit: int = 600
    """EMBED_TIME_LIMIT: seconds before a shard task is killed."""
    visibility_timeout: int = 1200
    """EMBED_VISIBILITY_TIMEOUT: Redis broker: seconds before an unacked task is redelivered."""
    unacked_restore_interval: float | None = None
    """EMBED_UNACKED_RESTORE_INTERVAL: kombu's restore scan interval (tests set 1)."""
    model_lru: int = 2
    """EMBED_MODEL_LRU: sessions kept per worker process (one fleet, several models)."""
    faults: str = ""
    """EMBED_FAULTS: failpoints for the fault-injection tests only (see worker/faults.py)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Build settings from ``EMBED_*`` (and ``CELERY_BROKER_URL``) variables."""
        broker = env.get("EMBED_BROKER_URL") or env.get("CELERY_BROKER_URL") or DEFAULT_BROKER_URL
        cache = env.get("EMBED_CACHE_URL")
        if cache is None:
            cache = broker if broker.startswith(("redis://", "rediss://", "unix://")) else None
        elif cache.lower() in ("", "none", "off"):
            cache = None
        kw: dict[str, object] = {"broker_url": broker, "cache_url": cache}
        names = {f.name: f for f in fields(cls)}
        env_map = {
            "cache_dtype": "EMBED_CACHE_DTYPE", "cache_ttl_s": "EMBED_CACHE_TTL",
            "precision": "EMBED_PRECISION", "device": "EMBED_DEVICE",
            "gpu_strict": "EMBED_GPU_STRICT", "gpu_device_id": "EMBED_GPU_DEVICE_ID",
            "tensorrt": "EMBED_TENSORRT", "threads": "EMBED_THREADS", "home": "EMBED_HOME",
            "cpu_queue": "EMBED_CPU_QUEUE", "gpu_queue": "EMBED_GPU_QUEUE",
            "max_batch_tokens": "EMBED_MAX_BATCH_TOKENS", "max_attempts": "EMBED_MAX_ATTEMPTS",
            "soft_time_limit": "EMBED_SOFT_TIME_LIMIT", "time_limit": "EMBED_TIME_LIMIT",
            "visibility_timeout": "EMBED_VISIBILITY_TIMEOUT",
            "unacked_restore_interval": "EMBED_UNACKED_RESTORE_INTERVAL",
            "model_lru": "EMBED_MODEL_LRU", "faults": "EMBED_FAULTS",
        }
        for attr, var in env_map.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            typ = str(names[attr].type)
            try:
                if "bool" in typ:
                    kw[attr] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif "int" in typ:
                    kw[attr] = int(raw)
                elif "float" in typ:
                    kw[attr] = float(raw)
                else:
                    kw[attr] = raw
            except ValueError:
                raise ValueError(f"{var}={raw!r}: expected {typ}") from None
        s = cls(**kw)  # type: ignore[arg-type]
        s.check()
        return s

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, naming the variable."""
        if self.precision not in ("auto", "fp32", "fp16", "int8"):
            raise ValueError(f"EMBED_PRECISION={self.precision!r}: use auto, fp32, fp16 or int8")
        if self.device not in ("queue", "cpu", "gpu", "auto"):
            raise ValueError(f"EMBED_DEVICE={self.device!r}: use queue, cpu, gpu or auto")
        if self.cache_dtype not in ("float16", "float32"):
            raise ValueError(f"EMBED_CACHE_DTYPE={self.cache_dtype!r}: use float16 or float32")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 16:
            raise ValueError("EMBED_MAX_BATCH_TOKENS must be at least 16")
        if self.max_attempts < 1:
            raise ValueError("EMBED_MAX_ATTEMPTS must be at least 1")

    def intra_op_threads(self, concurrency: int | None) -> int:
        """Threads per session so that concurrency × threads does not exceed the cores."""
        if self.threads:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // max(1, concurrency or 1))


def mask_url(url: str | None) -> str:
    """A URL with its password replaced by ``***`` (safe for logs and status output).

    >>> mask_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
