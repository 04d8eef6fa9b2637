"""producer/cancel.py and storage/cancel.py on a job directory (no broker, no worker): the
record, the manifest status, idempotence, a finished job left alone, and uncancel."""

from __future__ import annotations

from pathlib import Path

from producer.cancel import cancel_job, uncancel
from worker.staging.fleet import complete_staging
from storage.cancel import cancel_path, cancel_record, is_cancelled
from storage.jobdir import JobDir
from storage.manifest import Manifest


def _job(tmp_path: Path, status: str = "running", staged: bool = True) -> JobDir:
    jd = JobDir.create(tmp_path, "j")
    jd.write_manifest(Manifest(job_id="j", staged=staged, status=status))
    return jd


def test_cancel_then_uncancel(tmp_path: Path) -> None:
    jd = _job(tmp_path)
    c = cancel_job(jd)
    assert is_cancelled(jd) and not c.already and c.at > 0
    m = jd.reload()
    assert m.status == "cancelled" and m.cancelled_at == c.at == cancel_record(jd)["at"]
    again = cancel_job(jd)
    assert again.already and again.at == c.at  # the first cancel's time is kept
    assert uncancel(jd)
    m = jd.reload()
    assert not is_cancelled(jd) and m.status == "running" and m.cancelled_at is None
    assert "cancelled_at" not in m.to_dict()
    assert not uncancel(jd)  # nothing to clear


def test_a_finished_job_is_not_cancelled(tmp_path: Path) -> None:
    jd = _job(tmp_path, status="succeeded")
    c = cancel_job(jd)
    assert c.finished == "succeeded" and not is_cancelled(jd)
    assert jd.reload().status == "succeeded"


def test_a_torn_record_still_cancels(tmp_path: Path) -> None:
    jd = _job(tmp_path)
    cancel_path(jd).parent.mkdir(parents=True, exist_ok=True)
    cancel_path(jd).write_text("{")
    assert is_cancelled(jd) and cancel_record(jd) == {}


def test_staging_that_ends_after_a_cancel_keeps_the_job_cancelled(tmp_path: Path) -> None:
    jd = _job(tmp_path, status="staging", staged=False)
    cancel_job(jd)
    jd.finalize = lambda: False  # type: ignore[method-assign]  (shards pending: not finished)
    complete_staging(jd)  # the staging producer was still running when the job was cancelled
    m = jd.reload()
    assert m.staged and m.status == "cancelled"
    uncancel(jd)
    assert jd.reload().status == "running"
