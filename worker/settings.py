"""Worker configuration, read once from an environment mapping and passed down.

Nothing reads ``os.environ`` at import time: ``WorkerSettings.from_env(os.environ)`` is called
once when the Celery app is built (``worker.celery_app.default_app``); tests hand in a dict.
Each field names its environment variable once (``field metadata``) and is parsed by its type;
the README's configuration table is ``settings_table()`` (checked by
tests/unit/worker/test_settings.py).
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from storage.urls import DEFAULT_BROKER_URL, env_broker, mask_url

__all__ = ["DEFAULT_BROKER_URL", "WorkerSettings", "env_broker", "env_name", "mask_url",
           "settings_table"]
_OFF = ("", "none", "off")


def _env(default: Any, var: str, meaning: str, *, shown: str | None = None,
         aliases: tuple[str, ...] = ()) -> Any:
    """A settings field read from ``var`` (then ``aliases``); ``shown`` is the README default."""
    return field(default=default, metadata={"env": (var, *aliases), "meaning": meaning,
                                            "shown": shown})


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every knob of a worker; the README's configuration table is generated from it."""

    broker_url: str = _env(DEFAULT_BROKER_URL, "EMBED_BROKER_URL",
                           "broker (redis://, rediss://, amqp://); passwords are masked in "
                           "every log and status line", aliases=("CELERY_BROKER_URL",))
    cache_url: str | None = _env(None, "EMBED_CACHE_URL", "embedding cache; `none` disables it",
                                 shown="the broker's Redis")
    cache_dtype: str = _env("float16", "EMBED_CACHE_DTYPE",
                            "cached vector type (`float32` for bit-exact re-reads)")
    cache_ttl_s: int = _env(7 * 24 * 3600, "EMBED_CACHE_TTL",
                            "seconds; `0` = no TTL (bound the cache with `maxmemory` instead)",
                            shown="`604800` (7 days)")
    precision: str = _env("auto", "EMBED_PRECISION",
                          "`auto`: fp16 on gpu; on cpu the fastest that passes its gate (see "
                          "`EMBED_CPU_PROVIDER`); or `fp32`, `fp16`, `int8`, `bf16` (the fp32 "
                          "graph on the OpenVINO EP; needs amx_bf16 or avx512_bf16)")
    cpu_provider: str = _env("auto", "EMBED_CPU_PROVIDER",
                             "`auto`: measured once per bundle and machine (CPU-EP int8/fp32, "
                             "OpenVINO fp32/bf16; int8 only when 1.15x faster than the best of the "
                             "others); or `cpu` (ONNX Runtime's CPU EP), `openvino`")
    probe_seconds: float = _env(4.0, "EMBED_PROBE_SECONDS", "seconds the CPU runtime probe "
                                "may take, loading its candidates included (its sample is sized "
                                "to fit); figures are kept per graph and machine")
    device: str = _env("queue", "EMBED_DEVICE", "the task's queue decides (`gpu` queue → CUDA); "
                       "or force `cpu`/`gpu`/`auto`")
    gpu_strict: bool = _env(False, "EMBED_GPU_STRICT",
                            "`1`: fail instead of falling back to CPU when CUDA is missing")
    gpu_device_id: int = _env(0, "EMBED_GPU_DEVICE_ID", "CUDA device ordinal")
    gpu_mem_limit_mb: int | None = _env(None, "EMBED_GPU_MEM_LIMIT_MB", "the CUDA EP's "
                                        "`gpu_mem_limit`; the GPU batch budget is sized to the "
                                        "memory free after loading, within it", shown="none")
    tensorrt: bool = _env(False, "EMBED_TENSORRT",
                          "`1`: TensorRT before CUDA (fp16, LayerNorm in fp32, engine cache)")
    threads: int | None = _env(None, "EMBED_THREADS",
                               "ONNX Runtime intra-op threads per worker process",
                               shown="cores / concurrency")
    home: str | None = _env(None, "EMBED_HOME", "default model bundles, the local cache of "
                            "`producer run`, worker logs", shown="`~/.cache/embedfleet`")
    cpu_queue: str = _env("cpu", "EMBED_CPU_QUEUE", "name of the CPU queue")
    gpu_queue: str = _env("gpu", "EMBED_GPU_QUEUE", "name of the GPU queue")
    max_batch_tokens: int | None = _env(None, "EMBED_MAX_BATCH_TOKENS",
                                        "padded tokens per inference batch (rows × longest)",
                                        shown="`4096` cpu / gpu: sized to its free memory")
    pad_multiple: int = _env(0, "EMBED_PAD_MULTIPLE", "batches run padded to a length that is a "
                             "multiple of this (masked out, never past the window); `0`: 16 for "
                             "OpenVINO bf16 on a CPU with AMX (15% faster there), else 1",
                             shown="`0` (auto)")
    max_attempts: int = _env(3, "EMBED_MAX_ATTEMPTS", "deliveries of one shard before it is "
                             "marked failed (the job's `--max-attempts` wins)")
    soft_time_limit: int = _env(540, "EMBED_SOFT_TIME_LIMIT",
                                "seconds before a shard task is asked to stop")
    time_limit: int = _env(600, "EMBED_TIME_LIMIT", "seconds before a shard task is killed")
    visibility_timeout: int = _env(1200, "EMBED_VISIBILITY_TIMEOUT",
                                   "Redis broker: seconds before an unacked task is redelivered "
                                   "(keep it above the time limit)")
    unacked_restore_interval: float | None = _env(None, "EMBED_UNACKED_RESTORE_INTERVAL",
                                                  "kombu's restore scan interval (tests set 1)",
                                                  shown="kombu's")
    recycle_headroom_mb: int | None = _env(
        None, "EMBED_RECYCLE_HEADROOM_MB", "a pool process is replaced after a task when its RSS "
        "passes its RSS after loading the model + this many MB; `0`: never",
        shown="the model's working set (graph files + its largest batch's activations), at "
        "least 2048")
    heartbeat_s: float = _env(5.0, "EMBED_HEARTBEAT_S", "seconds between a running shard's "
                              "heartbeats (`_state/alive/`): the producer re-sends only shards "
                              "no live worker holds")
    preload: str | None = _env(None, "EMBED_PRELOAD", "`DEVICE:PRECISION:BUNDLE` (e.g. "
                               "`cpu:auto:/models/minilm`): each pool process loads this model "
                               "(the probe and compile included) as it starts, in a thread, "
                               "instead of at its first task; `producer run` sets it so that "
                               "the load overlaps staging", shown="none")
    model_lru: int = _env(2, "EMBED_MODEL_LRU",
                          "sessions kept per worker process (one fleet, several models)")
    events: bool = _env(False, "EMBED_EVENTS", "`1`: task events and worker heartbeats, for "
                        "Flower; off, a fleet worker sends no events (no gossip or mingle "
                        "either: [docs/fleet.md](docs/fleet.md#large-fleets))")
    fair_share: bool = _env(True, "EMBED_FAIR_SHARE", "Redis broker: each job's tasks go to its "
                            "own queue, which workers take from in turn (README, Running a "
                            "shared fleet); `0`: the plain FIFO queue (fleets with workers "
                            "older than fair share)")
    fast_tokenizer: bool = _env(True, "EMBED_FAST_TOKENIZER", "staging encodes with nanotoken "
                                "where it gives exactly the tokenizer's ids (WordPiece, checked "
                                "at load), and takes long documents' token offsets from those "
                                "ids where each piece checks out against the text "
                                "([worker/staging/faststarts.py](worker/staging/faststarts.py)); "
                                "`0`: tokenizers only")
    job_roots: tuple[str, ...] = _env((), "EMBED_JOB_ROOTS", "`:`-separated directories or bucket "
                                      "prefixes (`s3://bucket/jobs/`) a task's job directory "
                                      "must be under (required in a shared fleet; `producer "
                                      "run` sets it)", shown="any")
    model_roots: tuple[str, ...] = _env((), "EMBED_MODEL_ROOTS", "`:`-separated directories a "
                                        "job's model bundle must be under (required in a "
                                        "shared fleet)", shown="any")
    input_roots: tuple[str, ...] = _env((), "EMBED_INPUT_ROOTS", "`:`-separated directories the "
                                        "corpus a stage task (`--stage-on fleet`) reads must be "
                                        "under", shown="`EMBED_JOB_ROOTS`")
    log_level: str = _env("INFO", "EMBED_LOG_LEVEL", "worker log level")
    health_file: str | None = _env(None, "EMBED_HEALTH_FILE", "state file for `python -m "
                                   "worker.health` (`%n` = node name)",
                                   shown="`$TMPDIR/embedfleet-health/<node>.json`")
    faults: str = _env("", "EMBED_FAULTS", "failpoints for the fault-injection tests only "
                       "([worker/faults.py](worker/faults.py))", shown="empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Build settings from the fields' variables; the cache defaults to the broker's Redis.

        >>> WorkerSettings.from_env({"EMBED_MAX_ATTEMPTS": "5", "EMBED_CACHE_URL": "none"})
        ... # doctest: +ELLIPSIS
        WorkerSettings(broker_url='redis://127.0.0.1:6379/0', cache_url=None, ...max_attempts=5...)
        """
        kw: dict[str, Any] = {}
        for f in fields(cls):
            var, raw = _lookup(f, env)
            if raw is None:
                continue
            parse = _parser(_field_types()[f.name])
            try:
                kw[f.name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from None
        if "cache_url" not in kw and env.get(env_name("cache_url")) != "":  # "" turns it off
            broker = kw.get("broker_url", DEFAULT_BROKER_URL)
            if broker.startswith(("redis://", "rediss://", "unix://")):
                kw["cache_url"] = broker
        s = cls(**kw)
        s.check()
        return s

    def check(self) -> None:
        """Raise ValueError on settings that cannot work, naming the variable."""
        choices = {"precision": ("auto", "fp32", "fp16", "int8", "bf16"),
                   "cpu_provider": ("auto", "cpu", "openvino"),
                   "device": ("queue", "cpu", "gpu", "auto"),
                   "cache_dtype": ("float16", "float32")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{env_name(name)}={getattr(self, name)!r}: use "
                                 f"{', '.join(allowed)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 16:
            raise ValueError(f"{env_name('max_batch_tokens')} must be at least 16")
        if not 0 <= self.pad_multiple <= 256:
            raise ValueError(f"{env_name('pad_multiple')} must be 0 (auto) to 256")
        if self.recycle_headroom_mb is not None and self.recycle_headroom_mb < 0:
            raise ValueError(f"{env_name('recycle_headroom_mb')} must be 0 (never) or more")
        if not self.probe_seconds > 0:
            raise ValueError(f"{env_name('probe_seconds')} must be more than 0 seconds")
        if not self.heartbeat_s > 0:
            raise ValueError(f"{env_name('heartbeat_s')} must be more than 0 seconds")
        if self.max_attempts < 1:
            raise ValueError(f"{env_name('max_attempts')} must be at least 1")
        for name in ("cpu_queue", "gpu_queue"):
            if ".job." in getattr(self, name):  # the mark of a job's own queue (fair share)
                raise ValueError(f"{env_name(name)}={getattr(self, name)!r}: a queue name may "
                                 "not contain '.job.' (it names a job's own queue)")
        if self.preload:
            from worker.preload import parse_preload

            try:
                parse_preload(self.preload)
            except ValueError as exc:
                raise ValueError(f"{env_name('preload')}={self.preload!r}: {exc}") from None

    @property
    def corpus_roots(self) -> tuple[str, ...]:
        """Where a stage task may read a corpus: ``EMBED_INPUT_ROOTS``, else the job roots."""
        return self.input_roots or self.job_roots

    def intra_op_threads(self, concurrency: int | None) -> int:
        """Threads per session so that concurrency × threads does not exceed the cores."""
        if self.threads:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // max(1, concurrency or 1))


def env_name(name: str) -> str:
    """The environment variable of settings field ``name``.

    >>> env_name("cache_ttl_s")
    'EMBED_CACHE_TTL'
    """
    return _fields()[name].metadata["env"][0]


def settings_table() -> str:
    """The README's configuration table (markdown), one row per field."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(WorkerSettings):
        names = " / ".join(f"`{v}`" for v in f.metadata["env"])
        shown = f.metadata["shown"] or f"`{_show(f.default)}`"
        rows.append(f"| {names} | {shown} | {f.metadata['meaning']} |")
    return "\n".join(rows)


# -- parsing by type ---------------------------------------------------------------------------
def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _parse_optional_str(raw: str) -> str | None:
    return None if raw.strip().lower() in _OFF else raw


_PARSERS: dict[Any, Callable[[str], Any]] = {bool: _parse_bool, int: int, float: float, str: str}


def _parse_paths(raw: str) -> tuple[str, ...]:
    """``:``-separated, where the ``:`` of a URI scheme (``s3://``) does not separate.

    >>> _parse_paths("/data/out:s3://bucket/jobs/:/srv")
    ('/data/out', 's3://bucket/jobs/', '/srv')
    """
    return tuple(p for p in re.split(rf"{re.escape(os.pathsep)}(?!//)", raw) if p.strip())


def _parser(typ: Any) -> Callable[[str], Any]:
    """The parser for a field type; ``X | None`` parses as X ("" / none / off mean None)."""
    if get_origin(typ) is tuple:
        return _parse_paths
    if get_origin(typ) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(typ) if a is not type(None)]
        if inner is str:
            return _parse_optional_str
        return _PARSERS[inner]
    return _PARSERS[typ]


def _lookup(f: Field[Any], env: Mapping[str, str]) -> tuple[str, str | None]:
    """(variable, raw value) of the first of the field's variables that is set and non-empty."""
    for var in f.metadata["env"]:
        raw = env.get(var)
        if raw:
            return var, raw
    return f.metadata["env"][0], None


def _show(default: Any) -> str:
    return str(int(default)) if isinstance(default, bool) else str(default)


@cache
def _fields() -> dict[str, Field[Any]]:
    return {f.name: f for f in fields(WorkerSettings)}


@cache
def _field_types() -> dict[str, Any]:
    return get_type_hints(WorkerSettings)
