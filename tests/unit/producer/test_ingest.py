"""Staging orchestrated by the producer (producer/ingest.py): stage tasks for the fleet and
continuing a job whose staging stopped. Crash points through real processes:
tests/integration/test_staging.py and test_resume.py."""

from __future__ import annotations

import pytest

from producer.broker import connect
from producer.errors import CorpusError
from producer.ingest import continue_staging, send_stage_tasks
from producer.job import submit
from producer.settings import ProducerSettings
from tests.conftest import sample_records, write_jsonl
from tests.unit.producer.test_job import BROKER, queued


@pytest.fixture(autouse=True)
def _empty_queues():
    queued("cpu"), queued("stage")
    yield


def test_fleet_staging_sends_one_stage_task_per_split(minilm_bundle, tmp_path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:200])
    job = submit(corpus, tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="f", stage_on="fleet", split_bytes=8192,
                 settings=ProducerSettings(home=tmp_path))
    splits = job.dir.manifest.splits or []
    sent = queued("stage")
    assert len(splits) >= 3 and len(sent) == len(splits)
    assert sorted(p[0][0]["split"] for p in sent) == [s["index"] for s in splits]
    assert not job.dir.manifest.staged and queued("cpu") == []  # the fleet stages, not us
    assert send_stage_tasks(connect(BROKER), job.dir, [0]) == 1  # a resume re-sends one


def test_continuing_refuses_a_corpus_that_changed(minilm_bundle, tmp_path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:50])
    job = submit(corpus, tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="c", settings=ProducerSettings(home=tmp_path))
    m = job.dir.reload()
    m.staged, m.status = False, "staging"  # as if the producer died before completing
    job.dir.write_manifest(m)
    corpus.write_text(corpus.read_text() + '{"id": "new", "text": "one more"}\n')
    with pytest.raises(CorpusError, match="changed since"):
        continue_staging(job.dir, connect(BROKER), procs=1)
