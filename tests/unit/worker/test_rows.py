"""A shard's chunks as the worker holds them (worker/rows.py), read from input shards that
staging really wrote (in-memory broker; no worker)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from producer.job import submit
from producer.settings import ProducerSettings
from tests.unit.producer.test_job import BROKER, RECORDS, queued
from worker.rows import ShardRows


def _job(minilm_bundle, tmp_path):
    job = submit(RECORDS, tmp_path / "out", broker=BROKER, model=str(minilm_bundle),
                 job_id="rows", settings=ProducerSettings(home=tmp_path))
    queued("cpu")
    return job


def test_read_starts_with_nothing_done(minilm_bundle, tmp_path) -> None:
    job = _job(minilm_bundle, tmp_path)
    rows = ShardRows.read(job.dir.input_path(0), 384)
    n = rows.inputs.num_rows
    assert n == job.dir.manifest.shards[0].chunks and len(rows.texts) == n
    assert rows.vectors.shape == (n, 384) and not rows.cached.any() and rows.ok.all()
    assert rows.todo() == list(range(n))
    assert rows.output_bytes(range(n)) == n * 384 * 4  # dense float32


def test_stored_ids_are_used_only_when_consistent(minilm_bundle, tmp_path) -> None:
    job = _job(minilm_bundle, tmp_path)
    rows = ShardRows.read(job.dir.input_path(0), 384)
    ids = rows.stored_ids(vocab=30522, max_length=256)
    assert ids and all(len(v) == n for (i, v), n in zip(
        sorted(ids.items()), rows.inputs["n_tokens"].to_pylist()))
    assert rows.stored_ids(vocab=100, max_length=256) is None  # ids outside the vocabulary
    path = tmp_path / "no-ids.parquet"
    pq.write_table(rows.inputs.drop_columns(["input_ids"]), path)
    assert ShardRows.read(path, 384).stored_ids(30522, 256) == {}
    t = rows.inputs.set_column(rows.inputs.column_names.index("n_tokens"), "n_tokens",
                               pa.array(np.array(rows.inputs["n_tokens"]) + 1, pa.int32()))
    pq.write_table(t, path)
    assert ShardRows.read(path, 384).stored_ids(30522, 256) is None  # counts disagree
