"""A job's options, resolved against its bundle once: what ``submit``, the dry run and resume use.

``JobOptions`` holds the options of ``producer submit``/``run`` (their defaults live here, once);
``job_spec`` checks them against the bundle (prefix, outputs, window, overlap) before anything
is staged and returns a frozen ``JobSpec``: the staging settings every staging process gets,
the manifest's ``chunking`` record, and the runtime the worker will choose (the dry run keys
the cache with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from producer.errors import UsageError
from producer.models import resolve_model
from producer.outputs import parse_dense, parse_outputs
from producer.since import since_record, since_root
from storage.bundle import Bundle
from storage.bundlecache import open_bundle
from storage.docindex import POLICIES
from worker.contract import Device
from worker.model.policy import Choice, planned_runtime
from worker.staging.chunking import chunk_budget
from worker.staging.corpus import DEFAULT_MAX_LINE_BYTES
from worker.staging.shards import DEFAULT_SHARD_MAX_CHUNKS, DEFAULT_SHARD_TOKENS, StageConfig

CHUNKING_KEYS = ("max_tokens", "overlap", "prefix", "text_field", "id_field", "max_line_bytes",
                 "shard_tokens", "shard_max_chunks")
"""The staging settings a manifest records as ``chunking``: the ``StageConfig`` but its bundle
path (the manifest's ``model.bundle_path``), stored once."""


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """The options of a job as ``submit`` takes them (CLI flags of the same names)."""

    model: str | None = None
    precision: str = "auto"
    queue: str = "cpu"
    text_field: str = "text"
    id_field: str = "id"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_tokens: int | None = None
    overlap: int = 0
    prefix: str = "passage"
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    shard_max_chunks: int = DEFAULT_SHARD_MAX_CHUNKS
    max_batch_tokens: int | None = None
    max_attempts: int = 3
    outputs: str | Sequence[str] = "dense"
    dim: int | None = None
    dtype: str = "float32"
    force_dim: bool = False
    stage_procs: int | None = None
    split_bytes: int | None = None
    """Input bytes per split; None: ``auto_split_bytes`` of the corpus size."""
    on_duplicate_id: str = "reject"
    since: str | None = None
    full_reembed: bool = False
    priority: str = "normal"

    @classmethod
    def pick(cls, options: dict[str, Any]) -> tuple[JobOptions, dict[str, Any]]:
        """Split a keyword dict into the job options and the rest."""
        names = {f.name for f in fields(cls)}
        return (cls(**{k: v for k, v in options.items() if k in names}),
                {k: v for k, v in options.items() if k not in names})


@dataclass(frozen=True)
class JobSpec:
    """What a job's options decide, checked against its bundle (frozen: built once)."""

    options: JobOptions
    bundle: Bundle
    outputs: tuple[str, ...]
    stage: StageConfig
    budget: int
    """Content tokens per chunk: the window minus special and prefix tokens."""
    dense: dict[str, Any] | None = None
    """The manifest's ``dense`` (``--dim``/``--dtype``; None: float32 at the model's dim)."""
    delta: dict[str, Any] | None = None
    """``--since``: the manifest's ``delta`` record (``producer/since.py``)."""

    @property
    def window(self) -> int:
        return self.stage.max_tokens

    @property
    def device(self) -> Device:
        return Device.GPU if self.options.queue == "gpu" else Device.CPU

    def chunking(self) -> dict[str, Any]:
        """The manifest's ``chunking`` record (what resume compares)."""
        return chunking_of(self.stage)

    def runtime(self, home: Path) -> Choice:
        """The provider and precision a worker on this job's queue will run (its policy)."""
        return planned_runtime(self.bundle, self.device, home, self.options.precision)


def job_spec(options: JobOptions, home: Path) -> JobSpec:
    """Resolve ``options`` against their bundle; nothing is written.

    Raises:
        UsageError: a bad ``--prefix``, ``--outputs``, ``--max-tokens``, ``--overlap``,
            ``--dim`` or ``--dtype``.
        BundleError: the bundle is missing a file.
    """
    bundle = open_bundle(resolve_model(options.model, home), home)  # a URI: a local copy
    outputs = parse_outputs(options.outputs, bundle.config, str(bundle.path))
    dense = parse_dense(options.dim, options.dtype, options.force_dim, bundle.config,
                        str(bundle.path))
    stage = stage_config(bundle, options)
    tokenizer = bundle.load_tokenizer(truncate=False)
    budget = chunk_budget(tokenizer, bundle.config.max_length, options.max_tokens, stage.prefix)
    if not 0 <= options.overlap <= budget // 2:
        raise UsageError(f"--overlap {options.overlap}: must be between 0 and {budget // 2} "
                         f"(half of the {budget} content tokens per chunk)")
    if options.on_duplicate_id not in POLICIES:
        raise UsageError(f"--on-duplicate-id {options.on_duplicate_id!r}: use reject or last")
    delta = None
    if options.since:
        fingerprints = {p: bundle.fingerprint(p) for p in bundle.variants}
        delta = since_record(options.since, options.full_reembed, chunking_of(stage),
                             fingerprints, list(outputs))
        stage = replace(stage, since=since_root(delta))
    elif options.full_reembed:
        raise UsageError("--full-reembed needs --since OUT/JOB")
    return JobSpec(options, bundle, outputs, stage, budget, dense, delta)


def stage_config(bundle: Bundle, options: JobOptions) -> StageConfig:
    """The staging settings of ``options`` for ``bundle`` (window capped at the model's)."""
    cfg = bundle.config
    return StageConfig(
        bundle_path=str(bundle.path),
        max_tokens=min(cfg.max_length, options.max_tokens or cfg.max_length),
        overlap=options.overlap,
        prefix=prefix_text(options.prefix, cfg.passage_prefix, cfg.query_prefix),
        text_field=options.text_field, id_field=options.id_field,
        max_line_bytes=options.max_line_bytes, shard_tokens=options.shard_tokens,
        shard_max_chunks=options.shard_max_chunks)


def chunking_of(stage: StageConfig) -> dict[str, Any]:
    """The ``chunking`` record of staging settings.

    >>> chunking_of(StageConfig(bundle_path="b", max_tokens=256, shard_tokens=64,
    ...                         shard_max_chunks=8))["max_tokens"]
    256
    """
    return {k: v for k, v in asdict(stage).items() if k in CHUNKING_KEYS}


def prefix_text(choice: str, passage_prefix: str, query_prefix: str) -> str:
    """The text ``--prefix`` puts before every chunk (the bundle's prompts; ``none``: nothing).

    >>> prefix_text("query", "passage: ", "query: ")
    'query: '
    """
    found = {"passage": passage_prefix, "query": query_prefix, "none": ""}.get(choice)
    if found is None:
        raise UsageError(f"--prefix {choice!r}: use passage, query or none")
    return found
