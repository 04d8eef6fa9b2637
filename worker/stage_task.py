"""The stage task (``--stage-on fleet``): stage one split of a job, send its shards' tasks.

Thin, like the shard task: the staging code is ``worker.staging.fleet`` (imported inside the
task so a worker that never stages never loads it), the producer's too, with the same ledger,
so a worker killed mid-split is redelivered (late ack, reject on worker lost) and continues
from the split's last durable checkpoint: no shard is staged twice. The task that finishes the last
split completes staging (sets ``staged``); a repeat of that is harmless. Like the shard task, it
accepts only a job directory, bundles and a corpus under the worker's roots
(``worker.paths.open_allowed_job``): a rejected message logs one line, writes nothing, is not
retried.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from storage.jobdir import validate_job_id
from worker.contract import STAGE_TASK_NAME
from worker.cancel import skip_on_receipt
from worker.paths import open_allowed_job
from worker.tasks import worker_home

log = logging.getLogger(__name__)


def register(app: Celery) -> None:
    @app.task(name=STAGE_TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
              max_retries=None)
    def stage_split_task(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
        from worker.staging.fleet import stage_one_split

        job_dir = str(payload["job_dir"])  # a path or an s3:// URI, checked as given
        validate_job_id(str(payload["job_id"]))
        if job_dir.rstrip("/").rsplit("/", 1)[-1] != payload["job_id"]:
            raise ValueError(f"job_dir {job_dir} does not end in job id {payload['job_id']!r}")
        job = open_allowed_job(self.app.settings, job_dir, stage=True)  # only under the roots
        if skip_on_receipt(job, -1):  # `producer cancel`: acked, not staged
            return {"split": int(payload["split"]), "sent": 0, "cancelled": True}
        sent = stage_one_split(job, int(payload["split"]), self.app,
                               fast_tokenizer=self.app.settings.fast_tokenizer,
                               home=worker_home(self.app.settings))
        log.info("staged split %s of %s: %d shard task(s) sent", payload["split"], job.root,
                 sent)
        return {"split": int(payload["split"]), "sent": sent}
