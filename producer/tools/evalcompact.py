"""``producer eval --dim ... --dtype ...``: what each compact form of the vectors costs.

The model runs once per variant × provider; every ``--dim`` × ``--dtype`` combination is then
made from those float32 vectors exactly as a job stores them (storage/quantize.py: keep the
first ``dim`` dimensions, re-normalise, cast) and scored with the same metrics:

- float32, float16: cosine of the stored values;
- int8, uint8: ranges calibrated on every embedded eval text (at most 10,000, as a job's
  first shard), queries quantized with them; cosine of the bucket centres
  (``start + (q + 0.5) * step``), so int8 and uint8 score alike (same buckets);
- binary, ubinary: cosine of the +-1 sign vectors, i.e. ranking by Hamming distance;
- ``binary+rescore`` (retrieval): the ``RESCORE x 10`` best chunks by Hamming distance,
  re-ranked by float32 cosine at the same dim (the usual recipe: bits in the index, float32
  vectors on disk for the candidates).

Each row carries the bytes of one stored vector and the variant's tokens/s (casting costs
nothing next to the model).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from producer.errors import UsageError
from producer.tools import evalmetrics as em
from storage.quantize import (BITS, DTYPES, RANGED, bytes_per_vector, calibrate,
                              calibration_sample, quantize, truncate)

RESCORE = 4
"""Candidates retrieved by Hamming distance per result wanted (sentence-transformers'
``rescore_multiplier`` default)."""


def combinations(dims: Sequence[int], dtypes: Sequence[str], full_dim: int
                 ) -> list[tuple[int, str]]:
    """Every ``(dim, dtype)`` asked for, float32 at full dimension (the reference) left out.

    Raises:
        UsageError: a dim outside 1..full_dim or an unknown dtype (a ValueError).
    """
    for d in dims:
        if not 0 < d <= full_dim:
            raise UsageError(f"--dim {d}: must be between 1 and the model's {full_dim}")
    bad = [t for t in dtypes if t not in DTYPES]
    if bad:
        raise UsageError(f"--dtype {','.join(bad)}: unknown; valid: {', '.join(DTYPES)}")
    pairs = itertools.product(list(dict.fromkeys(dims or [full_dim])),
                              list(dict.fromkeys(dtypes or ["float32"])))
    return [(d, t) for d, t in pairs if (d, t) != (full_dim, "float32")]


def scoring_vectors(vecs: np.ndarray, dim: int, dtype: str) -> np.ndarray:
    """The vectors a ``dim``/``dtype`` job stores, as float64 vectors whose cosine is its
    similarity (see the module docstring)."""
    v = truncate(vecs, dim)
    if dtype in RANGED:
        cal = calibrate(calibration_sample(v))
        q = quantize(v, dtype, cal.ranges).astype(np.float64) + (128 if dtype == "int8" else 0)
        starts, ends = cal.ranges.astype(np.float64)
        steps = np.where(ends == starts, 1.0, (ends - starts) / 255)
        return starts + (q + 0.5) * steps
    if dtype in BITS:
        bits = np.unpackbits(np.packbits(v > 0, axis=-1), axis=-1, count=dim)
        return bits.astype(np.float64) * 2 - 1
    return quantize(v, dtype).astype(np.float64)


def compact_rows(row: Any, vecs: np.ndarray, combos: Sequence[tuple[int, str]],
                 score: Any, rescore: Any | None) -> list[Any]:
    """One row per combination (and per binary retrieval combination a rescored one),
    with ``score(vectors) -> metrics`` and ``rescore(coarse, fine) -> metrics``."""
    out = []
    for dim, dtype in combos:
        coarse = scoring_vectors(vecs, dim, dtype)
        r = replace(row, dim=dim, dtype=dtype, bytes_per_vector=bytes_per_vector(dtype, dim),
                    metrics=score(coarse), delta={})
        out.append(r)
        if dtype in BITS and rescore is not None:
            fine = truncate(vecs, dim).astype(np.float64)
            out.append(replace(r, dtype=f"{dtype}+rescore", metrics=rescore(coarse, fine)))
    return out


def rescorer(inputs: Any, candidates: int) -> Any:
    """``rescore(coarse, fine)`` for retrieval inputs (evaluate.EvalInputs)."""
    q, c = inputs.roles["query"], inputs.roles["chunk"]

    def rescore(coarse: np.ndarray, fine: np.ndarray) -> dict[str, float]:
        return em.rescored_retrieval(coarse[q], coarse[c], fine[q], fine[c], candidates,
                                     inputs.chunk_doc, inputs.doc_ids, inputs.relevant)

    return rescore
