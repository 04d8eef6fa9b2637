"""Staging on a worker (worker/staging/fleet.py): the settings a job recorded, and completing
staging from the ledger. The whole stage task through real workers:
tests/integration/test_staging.py."""

from __future__ import annotations

from dataclasses import asdict

from storage import ledger
from storage.jobdir import JobDir
from storage.manifest import Manifest
from worker.staging.fleet import complete_staging, job_stage_config
from worker.staging.shards import StageConfig

STAGE = StageConfig(bundle_path="/b", max_tokens=128, overlap=4, prefix="p: ", text_field="t",
                    id_field="i", max_line_bytes=1000, shard_tokens=640, shard_max_chunks=16)


def _job(tmp_path, **fields) -> JobDir:
    job = JobDir.create(tmp_path, "j")
    job.write_manifest(Manifest(job_id="j", model={"bundle_path": "/b"}, **fields))
    return job


def test_settings_come_from_the_chunking_record_and_the_bundle_path(tmp_path) -> None:
    chunking = {k: v for k, v in asdict(STAGE).items() if k != "bundle_path"}
    assert job_stage_config(_job(tmp_path, chunking=chunking)) == STAGE


def test_a_manifest_that_stored_them_twice_is_read_from_staging_config(tmp_path) -> None:
    job = _job(tmp_path, chunking={"max_tokens": 1, "overlap": 0},
               staging={"on": "fleet", "config": asdict(STAGE)})
    assert job_stage_config(job) == STAGE


def test_complete_staging_of_an_empty_ledger_finishes_the_job(tmp_path) -> None:
    job = _job(tmp_path, staging={"on": "fleet"})
    assert ledger.read_all(job.root) == {}
    complete_staging(job)
    m = job.reload()
    assert m.staged and m.shards == [] and m.totals["chunks"] == 0
    assert "finished_at" in (m.staging or {})
    assert m.status == "succeeded" and job.success_path.exists()  # nothing to embed
