"""Workers accept only their own paths: real workers with EMBED_JOB_ROOTS / EMBED_MODEL_ROOTS.

Hostile task messages (a job directory outside the roots, a symlink leaving them, ``..``, a
manifest whose bundle lies outside the model roots) are each rejected with one log line naming
the path; nothing is written anywhere and the message is not redelivered. A normal job sent
after them completes exactly once (the fault-suite checker). Stage tasks (``--stage-on fleet``)
likewise, and also for a corpus outside EMBED_INPUT_ROOTS or a staging bundle outside the model
roots; a legitimate fleet-staged job after them completes exactly once.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from producer.priority import queue_depth
from worker.fairshare import all_list_keys
from producer.broker import connect
from producer.job import Job, submit
from tests.checker import check_job
from tests.conftest import sample_records, write_jsonl
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from worker.contract import STAGE_QUEUE, STAGE_TASK_NAME, TASK_NAME, ShardTask, StageTask
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


def send(app, job_dir: str, job_id: str, shard: int = 0) -> None:
    app.send_task(TASK_NAME, args=[ShardTask(job_id=job_id, job_dir=job_dir, shard=shard)
                                   .to_dict()], queue="cpu")


def rejections(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if "rejected task:" in ln]


def test_worker_rejects_paths_outside_its_roots(tmp_path, fleet, redis_server, redis_url,
                                                 minilm_bundle, record):
    jobs, outside = tmp_path / "jobs", tmp_path / "elsewhere"
    jobs.mkdir()
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": r["id"], "text": r["text"]}
                                                for r in sample_records()[:12]])
    app = connect(redis_url)
    # Stage a job outside the roots while no worker runs, then drop its queued messages.
    bad = submit(corpus, outside, model=str(minilm_bundle), broker=redis_url, job_id="bad")
    r = redis_server.client()
    r.delete(*(k for k, _ in all_list_keys(r, "cpu")))  # every priority list, job queues' too
    (jobs / "bad").symlink_to(bad.path)  # a symlink leaving the root
    # A job inside the roots whose manifest points at a bundle outside the model roots.
    shutil.copytree(bad.path, jobs / "model")
    m = json.loads((jobs / "model" / "manifest.json").read_text())
    m["job_id"], m["model"]["bundle_path"] = "model", str(outside / "bundle")
    (jobs / "model" / "manifest.json").write_text(json.dumps(m))
    before = {d: snapshot(d) for d in (bad.path, jobs / "model")}

    hostile = [str(bad.path), str(jobs / "bad"), f"{jobs}/../elsewhere/bad"]
    w = fleet(env={"EMBED_JOB_ROOTS": str(jobs),
                   "EMBED_MODEL_ROOTS": str(minilm_bundle.parent)})
    for path in hostile:
        send(app, path, "bad")
    send(app, str(jobs / "model"), "model")
    deadline = time.monotonic() + 60
    while len(rejections(w.text())) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = rejections(w.text())
    assert len(lines) == 4, w.text()[-3000:]
    for path in hostile:
        named = re.compile(re.escape(f"(EMBED_JOB_ROOTS) {path}") + "[ :]")
        assert sum(bool(named.search(ln)) for ln in lines) == 1, (path, lines)
    assert sum(f"(EMBED_MODEL_ROOTS) {outside / 'bundle'} " in ln for ln in lines) == 1, lines
    assert "resolves to" in next(ln for ln in lines if f"{jobs / 'bad'} " in ln)
    assert "Traceback" not in w.text()

    # A normal job after them: exactly once, so the hostile ones were all handled before it.
    good = submit(corpus, jobs, model=str(minilm_bundle), broker=redis_url, job_id="good")
    assert good.wait(timeout_s=240).status == "succeeded"
    res = check_job(good.path)
    assert res.clean and res.ok == res.expected > 0, res.describe()
    # Nothing was written, nothing is queued or unacked, nothing is redelivered later.
    assert {d: snapshot(d) for d in before} == before
    r = redis_server.client()
    assert queue_depth(r, "cpu") == 0 and r.hlen("unacked") == 0
    time.sleep(2)
    assert len(rejections(w.text())) == 4
    record("task paths outside EMBED_JOB_ROOTS/EMBED_MODEL_ROOTS", res,
           "4 hostile messages (outside, symlink out, '..', bundle outside): 4 one-line "
           "rejections, 0 files written, 0 redeliveries; the next job exactly once")


def test_producer_run_sets_the_roots_for_its_private_fleet(tmp_path, minilm_bundle):
    from producer.local import fleet_roots

    env = fleet_roots(tmp_path / "out", minilm_bundle)
    assert env == {"EMBED_JOB_ROOTS": str((tmp_path / "out").resolve()),
                   "EMBED_MODEL_ROOTS": str(minilm_bundle.resolve())}


def send_stage(app, job_dir: str, job_id: str, split: int = 0) -> None:
    app.send_task(STAGE_TASK_NAME, args=[StageTask(job_id=job_id, job_dir=job_dir, split=split)
                                         .to_dict()], queue=STAGE_QUEUE)


def edit(job: Path, change) -> None:
    m = json.loads((job / "manifest.json").read_text())
    change(m)
    (job / "manifest.json").write_text(json.dumps(m))


def test_stage_tasks_accept_only_their_roots(tmp_path, fleet, redis_server, redis_url, record):
    """``--stage-on fleet``: the job directory, the staging bundle and the corpus are checked."""
    jobs, corpora, models, outside = (tmp_path / d for d in ("jobs", "corpora", "models",
                                                             "elsewhere"))
    for d in (jobs, corpora, models, outside):
        d.mkdir()
    bundle = export_hashing_bundle(models / "hashing-32", 32, log=lambda _: None)
    records = [{"id": r["id"], "text": r["text"]} for r in sample_records()[:12]]
    corpus = write_jsonl(corpora / "c.jsonl", records)
    secret = write_jsonl(outside / "secret.jsonl", records)  # any file the worker can read
    (corpora / "link.jsonl").symlink_to(secret)
    app = connect(redis_url)

    def fleet_job(src: Path, out: Path, job_id: str) -> Path:
        return submit(src, out, model=str(bundle), broker=redis_url, job_id=job_id,
                      precision="fp32", stage_on="fleet").path

    # Jobs made while no worker consumes the stage queue; their stage messages are dropped.
    bad = fleet_job(corpus, outside, "bad")  # a job directory outside the roots
    (jobs / "bad").symlink_to(bad)  # a symlink leaving the root
    far = fleet_job(secret, jobs, "far")  # a corpus outside the input roots
    via = fleet_job(corpus, jobs, "via")  # a corpus symlink leaving them (below)
    tok = fleet_job(corpus, jobs, "tok")  # its staging would load a tokenizer from outside
    shutil.copytree(bundle, outside / "bundle")
    edit(via, lambda m: m["input"].update(path=str(corpora / "link.jsonl")))
    edit(tok, lambda m: m["staging"].update(  # as a manifest from before issue 25 stored it
        config={"bundle_path": str(outside / "bundle")}))
    redis_server.client().delete(STAGE_QUEUE)
    before = {d: snapshot(d) for d in (bad, far, via, tok, outside)}

    w = fleet(queue=f"cpu,{STAGE_QUEUE}", env={
        "EMBED_JOB_ROOTS": str(jobs), "EMBED_MODEL_ROOTS": str(models),
        "EMBED_INPUT_ROOTS": str(corpora)})
    hostile = {  # message job_dir -> what the one log line names
        str(bad): f"job directory (EMBED_JOB_ROOTS) {bad} is outside",
        str(jobs / "bad"): f"job directory (EMBED_JOB_ROOTS) {jobs / 'bad'} (resolves to {bad})",
        f"{jobs}/../elsewhere/bad": f"(EMBED_JOB_ROOTS) {jobs}/../elsewhere/bad: '..' is not",
        str(far): f"corpus (EMBED_INPUT_ROOTS) {secret} is outside",
        str(via): f"corpus (EMBED_INPUT_ROOTS) {corpora / 'link.jsonl'} (resolves to {secret})",
        str(tok): f"model bundle (EMBED_MODEL_ROOTS) {outside / 'bundle'} is outside",
    }
    for path in hostile:
        send_stage(app, path, Path(path).name)
    deadline = time.monotonic() + 60
    while len(rejections(w.text())) < len(hostile) and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = rejections(w.text())
    assert len(lines) == len(hostile), w.text()[-3000:]
    for path, named in hostile.items():
        assert sum(named in ln for ln in lines) == 1, (path, named, lines)
    assert "Traceback" not in w.text()

    # A legitimate fleet-staged job after them: staged by the same worker, exactly once.
    good = Job(fleet_job(corpus, jobs, "good"), broker=redis_url)
    assert good.wait(timeout_s=240).status == "succeeded"
    res = check_job(good.path)
    assert res.clean and res.ok == res.expected > 0, res.describe()
    assert {d: snapshot(d) for d in before} == before  # nothing written
    r = redis_server.client()
    assert r.llen(STAGE_QUEUE) == queue_depth(r, "cpu") == r.hlen("unacked") == 0
    time.sleep(2)
    assert len(rejections(w.text())) == len(hostile)  # not redelivered
    record("stage-task paths outside EMBED_JOB_ROOTS/MODEL_ROOTS/INPUT_ROOTS", res,
           f"{len(hostile)} hostile stage messages (job outside, symlink out, '..', corpus "
           "outside, corpus symlink out, staging bundle outside): one rejection line each, 0 "
           "files written, 0 redeliveries; the next fleet-staged job exactly once")
