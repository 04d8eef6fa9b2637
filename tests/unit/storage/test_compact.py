"""compact_job: same rows, vectors and metadata in fewer files; atomic; source untouched."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage.compact import compact_job, plan_files
from storage.errors import CompactError
from storage.jobdir import JobDir
from storage.readers import read_matrix, read_table
from storage.shards import read_metadata
from tests.pgjobs import make_job


def _vectors(n: int, dim: int = 16) -> np.ndarray:
    v = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _tree_digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_round_trip_same_rows_vectors_metadata_fewer_files(tmp_path):
    src = make_job(tmp_path / "out", "job1", _vectors(1000), shard_rows=37)
    before = _tree_digest(src)
    res = compact_job(src, tmp_path / "compact", rows_per_file=300)

    assert (res.files_in, res.files_out, res.rows) == (28, 4, 1000)
    new = JobDir.open(res.out)
    files = sorted(new.embeddings_dir.glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in files] == [300, 300, 300, 100]
    assert read_table(res.out).equals(read_table(src))  # same schema, rows and order
    ids_a, m_a = read_matrix(src)
    ids_b, m_b = read_matrix(res.out)
    assert ids_a == ids_b and np.array_equal(m_a, m_b)
    old_meta = read_metadata(JobDir(src).embeddings_path(0))
    assert all(read_metadata(p) == old_meta for p in files)
    assert pq.read_schema(files[0]).remove_metadata().equals(
        pq.read_schema(JobDir(src).embeddings_path(0)).remove_metadata())
    assert new.manifest.job_id == "job1-compacted"
    assert sum(s.chunks for s in new.manifest.shards) == 1000
    assert new.success_path.exists()
    assert _tree_digest(src) == before  # the job directory is left intact


def test_new_file_when_metadata_changes_and_rejects_are_kept(tmp_path):
    a = make_job(tmp_path / "a", "ja", _vectors(40), shard_rows=10)
    job = JobDir(a)
    # Shard 2 came from another provider and had 3 rejected chunks.
    t = pq.read_table(job.embeddings_path(2))
    meta = dict(t.schema.metadata)
    meta[b"embedfleet.provider"] = b"CUDAExecutionProvider"
    meta[b"embedfleet.rejected"] = b"3"
    pq.write_table(t.replace_schema_metadata(meta), job.embeddings_path(2))
    plan = plan_files([job.embeddings_path(i) for i in range(4)], rows_per_file=1000)
    assert [(f.rows, f.rejected, f.meta["provider"]) for f in plan] == [
        (20, 0, "CPUExecutionProvider"), (10, 3, "CUDAExecutionProvider"),
        (10, 0, "CPUExecutionProvider")]
    res = compact_job(a, tmp_path / "c", rows_per_file=1000)
    new = JobDir.open(res.out)
    assert [s.chunks for s in new.manifest.shards] == [20, 13, 10]
    assert read_metadata(new.embeddings_path(1))["rejected"] == "3"
    assert [s.state for s in new.shard_states()] == ["done"] * 3


def test_refuses_non_empty_out_and_leaves_it_alone(tmp_path):
    src = make_job(tmp_path / "out", "job1", _vectors(20), shard_rows=5)
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CompactError, match="not empty"):
        compact_job(src, out, rows_per_file=10)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    with pytest.raises(CompactError, match="inside the job"):
        compact_job(src, src / "compact", rows_per_file=10)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_compact_prints_counts(tmp_path):
    from click.testing import CliRunner

    from producer.cli import main

    src = make_job(tmp_path / "out", "job1", _vectors(50), shard_rows=10)
    r = CliRunner().invoke(main, ["compact", str(src), "--out", str(tmp_path / "c"),
                                  "--rows-per-file", "25", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "5 shards → 2 files, 50 rows" in r.output
    r = CliRunner().invoke(main, ["compact", str(src), "--out", str(tmp_path / "c"),
                                  "--no-progress"])
    assert r.exit_code == 4 and "not empty" in r.output
