"""The typed job manifest (``manifest.json``): what every stage reads about a job.

One dataclass instead of a dict read in six modules. The JSON stays what it was (same keys, same
values); fields were only added (``splits``, ``staging``). Keys this version does not know are
kept in ``extra`` and written back, so an older producer never drops a newer one's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

FORMAT = 1
RUN_MADE_BY = "producer run"
"""``made_by`` of a job made by ``producer run`` (``producer submit`` otherwise)."""


@dataclass(frozen=True)
class ShardEntry:
    """One staged input shard: its number, chunks and real tokens."""

    shard: int
    chunks: int
    tokens: int

    def to_dict(self) -> dict[str, int]:
        return {"shard": self.shard, "chunks": self.chunks, "tokens": self.tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ShardEntry:
        return cls(int(d["shard"]), int(d["chunks"]), int(d["tokens"]))


@dataclass
class Manifest:
    """``manifest.json``. ``staged`` turns True once every split is staged; only then may the
    job be finalised. ``shards`` is complete once ``staged``; while staging, the ledger
    (``storage.ledger``) is the truth and ``JobDir.shard_entries`` merges it in."""

    job_id: str = ""
    format: int = FORMAT
    created_at: float = 0.0
    created_by: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"
    queue: str = "cpu"
    broker_hint: str | None = None
    chunking: dict[str, Any] = field(default_factory=dict)
    max_batch_tokens: int | None = None
    max_attempts: int | None = None
    outputs: list[str] | None = None
    """What the job embeds (``--outputs``; None: dense only, as before the key existed)."""
    colbert_dim: int | None = None
    made_by: str | None = None
    """``producer run`` jobs (``RUN_MADE_BY``) are refused by ``producer resume`` (their
    broker is gone)."""

    staged: bool = False
    status: str = "staging"
    shards: list[ShardEntry] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)
    submitted_at: float | None = None
    result: dict[str, Any] | None = None
    failed_shards: list[dict[str, Any]] | None = None
    splits: list[dict[str, Any]] | None = None
    """The split plan (index, start, end, first line): fixed at submit, reused by resume."""
    staging: dict[str, Any] | None = None
    """How staging runs: procs, where (producer or fleet), split size."""
    dense: dict[str, Any] | None = None
    """``--dim``/``--dtype`` of the dense output: ``dim`` (None: the model's), ``full_dim``,
    ``dtype``, ``dim_allowed`` (``matryoshka``: the bundle declares it; ``forced``:
    ``--force-dim``). None: float32 at full dimension (jobs from before the key existed)."""
    calibration: dict[str, Any] | None = None
    """int8/uint8 jobs: per-dimension ``min``/``max``, ``sample_size`` and the ``shard`` they
    were calibrated on (storage/calibration.py; copied here when the job is finalised)."""
    id_policy: str | None = None
    """``--on-duplicate-id``: which record of a repeated id is kept (None: reject, the first)."""
    delta: dict[str, Any] | None = None
    """``--since``: the base job (``since``, ``since_job``), whether its rows are carried
    (``carry``; False with ``--full-reembed``), and once staged the counts (added, changed,
    deleted, unchanged, carried_rows)."""
    priority: str | None = None
    """``--priority`` (low, normal, high) its shard tasks are sent with (None: normal)."""
    cancelled_at: float | None = None
    """Set by ``producer cancel`` (``_state/cancel.json``, storage/cancel.py, is the truth)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dense_dim(self) -> int:
        """The stored dense dimension (``--dim``, else the model's)."""
        return int((self.dense or {}).get("dim") or self.model.get("dim") or 0)

    @property
    def dense_dtype(self) -> str:
        return str((self.dense or {}).get("dtype") or "float32")

    @property
    def bundle_path(self) -> str:
        return str(self.model["bundle_path"])

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")

    def continue_command(self, root: object) -> str:
        """The command that continues this job (at ``root``) once its staging stopped.

        >>> Manifest(made_by=RUN_MADE_BY).continue_command("out/j")
        'producer run --resume out/j'
        """
        if self.made_by == RUN_MADE_BY:
            return f"producer run --resume {root}"
        return f"producer resume {root}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["shards"] = [ShardEntry.from_dict(s) for s in d.get("shards") or []]
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if v is None and f.name in _OMIT_IF_NONE:
                continue
            out[f.name] = [s.to_dict() for s in v] if f.name == "shards" else v
        return out


# Keys older manifests did not have until a later step: absent rather than null.
_OMIT_IF_NONE = {"submitted_at", "result", "failed_shards", "splits", "staging", "outputs",
                 "colbert_dim", "made_by", "dense", "calibration", "id_policy", "delta",
                 "priority", "cancelled_at"}
