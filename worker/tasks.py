"""The shard task: thin. Decode the message, pick the model for this queue, call the pipeline.

A message is ``{"job_dir": ..., "job_id": ..., "shard": N}`` (JSON, a few hundred bytes); the
texts stay in ``input/part-NNNNN.parquet``. The ONNX session is created lazily once per worker
process (never before the prefork) and kept in a small LRU keyed by bundle, device and precision.
"""

from __future__ import annotations

import logging
import socket
from collections import OrderedDict
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from storage.cache import EmbeddingCache
from storage.jobdir import JobDir, validate_job_id
from worker.contract import TASK_NAME
from worker.model.batching import batch_budget
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ModelTask(Task):
    """Base task holding the per-process model LRU and cache clients."""

    _models: OrderedDict[tuple[str, str, str], Any]
    _caches: dict[int, EmbeddingCache]

    @property
    def settings(self) -> WorkerSettings:
        return self.app.settings  # type: ignore[attr-defined, no-any-return]

    def model_for(self, bundle_path: str, device: str, precision: str) -> Any:
        from worker.model.session import load_model  # onnxruntime only inside worker processes

        if not hasattr(self, "_models"):
            self._models = OrderedDict()
        key = (bundle_path, device, precision)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        s = self.settings
        model = load_model(
            bundle_path, device=device, precision=precision,
            threads=s.intra_op_threads(self.app.conf.worker_concurrency),
            device_id=s.gpu_device_id, tensorrt=s.tensorrt, strict=s.gpu_strict,
        )
        self._models[key] = model
        while len(self._models) > max(1, s.model_lru):
            self._models.popitem(last=False)
        return model

    def cache_for(self, dim: int) -> EmbeddingCache:
        if not hasattr(self, "_caches"):
            self._caches = {}
        if dim not in self._caches:
            s = self.settings
            self._caches[dim] = EmbeddingCache.from_url(
                s.cache_url, dim, dtype=s.cache_dtype, ttl_s=s.cache_ttl_s)
        return self._caches[dim]


def device_for_queue(settings: WorkerSettings, queue: str | None) -> str:
    """The queue decides the device unless EMBED_DEVICE overrides it."""
    if settings.device != "queue":
        return settings.device
    return "gpu" if queue == settings.gpu_queue else "cpu"


def register(app: Celery) -> None:
    @app.task(name=TASK_NAME, bind=True, base=ModelTask, acks_late=True,
              reject_on_worker_lost=True, max_retries=None)
    def embed_shard(self: ModelTask, payload: dict[str, Any]) -> dict[str, Any]:
        from worker.pipeline import ShardContext, embed_shard as run_pipeline

        job_dir = Path(str(payload["job_dir"]))
        validate_job_id(str(payload["job_id"]))
        if job_dir.name != payload["job_id"]:
            raise ValueError(f"job_dir {job_dir} does not end in job id {payload['job_id']!r}")
        shard = int(payload["shard"])
        job = JobDir.open(job_dir)
        info = self.request.delivery_info or {}
        queue = info.get("routing_key") or info.get("queue") or self.settings.cpu_queue
        device = device_for_queue(self.settings, queue)
        manifest = job.manifest
        precision = manifest.get("precision", "auto")
        if precision == "auto":
            precision = self.settings.precision
        ctx = ShardContext(
            job=job, shard=shard, queue=queue,
            hostname=self.request.hostname or socket.gethostname(),
            max_attempts=int(manifest.get("max_attempts") or self.settings.max_attempts),
            max_batch_tokens=int(manifest.get("max_batch_tokens")
                                 or batch_budget(device, self.settings.max_batch_tokens)),
            load_model=lambda: self.model_for(manifest["model"]["bundle_path"], device, precision),
            cache_for=self.cache_for,
            faults=self.settings.faults,
        )
        try:
            return run_pipeline(ctx).to_dict()
        except SoftTimeLimitExceeded:
            attempts = len(job.attempts(shard))
            if attempts >= ctx.max_attempts:  # say why, rather than a bare "gave up" next time
                reason = (f"soft time limit ({self.settings.soft_time_limit}s, "
                          f"EMBED_SOFT_TIME_LIMIT) exceeded on attempt {attempts} of "
                          f"{ctx.max_attempts}: the shard is too slow for the limit")
                job.mark_failed(shard, reason, attempts=attempts)
                job.finalize()
                log.error("shard %s of %s failed: %s", shard, job.root, reason)
                return {"shard": shard, "status": "failed", "error": reason}
            log.warning("shard %s of %s hit the soft time limit; requeueing", shard, job.root)
            raise self.retry(countdown=1) from None
        except Exception as exc:
            attempts = len(job.attempts(shard))
            if attempts >= ctx.max_attempts:
                job.mark_failed(shard, f"{type(exc).__name__}: {exc}", attempts=attempts)
                job.finalize()
                log.error("shard %s of %s failed after %d attempts: %s", shard, job.root,
                          attempts, exc)
                return {"shard": shard, "status": "failed", "error": str(exc)}
            raise self.retry(exc=exc, countdown=min(2 ** attempts, 30)) from exc
