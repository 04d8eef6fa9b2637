"""The dense output as the job stores it: ``--dim`` (Matryoshka) and ``--dtype`` (compact vectors).

The model runs at the runtime precision and pools/normalises at full dimension as always; the
cache keeps those full-dimension vectors (storage/cache.py, in its own dtype: float16 unless
EMBED_CACHE_DTYPE=float32) under keys without dim or dtype, so one cached vector serves every
dim and dtype of the same model variant. Only when the shard is written are the vectors cut to
``dim``, re-normalised and cast (storage/quantize.py).

int8/uint8 need per-dimension ranges that are the same for every shard of the job: the first
shard to reach this point calibrates on its own (truncated) vectors and claims the job's
``_state/calibration.json``; every later or concurrent shard uses the claimed ranges
(storage/calibration.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from storage import calibration
from storage.jobdir import JobDir
from storage.manifest import Manifest
from storage.quantize import (RANGED, Calibration, bytes_per_vector, calibrate,
                              calibration_sample, to_stored, truncate)


@dataclass(frozen=True)
class DenseSpec:
    """The stored dense dimension and dtype of one job."""

    dim: int
    dtype: str = "float32"
    full_dim: int = 0

    @classmethod
    def for_job(cls, manifest: Manifest, full_dim: int) -> DenseSpec:
        """From the manifest's ``dense`` (absent: float32 at the model's dimension)."""
        spec = manifest.dense or {}
        dim = int(spec.get("dim") or full_dim)
        if not 0 < dim <= full_dim:
            raise ValueError(f"manifest dense.dim {dim}: the model gives {full_dim} dims")
        return cls(dim, str(spec.get("dtype") or "float32"), full_dim)

    @property
    def bytes_per_vector(self) -> int:
        return bytes_per_vector(self.dtype, self.dim)

    def columns(self, job: JobDir, shard: int, vectors: np.ndarray, ok: np.ndarray
                ) -> dict[str, Any]:
        """Keyword arguments of storage.shards.embeddings_table: the stored ``vectors`` (all
        rows; those not ``ok`` are dropped by the table), ``dtype`` and ``dim``."""
        if self.dtype == "float32" and self.dim == self.full_dim:
            return {"vectors": vectors}
        cal = self.calibration(job, shard, vectors[ok]) if self.dtype in RANGED else None
        return {"vectors": to_stored(vectors, self.dim, self.dtype, cal), "dtype": self.dtype,
                "dim": self.dim}

    def calibration(self, job: JobDir, shard: int, kept: np.ndarray) -> Calibration:
        """The job's ranges: already claimed, or calibrated here on this shard's vectors."""
        got = calibration.read(job.root)
        if got is not None:
            return Calibration.from_dict(got)
        if len(kept) < 2:
            raise ValueError(f"shard {shard}: {self.dtype} needs at least 2 vectors to "
                             "calibrate its ranges and no shard of the job has calibrated yet; "
                             "the shard is retried (a job of one chunk: use --dtype float16)")
        mine = calibrate(calibration_sample(truncate(kept, self.dim)), shard)
        return calibration.claim(job.root, mine)
