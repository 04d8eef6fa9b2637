"""A corpus and a bundle in a bucket (a real S3 server, moto's server mode): a worker with its
own EMBED_HOME stages the corpus from the bucket (``--stage-on fleet``), copies the bundle into
its home once, embeds every chunk exactly once; its allowlists take bucket prefixes and refuse
another bucket; no credential reaches the manifest or a log."""

from __future__ import annotations

import json
import time

import pytest

from producer.job import Job, submit
from tests.checker import check_job
from tests.conftest import sample_records, write_jsonl
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration


def test_a_fleet_job_reads_its_corpus_and_bundle_from_the_bucket(tmp_path, s3_server, fleet,
                                                                 redis_url):
    from storage import objstore

    objstore._object_fs.cache_clear()  # this test's server, not a previous test's
    s3 = s3_server.client()
    for b in ("data", "elsewhere"):
        s3_server.bucket(b)
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    for p in bundle.iterdir():
        s3.upload_file(str(p), "data", f"models/hashing/{p.name}")
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": r["id"], "text": r["text"]}
                                                for r in sample_records()[:40]])
    for where in ("data/corpora", "elsewhere/corpora"):
        bucket, prefix = where.split("/")
        s3.upload_file(str(corpus), bucket, f"{prefix}/c.jsonl")
    jobs, worker_home = tmp_path / "jobs", tmp_path / "worker-home"
    w = fleet(queue="cpu,stage", env={
        "EMBED_HOME": str(worker_home), "EMBED_JOB_ROOTS": str(jobs),
        "EMBED_MODEL_ROOTS": "s3://data/models/", "EMBED_INPUT_ROOTS": "s3://data/corpora/"})

    def job(src: str, job_id: str) -> Job:
        return submit(src, jobs, model="s3://data/models/hashing", broker=redis_url,
                      job_id=job_id, precision="fp32", shard_tokens=200, stage_on="fleet",
                      home=tmp_path / "producer-home")

    bad = job("s3://elsewhere/corpora/c.jsonl", "bad")  # a corpus outside EMBED_INPUT_ROOTS
    good = job("s3://data/corpora/c.jsonl", "good")
    assert good.wait(timeout_s=240).status == "succeeded"
    res = check_job(good.path)
    assert res.clean and res.ok == res.expected > 0, res.describe()
    deadline = time.monotonic() + 30
    while "rejected task" not in w.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ("corpus (EMBED_INPUT_ROOTS) s3://elsewhere/corpora/c.jsonl is outside "
            "s3://data/corpora/") in w.text()
    assert not list((bad.path / "input").glob("*.parquet"))
    m = json.loads((good.path / "manifest.json").read_text())
    assert m["input"]["path"] == "s3://data/corpora/c.jsonl"
    assert m["model"]["bundle_path"] == "s3://data/models/hashing"
    # the worker copied the bundle into its own home, once, under the job's fingerprints
    copies = [p for p in (worker_home / "bundles").iterdir() if p.name != "listing"]
    assert len(copies) == 1 and (copies[0] / "model.onnx").is_file()
    secret = s3_server.env()["AWS_SECRET_ACCESS_KEY"]
    for text in [w.text(), *(p.read_text(errors="replace") for p in good.path.rglob("*")
                             if p.is_file() and p.suffix in (".json", ".jsonl", ".log"))]:
        assert secret not in text
