"""A fleet that shares nothing but a broker and a bucket (issue 26): the job in ``s3://``.

A real S3-protocol server (moto server mode on 127.0.0.1), a real redis-server and real
``celery -A worker worker`` processes, each started in its own empty working directory with its
own ``EMBED_HOME``. The job directory is ``s3://fleet-jobs/jobs/<id>``; the workers' only shared
things are Redis and the bucket (the first test reads its corpus and bundle from the bucket too;
the others stage a local corpus with the tests' local MiniLM export). Any code that still
reached for a job path on the local disk would write it under a worker's working directory or
home, which the test checks are free of job files, and the Jepsen-style checker reads the job
from the bucket alone: lost = duplicated = 0.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from producer.broker import connect, send_shards
from producer.cli import main
from producer.job import Job, submit
from storage.jobfs import job_path
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import make_corpus, wait_until
from tests.integration.test_pgload import dsn, pg  # noqa: F401  (fixtures: PostgreSQL)
from tests.procs import ROOT, Worker

pytestmark = pytest.mark.integration

BUCKET = "fleet-jobs"
JOBS = f"s3://{BUCKET}/jobs"
WAIT_S = float(os.environ.get("EMBED_FAULTS_WAIT_S", "240"))


@pytest.fixture
def bucket(s3_server) -> str:  # noqa: ANN001
    s3_server.bucket(BUCKET)
    return JOBS


@pytest.fixture
def s3_fleet(tmp_path: Path, redis_server: Any, s3_server: Any) -> Iterator[Callable[..., Worker]]:
    """Start workers, each in its own empty directory with its own EMBED_HOME, the bucket
    their only job root; all are stopped after the test."""
    started: list[Worker] = []

    def start(name: str, **extra: str) -> Worker:
        started.append(_s3_worker(tmp_path, redis_server, s3_server, name, **extra))
        return started[-1].start()

    yield start
    for w in started:
        w.stop()


def _s3_worker(tmp_path: Path, redis_server: Any, s3_server: Any, name: str,
               **extra: str) -> Worker:
    cwd = tmp_path / name
    (cwd / "home").mkdir(parents=True)
    env = {"EMBED_BROKER_URL": redis_server.url(0), "EMBED_CACHE_URL": redis_server.url(1),
           "EMBED_THREADS": "1", "EMBED_HOME": str(cwd / "home"), "EMBED_LOG_LEVEL": "INFO",
           "EMBED_JOB_ROOTS": f"{JOBS}/", "PYTHONPATH": str(ROOT),
           "EMBED_VISIBILITY_TIMEOUT": "40", "EMBED_UNACKED_RESTORE_INTERVAL": "1",
           **s3_server.env(), **extra}
    return Worker(env, tmp_path / f"{name}.log", name=f"{name}-{uuid.uuid4().hex[:6]}", cwd=cwd)


def job_files_outside_the_bucket(*dirs: Path) -> list[str]:
    """Job files (shards, manifests, state) that a worker wrote on its local disk."""
    bad = []
    for d in dirs:
        for p in d.rglob("*"):
            if p.name.startswith("s3:") or p.name in ("manifest.json", "_SUCCESS") or (
                    p.name.startswith("part-") and p.suffix == ".parquet"):
                bad.append(str(p))
    return bad


def test_two_workers_sharing_only_redis_and_the_bucket_embed_every_chunk_once(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle, record, dsn):
    # Corpus, bundle and job directory are all bucket URIs (the done-when): the
    # producer and the workers read the corpus by ranged GETs and copy the bundle into their
    # own EMBED_HOME; nothing is shared but Redis and the bucket.
    s3 = s3_server.client()
    for f in Path(minilm_bundle).rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), BUCKET, f"models/minilm/{f.relative_to(minilm_bundle)}")
    s3.upload_file(str(make_corpus(tmp_path / "c.jsonl")), BUCKET, "corpora/c.jsonl")
    roots = {"EMBED_MODEL_ROOTS": f"s3://{BUCKET}/models/",
             "EMBED_INPUT_ROOTS": f"s3://{BUCKET}/corpora/"}
    workers = [s3_fleet(n, EMBED_FAULTS="sleep=0.3", **roots) for n in ("wa", "wb")]
    job = submit(f"s3://{BUCKET}/corpora/c.jsonl", bucket, model=f"s3://{BUCKET}/models/minilm",
                 precision="fp32", broker=redis_url, job_id="s3two", shard_tokens=2000,
                 home=tmp_path / "producer-home")
    assert str(job.path) == f"{JOBS}/s3two"
    st = job.wait(poll_s=0.5, timeout_s=WAIT_S)
    assert st.status == "succeeded", (st, [w.text()[-3000:] for w in workers])

    res = check_job(f"{JOBS}/s3two")
    assert res.clean and res.ok == res.expected > 0, res.describe()
    hosts = {a["host"].split("@")[0].rsplit("-", 1)[0]
             for s in job.dir.manifest.shards for a in job.dir.attempts(s.shard)}
    assert hosts == {"wa", "wb"}, hosts  # both workers embedded shards
    assert job_files_outside_the_bucket(tmp_path / "wa", tmp_path / "wb") == []
    assert not (Path.cwd() / "s3:").exists()  # the producer's side: no s3:/… path made locally
    assert (job.path / "_SUCCESS").exists() and not list(job.path.rglob("*.tmp"))

    # A redelivered task whose shard is committed: "already done", no new attempt, nothing
    # rewritten (the embeddings object keeps its first write).
    shard = job.dir.manifest.shards[0].shard
    before = (len(job.dir.attempts(shard)), job.dir.embeddings_path(shard).stat().st_mtime)
    send_shards(connect(redis_url), job.dir, [shard], job.dir.manifest.queue)
    wait_until(lambda: any("already done" in w.text() for w in workers), 60,
               "the redelivered task to report 'already done'")
    assert (len(job.dir.attempts(shard)),
            job.dir.embeddings_path(shard).stat().st_mtime) == before
    assert check_job(f"{JOBS}/s3two").clean

    # status / report on the bucket job, no credential anywhere in what they print.
    runner = CliRunner()
    out = runner.invoke(main, ["status", f"{JOBS}/s3two", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["status"] == "succeeded"
    rep = runner.invoke(main, ["report", f"{JOBS}/s3two"])
    assert rep.exit_code == 0, rep.output
    load = runner.invoke(main, ["load", f"{JOBS}/s3two", "--dsn", dsn, "--table", "s3two",
                                "--create", "--no-progress"])
    assert load.exit_code == 0, load.output
    import psycopg

    with psycopg.connect(dsn) as c:
        n, keys = c.execute("SELECT count(*), count(DISTINCT (doc_id, chunk_index)) "
                            "FROM s3two").fetchone()
    assert n == keys == res.ok
    comp = runner.invoke(main, ["compact", f"{JOBS}/s3two", "--out", str(tmp_path / "big"),
                                "--no-progress"])
    assert comp.exit_code == 0, comp.output
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "big" / "embeddings").num_rows == res.ok
    # The output reads straight from the bucket with pandas, polars and pyarrow.dataset.
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    uri = f"{JOBS}/s3two/embeddings/"
    assert len(pd.read_parquet(uri)) == res.ok
    assert ds.dataset(uri, format="parquet").count_rows() == res.ok
    assert pl.from_arrow(ds.dataset(uri, format="parquet").to_table()).height == res.ok
    manifest = (job.path / "manifest.json").read_text()
    for text in (out.output, rep.output, load.output, manifest, *(w.text() for w in workers)):
        assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in text
        assert s3_server.env()["AWS_ACCESS_KEY_ID"] not in text
    record("job in s3://, two workers sharing only Redis and the bucket; one task redelivered",
           res, f"{len(job.dir.manifest.shards)} shards over 2 workers; redelivered shard "
           f"{shard}: 'already done', no new attempt")


def test_a_worker_refuses_a_job_outside_its_bucket_prefix(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle):
    s3_server.bucket("other-bucket")
    w = s3_fleet("wr")
    job = submit(make_corpus(tmp_path / "c.jsonl", n=4), "s3://other-bucket/jobs",
                 model=str(minilm_bundle), precision="fp32", broker=redis_url, job_id="out1")
    w.wait_for("rejected task", 60)
    assert "s3://other-bucket/jobs/out1 is outside s3://fleet-jobs/jobs/" in w.text()
    time.sleep(1)
    assert job.status().done == 0 and list((job.dir.state_dir / "attempts").glob("*")) == []


def test_producer_killed_mid_upload_while_staging_then_resumed_from_the_bucket(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle, record):
    from tests.integration.test_staging import make_corpus as staging_corpus
    from tests.integration.test_staging import producer, submit_args

    s3_fleet("wk")
    corpus = staging_corpus(tmp_path / "corpus.jsonl", n_docs=120)
    r = producer(*submit_args(corpus, bucket, "killed", minilm_bundle, redis_url),  # type: ignore[arg-type]
                 env={"EMBED_STAGE_FAULTS": "mid_shard_write=3"})
    assert r.returncode == -9, r.stdout + r.stderr
    st = json.loads(producer("status", f"{JOBS}/killed", "--json").stdout)
    assert st["status"] == "staging" and 1 <= st["staging"]["shards"] <= 3, st
    r = producer("resume", f"{JOBS}/killed", "--broker", redis_url, "--wait",
                 "--stage-procs", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    res = check_job(f"{JOBS}/killed")
    assert res.clean and res.ok == res.expected > 0, res.describe()
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=BUCKET, Prefix="jobs/killed/").get("Contents", [])]
    assert "jobs/killed/_SUCCESS" in keys and not [k for k in keys if k.endswith(".tmp")]
    record("job in s3://: producer SIGKILLed mid-upload of shard 3 while staging; "
           "`producer resume s3://…`", res, f"{st['staging']['shards']} shard(s) staged at the "
           "kill; no .tmp object in the bucket")


@pytest.mark.slow
def test_the_store_unreachable_for_30s_mid_job_costs_time_not_chunks(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle, record):
    from tests.relay import Relay

    outage_s = float(os.environ.get("EMBED_S3_OUTAGE_S", "30"))
    with Relay(s3_server.port) as relay:
        w = s3_fleet("wo", AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}",
                     EMBED_FAULTS="sleep=0.5")
        job = submit(make_corpus(tmp_path / "c.jsonl"), bucket, model=str(minilm_bundle),
                     precision="fp32", broker=redis_url, job_id="outage", shard_tokens=2000)
        wait_until(lambda: job.status().done >= 1, 120, "a first shard")
        relay.partition()  # the workers' store stops answering; nothing is closed
        at_cut = job.status()
        time.sleep(outage_s)
        during = job.status()  # the producer still reaches the store: nothing moved
        relay.heal()
        st = job.wait(poll_s=0.5, timeout_s=WAIT_S)
    assert not at_cut.finished and during.done <= at_cut.done + 1, (at_cut, during)
    assert st.status == "succeeded" and st.failed == 0, (st, w.text()[-3000:])
    res = check_job(f"{JOBS}/outage")
    assert res.clean and res.ok == res.expected, res.describe()
    retries = w.text().count("not counted as an attempt")
    record(f"job in s3://: the store unreachable for the worker for {outage_s:.0f}s mid-job "
           "(relay stops forwarding; moto's memory would not survive a restart)", res,
           f"{at_cut.done} of {at_cut.shards} shards done at the cut, {during.done} after "
           f"{outage_s:.0f}s; {retries} store error(s) retried, not counted as attempts")


def test_a_bucket_that_denies_writes_is_one_error_naming_the_uri_and_loses_nothing(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle, record, monkeypatch):
    from tests.objstore import S3Proxy

    deny = S3Proxy(s3_server.port, deny_writes=True)
    try:
        # The producer's first write (the manifest) is refused: one line naming the object.
        monkeypatch.setenv("AWS_ENDPOINT_URL", deny.endpoint)
        corpus = make_corpus(tmp_path / "c.jsonl", n=8)
        out = CliRunner().invoke(main, ["submit", str(corpus), "--out", JOBS, "--job-id",
                                        "denied", "--model", str(minilm_bundle),
                                        "--broker", redis_url])
        assert out.exit_code == 1, out.output
        assert f"{JOBS}/denied/manifest.json" in out.output and "AccessDenied" in out.output
        assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 2
        assert s3_server.client().list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
        # A worker whose writes are denied: each shard one error, left pending, nothing lost;
        # `resume` once the worker may write finishes the job.
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
        w = s3_fleet("wd", AWS_ENDPOINT_URL=deny.endpoint)
        job = submit(corpus, bucket, model=str(minilm_bundle), precision="fp32",
                     broker=redis_url, job_id="denied2", shard_tokens=2000)
        shards = len(job.dir.manifest.shards)
        wait_until(lambda: w.text().count("left pending") >= shards, 120,
                   "every shard refused by the store")
        assert f"{JOBS}/denied2/" in w.text() and job.status().done == 0
        w.stop()
        s3_fleet("wok")
        assert job.resume() == shards
        st = job.wait(poll_s=0.5, timeout_s=WAIT_S)
    finally:
        deny.close()
    assert st.status == "succeeded", st
    res = check_job(f"{JOBS}/denied2")
    assert res.clean and res.ok == res.expected > 0, res.describe()
    record("job in s3://: a bucket denying writes (403 AccessDenied) to the producer, then to "
           "a worker; `resume` after", res, f"submit: exit 1, one line naming the manifest; "
           f"worker: {shards} shard(s) left pending with one error each, none failed")


def test_a_worker_killed_mid_upload_of_its_shard_leaves_no_object_and_loses_nothing(
        tmp_path, s3_fleet, redis_url, s3_server, bucket, minilm_bundle, record):
    import signal

    from tests.objstore import S3Proxy

    proxy = S3Proxy(s3_server.port, hold="/embeddings/part-")
    try:
        w = s3_fleet("wu", AWS_ENDPOINT_URL=proxy.endpoint)
        job = submit(make_corpus(tmp_path / "c.jsonl", n=12), bucket, model=str(minilm_bundle),
                     precision="fp32", broker=redis_url, job_id="upload", shard_tokens=2000)
        assert proxy.held.wait(120), w.text()[-3000:]  # half of a shard's upload went out
        cut = [s.shard for s in job.dir.manifest.shards
               if (job.dir.state_dir / "inflight").glob(f"{s.shard:05d}.*")]
        assert len(cut) == 1, cut
        shard = cut[0]
        pid = job.dir.attempts(shard)[-1]["pid"]
        assert pid in w.children()
        os.kill(pid, signal.SIGKILL)  # the pool process dies inside its PUT
        # What a reader sees of the shard meanwhile: nothing (no partial object, no .tmp).
        assert not job.dir.embeddings_path(shard).exists()
        st = job.wait(poll_s=0.5, timeout_s=WAIT_S)
    finally:
        proxy.close()
    assert st.status == "succeeded", (st, w.text()[-3000:])
    res = check_job(f"{JOBS}/upload")
    assert res.clean and res.ok == res.expected > 0, res.describe()
    recs = job.dir.attempts(shard)
    assert len(recs) >= 2 and recs[-1]["pid"] != pid, recs
    record("job in s3://: the worker's pool process SIGKILLed mid-upload of an embeddings "
           "shard (half its PUT body sent)", res, f"shard {shard}: no object while cut, "
           f"{len(recs)} attempts, landed by a later one")
