"""worker/dense.py through worker/pipeline.py: ``--dim``/``--dtype`` jobs with a FakeModel and a
real job directory. Stored values equal sentence-transformers' ``quantize_embeddings`` on the
truncated vectors, every shard uses the ranges of the first shard written, and the cache keeps
full-dim vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from storage.readers import quantize_queries, read_matrix
from storage.quantize import truncate
from tests.checker import check_job
from tests.fakes import DictCache, FakeModel, context, staged_job, text
from worker.pipeline import embed_shard

SHARDS = [[text(i, extra=1 + i % 5) for i in range(12)],
          [text(100 + i, extra=2 + i % 3) for i in range(9)]]
FULL = 16


def dense_job(tmp_path: Path, dim: int, dtype: str):  # type: ignore[no-untyped-def]
    job = staged_job(tmp_path / "out", SHARDS)
    m = job.manifest
    m.dense = {"dim": dim, "dtype": dtype, "full_dim": FULL, "dim_allowed": "matryoshka"}
    job.write_manifest(m)
    return job


def run_all(job, order, cache: DictCache) -> FakeModel:  # type: ignore[no-untyped-def]
    model = FakeModel(dim=FULL)
    for shard in order:
        assert embed_shard(context(job, model, shard=shard, cache=cache)).status == "done"
    return model


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_every_shard_uses_the_first_written_shards_ranges(tmp_path: Path, dtype: str) -> None:
    job = dense_job(tmp_path, 6, dtype)
    cache = DictCache()
    model = run_all(job, [1, 0], cache)  # shard 1 is written first: it calibrates
    full = [model.expected(t) for t in SHARDS]
    want = quantize_embeddings(truncate(np.concatenate(full), 6), dtype,
                               calibration_embeddings=truncate(full[1], 6))
    ids, got = read_matrix(job.root)
    order = np.argsort([int(d[3:]) for d, _ in ids])  # doc1..doc21 in shard order
    assert got.dtype == want.dtype and got.shape == (21, 6)
    np.testing.assert_array_equal(got[order], want)
    cal = job.reload().calibration
    assert (cal["shard"], cal["sample_size"]) == (1, 9)
    # queries: the same truncation and ranges
    np.testing.assert_array_equal(quantize_queries(job.root, full[0]), want[:12])
    # the cache keeps vectors at the model's full dimension
    assert {v.shape for v in cache.data.values()} == {(FULL,)}
    assert check_job(job.root).ok == 21


@pytest.mark.parametrize("dtype", ["binary", "ubinary", "float16"])
def test_bits_and_halves(tmp_path: Path, dtype: str) -> None:
    job = dense_job(tmp_path, 12, dtype)
    model = run_all(job, [0, 1], DictCache())
    ids, got = read_matrix(job.root)
    order = np.argsort([int(d[3:]) for d, _ in ids])
    full = np.concatenate([model.expected(t) for t in SHARDS])
    if dtype == "float16":
        np.testing.assert_array_equal(got[order], truncate(full, 12).astype(np.float16))
    else:
        np.testing.assert_array_equal(got[order],
                                      quantize_embeddings(truncate(full, 12), dtype))
        assert got.shape == (21, 2)
    assert job.reload().calibration is None


def test_cache_hits_are_cast_like_fresh_vectors(tmp_path: Path) -> None:
    cache = DictCache()
    first = dense_job(tmp_path / "a", 8, "binary")
    run_all(first, [0, 1], cache)
    again = staged_job(tmp_path / "b" / "out", SHARDS)
    m = again.manifest
    m.dense = {"dim": 8, "dtype": "binary", "full_dim": FULL}
    again.write_manifest(m)
    model = run_all(again, [0, 1], cache)
    assert model.calls == []  # every vector came from the cache
    np.testing.assert_array_equal(read_matrix(again.root)[1], read_matrix(first.root)[1])
