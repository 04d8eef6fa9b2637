"""The shard task: thin. Message → ShardContext → pipeline; retries are decided elsewhere.

A message is ``{"job_dir": ..., "job_id": ..., "shard": N}`` (JSON, a few hundred bytes); the
texts stay in ``input/part-NNNNN.parquet``. A message that does not name a job directory and a
shard of it is a BadMessage: the task fails without a retry. Everything after that (attempt
counting, retry or give up) is worker/attempts.py's, reached through worker/pipeline.py.

The ONNX session is created lazily once per worker process (never before the prefork) and kept
in a small LRU keyed by bundle, device and precision.
"""

from __future__ import annotations

import os
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from celery import Celery, Task

from storage.bundlecache import job_bundle_dir
from storage.cache import EmbeddingCache
from storage.jobdir import validate_job_id
from storage.jobfs import StoreError
from worker import recycle
from worker.attempts import STORE_RETRY_S, RetryShard
from worker.contract import TASK_NAME, ShardTask
from worker.errors import BadMessage
from worker.fairshare import base_of
from worker.paths import open_allowed_job
from worker.pipeline import ShardContext
from worker.pipeline import embed_shard as run_pipeline
from worker.settings import WorkerSettings


_LOAD_LOCK = threading.Lock()
"""Held while a model is looked up or loaded in this process (pool processes start unlocked:
the parent never loads a model)."""


class ModelTask(Task):
    """Base task holding the per-process model LRU and cache clients."""

    _models: OrderedDict[tuple[str, str, str], Any]
    _caches: dict[int, EmbeddingCache]

    @property
    def settings(self) -> WorkerSettings:
        return self.app.settings  # type: ignore[attr-defined, no-any-return]

    def model_for(self, bundle_path: str, device: str, precision: str) -> Any:
        """The process's session for this key: from the LRU, else loaded (the CPU probe first).
        One load at a time: a task arriving while ``worker.preload`` loads waits for it."""
        with _LOAD_LOCK:
            return self._model_for(os.path.realpath(bundle_path), device, precision)

    def _model_for(self, bundle_path: str, device: str, precision: str) -> Any:
        from worker.model.session import load_model  # onnxruntime only inside worker processes

        if not hasattr(self, "_models"):
            self._models = OrderedDict()
        key = (bundle_path, device, precision)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        s = self.settings
        threads = s.intra_op_threads(self.app.conf.worker_concurrency)
        choice, model = None, None
        if device == "cpu":  # measured once per bundle and machine, cached under EMBED_HOME
            from worker.model.probe import cpu_choice, take_kept

            choice = cpu_choice(bundle_path, precision=precision, override=s.cpu_provider,
                                threads=threads, home=worker_home(s), budget_s=s.probe_seconds)
            model = take_kept(bundle_path, choice, threads)  # the probe's last session
        model = model or load_model(
            bundle_path, device=device, precision=precision, threads=threads,
            device_id=s.gpu_device_id, tensorrt=s.tensorrt, strict=s.gpu_strict,
            cpu_provider=s.cpu_provider, choice=choice, gpu_mem_limit_mb=s.gpu_mem_limit_mb,
            pad_to=s.pad_multiple,
        )
        self._models[key] = model
        recycle.loaded(model)  # the memory limit of this process follows what it holds now
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


def read_payload(payload: Any) -> ShardTask:
    """The message as a ShardTask; BadMessage when it does not name a job directory and shard.

    >>> read_payload({"job_dir": "/out/j1", "job_id": "j1", "shard": 3})
    ShardTask(job_id='j1', job_dir='/out/j1', shard=3)
    """
    try:
        job_dir, job_id, raw_shard = payload["job_dir"], payload["job_id"], payload["shard"]
    except (KeyError, TypeError) as exc:
        raise BadMessage(f"task message {payload!r} lacks {exc}: expected job_dir, job_id and "
                         "shard") from None
    validate_job_id(str(job_id))
    if Path(str(job_dir)).name != job_id:
        raise BadMessage(f"job_dir {job_dir} does not end in job id {job_id!r}")
    if isinstance(raw_shard, bool) or not isinstance(raw_shard, (int, str)):
        raise BadMessage(f"shard {raw_shard!r} in the message for {job_dir} is not an integer")
    try:
        shard = int(raw_shard)
    except ValueError:
        raise BadMessage(f"shard {raw_shard!r} in the message for {job_dir} is not an integer"
                         ) from None
    return ShardTask(job_id=str(job_id), job_dir=str(job_dir), shard=shard)


def shard_context(task: ModelTask, message: ShardTask) -> ShardContext:
    """Open the job directory and decide queue, device, precision, attempts and batch budget."""
    job = open_allowed_job(task.settings, message.job_dir)  # only paths under EMBED_*_ROOTS
    if job.expected_chunks(message.shard) is None:
        raise BadMessage(f"shard {message.shard} is not in {job.manifest_path}")
    s = task.settings
    info = task.request.delivery_info or {}
    queue = info.get("routing_key") or info.get("queue") or s.cpu_queue
    queue = base_of(queue) or queue  # a job's own queue (fair share) runs as its base queue
    device = device_for_queue(s, queue)
    manifest = job.manifest
    precision = manifest.precision
    if precision == "auto":
        precision = s.precision
    return ShardContext(
        job=job, shard=message.shard, queue=queue,
        hostname=task.request.hostname or socket.gethostname(),
        max_attempts=int(manifest.max_attempts or s.max_attempts),
        # 0: the loaded model's budget (CPU default; on CUDA sized to the GPU's free memory).
        max_batch_tokens=int(manifest.max_batch_tokens or s.max_batch_tokens or 0),
        load_model=lambda: task.model_for(job_bundle_dir(  # a bundle URI: the checked local copy
            manifest.bundle_path, manifest.model.get("fingerprints"), worker_home(s)),
            device, precision),
        cache_for=task.cache_for, faults=s.faults, soft_time_limit=s.soft_time_limit,
        heartbeat_s=s.heartbeat_s,
    )


def worker_home(s: WorkerSettings) -> Path:
    """``EMBED_HOME`` of this worker: runtime probes, bundles copied from a bucket."""
    if s.home:
        return Path(s.home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedfleet"


def register(app: Celery) -> None:
    @app.task(name=TASK_NAME, bind=True, base=ModelTask, acks_late=True,
              reject_on_worker_lost=True, max_retries=None)
    def embed_shard_task(self: ModelTask, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            ctx = shard_context(self, read_payload(payload))
        except StoreError as exc:  # its store did not answer: try again later, as the pipeline
            if not exc.transient:
                raise
            raise self.retry(exc=exc, countdown=STORE_RETRY_S) from None
        try:
            return run_pipeline(ctx).to_dict()
        except RetryShard as r:  # the pipeline asked worker/attempts.py; Celery re-sends
            raise self.retry(exc=r.cause, countdown=r.countdown) from None
