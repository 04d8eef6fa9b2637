"""``producer.submit`` and the ``Job`` handle (producer/job.py) against Celery's in-memory
broker: what is written, what is sent. Through real Redis and workers:
tests/integration/test_worker_end_to_end.py."""

from __future__ import annotations

import pytest

from producer.errors import JobConflict, UsageError
from producer.job import Job, submit
from producer.settings import ProducerSettings

BROKER = "memory://"
RECORDS = [{"id": str(i), "text": "hello world " * i} for i in range(1, 30)] + [
    {"id": "x", "text": ""}]


def queued(queue: str) -> list[dict]:
    """The task payloads waiting on ``queue`` of the in-memory broker (drained)."""
    from producer.broker import connect

    out = []
    with connect(BROKER).connection_for_read() as conn:
        q = conn.SimpleQueue(queue)
        while q.qsize():
            msg = q.get(timeout=1)
            out.append(msg.payload)
            msg.ack()
        q.close()
    return out


@pytest.fixture(autouse=True)
def _empty_queues():
    queued("cpu"), queued("stage")
    yield


def test_submit_stages_records_and_sends_one_task_per_shard(minilm_bundle, tmp_path) -> None:
    said: list[str] = []
    job = submit(RECORDS, tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="j1", shard_tokens=64, log=said.append,
                 settings=ProducerSettings(home=tmp_path))
    m = job.dir.reload()
    assert m.staged and m.status == "running" and m.input["path"] == "<iterable>"
    assert (m.totals["accepted"], m.totals["rejected"], m.totals["chunks"]) == (29, 1, 29)
    assert m.chunking["shard_tokens"] == 64 and "config" not in (m.staging or {})
    sent = queued("cpu")
    assert len(sent) == len(m.shards) > 1
    assert sorted(p[0][0]["shard"] for p in sent) == [s.shard for s in m.shards]
    assert all(p[0][0]["job_dir"] == str(job.path) for p in sent)
    assert any("29 accepted, 1 rejected" in line for line in said)
    st = job.status()
    assert (st.shards, st.done, st.status) == (len(m.shards), 0, "running")


def test_a_taken_job_id_and_fleet_staging_of_an_iterable_are_refused(minilm_bundle,
                                                                     tmp_path) -> None:
    kw = dict(broker=BROKER, model=str(minilm_bundle), settings=ProducerSettings(home=tmp_path))
    submit(RECORDS[:3], tmp_path / "out", job_id="same", **kw)
    with pytest.raises(JobConflict, match="already holds a job"):
        submit(RECORDS[:3], tmp_path / "out", job_id="same", **kw)
    with pytest.raises(UsageError, match="--stage-on fleet needs a corpus file"):
        submit(RECORDS[:3], tmp_path / "out", job_id="fleet", stage_on="fleet", **kw)
    with pytest.raises(TypeError):
        submit(RECORDS[:3], tmp_path / "out", job_id="typo", no_such_option=1, **kw)


def test_job_takes_the_broker_from_settings_else_the_manifest(minilm_bundle, tmp_path) -> None:
    job = submit(RECORDS[:3], tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="b", settings=ProducerSettings(home=tmp_path))
    assert Job(job.path, settings=ProducerSettings(broker="redis://h/1")).broker == "redis://h/1"
    assert Job(job.path, settings=ProducerSettings()).broker == BROKER  # the manifest's hint
