"""Staging many splits (worker/staging/pool.py): in one process or several, the same
checkpoints; a split already done in the ledger is not staged again."""

from __future__ import annotations

from pathlib import Path

from storage import ledger
from storage.jobdir import JobDir
from tests.conftest import SAMPLE
from worker.staging.pool import chunk_texts, stage_splits
from worker.staging.shards import StageConfig
from worker.staging.splits import plan_splits


def _cfg(bundle: Path) -> StageConfig:
    return StageConfig(bundle_path=str(bundle), max_tokens=128, shard_tokens=4096)


def _summary(cps: list[ledger.Checkpoint]) -> list[tuple[int, int | None, int, int]]:
    return sorted((cp.split, cp.shard, cp.chunks, cp.tokens) for cp in cps)


def test_one_or_two_processes_stage_the_same_shards(minilm_bundle, tmp_path) -> None:
    splits, _ = plan_splits(SAMPLE, 64 * 1024)
    assert len(splits) >= 3
    got = {}
    for procs in (1, 2):
        job = JobDir.create(tmp_path / f"p{procs}", "j")
        landed: list[int] = []
        cps, hits = stage_splits(SAMPLE, splits, _cfg(minilm_bundle), root=job.root,
                                 procs=procs, on_shard=lambda cp: landed.append(cp.shard))
        assert hits == 0 and sorted(landed) == sorted(cp.shard for cp in cps if cp.shard
                                                      is not None)
        got[procs] = (_summary(cps), sorted(p.read_bytes() for p in job.input_dir.iterdir()))
        again, _ = stage_splits(SAMPLE, splits, _cfg(minilm_bundle), root=job.root,
                                procs=procs, on_shard=lambda cp: None)
        assert again == []  # every split is done in the ledger
    assert got[1] == got[2]


def test_chunk_texts_are_the_staged_chunks_in_order(minilm_bundle) -> None:
    texts, totals = chunk_texts(SAMPLE, _cfg(minilm_bundle))
    assert len(texts) == totals["chunks"] and totals["accepted"] == 375
    assert texts[0] and all(isinstance(t, str) for t in texts)
