"""The stage task (worker/stage_task.py) run eagerly in this process: a message naming no
valid job is refused; a valid one stages its split and sends the split's shard tasks. Through
real workers, with a worker killed mid-split: tests/integration/test_staging.py."""

from __future__ import annotations

import pytest

from producer.job import submit
from producer.settings import ProducerSettings
from storage.errors import InvalidJobId
from tests.conftest import sample_records, write_jsonl
from tests.unit.producer.test_job import BROKER, queued
from worker.celery_app import create_app
from worker.contract import STAGE_TASK_NAME
from worker.settings import WorkerSettings


def _task(tmp_path):
    app = create_app(WorkerSettings(broker_url=BROKER, job_roots=(str(tmp_path),)))
    return app.tasks[STAGE_TASK_NAME]


def test_a_message_not_naming_its_job_is_refused(tmp_path) -> None:
    task = _task(tmp_path)
    with pytest.raises(InvalidJobId):
        task.apply(args=[{"job_dir": str(tmp_path / "a"), "job_id": "../a", "split": 0}]).get()
    with pytest.raises(ValueError, match="does not end in job id 'b'"):
        task.apply(args=[{"job_dir": str(tmp_path / "a"), "job_id": "b", "split": 0}]).get()


def test_each_split_staged_sends_its_shards_and_the_last_completes(minilm_bundle,
                                                                  tmp_path) -> None:
    queued("cpu"), queued("stage")
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:120])
    job = submit(corpus, tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="st", stage_on="fleet", split_bytes=8192, shard_tokens=2048,
                 settings=ProducerSettings(home=tmp_path))
    splits = [p[0][0] for p in queued("stage")]
    assert len(splits) >= 2
    task = _task(tmp_path)
    sent = [task.apply(args=[s]).get()["sent"] for s in splits]
    m = job.dir.reload()
    assert m.staged and sum(sent) == len(m.shards) == len(queued("cpu"))
    assert m.totals["accepted"] == 120
    assert task.apply(args=[splits[0]]).get()["sent"] == 0  # a staged job: nothing to do
