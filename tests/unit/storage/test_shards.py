"""Stage 10: shard names, the write-then-rename shard writer, shard validation, and hostile ids.

A writer killed between writing and renaming leaves nothing a reader can see; names below the
job root come only from integers, never from document ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage.hashing import text_sha256
from storage.jobdir import JobDir
from storage.schema import embeddings_schema
from storage.shards import (
    embeddings_table,
    input_table,
    read_metadata,
    shard_is_valid,
    shard_name,
    write_table,
)

ROOT = Path(__file__).resolve().parents[3]
DIM = 6
META = {"fingerprint": "fp-0123abcd", "precision": "fp32", "provider": "CPUExecutionProvider",
        "dim": DIM}
HOSTILE_IDS = [
    "../../etc/passwd", "/abs/path", "a\x00b", "x" * 10_000, "日本語-ü-🙂", "part-00009.parquet",
    ".hidden", "C:\\windows\\system32", "*", "",
]


def rows_for(doc_ids: list[str]) -> list[dict]:
    rows = []
    for i, doc_id in enumerate(doc_ids):
        text = f"chunk {i} of {doc_id[:20]!r}"
        rows.append({"line": i + 1, "doc_id": doc_id, "chunk_index": i, "chunk_count": len(doc_ids),
                     "char_start": 7 * i, "char_end": 7 * i + len(text), "n_tokens": 3 + i,
                     "text": text, "text_sha256": text_sha256(text)})
    return rows


def make_shard(n: int, *, dim: int = DIM, doc_ids: list[str] | None = None,
               keep: np.ndarray | None = None) -> pa.Table:
    inputs = input_table(rows_for(doc_ids or [f"doc-{i}" for i in range(n)]))
    vectors = np.random.default_rng(n).standard_normal((inputs.num_rows, dim)).astype(np.float32)
    return embeddings_table(inputs, vectors, np.arange(inputs.num_rows) % 3 == 0, keep)


def make_job(out: Path, chunks: int, job_id: str = "job") -> JobDir:
    job = JobDir.create(out, job_id)
    job.write_manifest({"job_id": job_id, "staged": True, "submitted_at": time.time(),
                        "shards": [{"shard": 0, "chunks": chunks, "tokens": 4 * chunks}]})
    return job


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


# -- names -----------------------------------------------------------------------------------
def test_shard_name_comes_from_a_non_negative_int_only():
    assert shard_name(0) == "part-00000.parquet"
    assert shard_name(123456) == "part-123456.parquet"
    for bad in (-1, True, "3", 1.0, None, "../x"):
        with pytest.raises(ValueError):
            shard_name(bad)


# -- round trip ------------------------------------------------------------------------------
def test_write_table_round_trips_schema_values_and_metadata(tmp_path):
    table = make_shard(5)
    path = tmp_path / "part-00000.parquet"
    write_table(path, table, META)
    back = pq.read_table(path)
    assert back.schema.equals(embeddings_schema(DIM))
    assert back.schema.field("embedding").type == pa.list_(pa.float32(), DIM)
    assert back.to_pylist() == table.to_pylist()
    # the schema names the dense dtype (storage/schema.py); META's dim wins over the table's
    assert read_metadata(path) == {**{k: str(v) for k, v in META.items()}, "dtype": "float32"}
    assert os.listdir(tmp_path) == ["part-00000.parquet"]  # no temp file left behind


def test_embeddings_table_keeps_only_the_rows_in_keep():
    keep = np.array([True, False, True, True])
    full, kept = make_shard(4), make_shard(4, keep=keep)
    assert kept.num_rows == 3
    assert kept.to_pylist() == [r for r, k in zip(full.to_pylist(), keep) if k]


def test_rewriting_a_shard_replaces_it_whole(tmp_path):
    path = tmp_path / "part-00001.parquet"
    write_table(path, make_shard(5), META)
    write_table(path, make_shard(3), {**META, "provider": "CUDAExecutionProvider"})
    assert pq.read_table(path).num_rows == 3
    assert read_metadata(path)["provider"] == "CUDAExecutionProvider"


# -- a writer killed between write and rename --------------------------------------------------
KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import storage.atomic
    from storage.jobdir import JobDir
    from storage.shards import embeddings_table, input_table, write_table
    from tests.unit.storage.test_shards import META, rows_for

    def die(src, dst):  # the temp file is complete: die before it is renamed
        os.kill(os.getpid(), signal.SIGKILL)

    storage.atomic.os.replace = die
    job = JobDir(sys.argv[1])
    inputs = input_table(rows_for(["a", "b", "c"]))
    write_table(job.embeddings_path(0),
                embeddings_table(inputs, np.ones((3, 6), np.float32), np.zeros(3, bool)), META)
    print("renamed: this is a bug")
""")


def test_writer_killed_before_rename_leaves_no_visible_shard(tmp_path):
    job = make_job(tmp_path, chunks=3)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(job.root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert list(job.embeddings_dir.glob("*.parquet")) == []
    tmp = [p.name for p in job.embeddings_dir.iterdir()]
    assert len(tmp) == 1 and tmp[0].startswith(".part-00000.parquet.") and tmp[0].endswith(".tmp")
    assert pq.read_metadata(job.embeddings_dir / tmp[0]).num_rows == 3  # complete, only hidden
    assert [s.state for s in job.shard_states()] == ["pending"]
    assert job.finalize() is False

    write_table(job.embeddings_path(0), make_shard(3), META)  # the redelivered task
    assert [p.name for p in job.embeddings_dir.glob("*.parquet")] == ["part-00000.parquet"]
    assert shard_is_valid(job.embeddings_path(0), 3)
    assert job.finalize() is True
    assert job.success_path.exists()
    assert sorted(os.listdir(job.embeddings_dir)) == ["part-00000.parquet"]  # temp file removed


# -- validity --------------------------------------------------------------------------------
@pytest.fixture
def shard(tmp_path: Path) -> Path:
    path = tmp_path / "part-00000.parquet"
    write_table(path, make_shard(40), META)
    return path


def test_shard_is_valid_for_a_complete_shard(shard):
    assert shard_is_valid(shard, 40)
    assert shard_is_valid(shard, None)


def test_shard_is_invalid_for_a_wrong_row_count(shard):
    assert not shard_is_valid(shard, 39)
    assert not shard_is_valid(shard, 41)
    assert not shard_is_valid(shard, 0)


def test_rejected_chunks_count_towards_the_expected_total(tmp_path):
    path = tmp_path / "part-00000.parquet"
    write_table(path, make_shard(5, keep=np.array([1, 1, 0, 1, 0], bool)), {**META, "rejected": 2})
    assert shard_is_valid(path, 5)
    assert not shard_is_valid(path, 3)


@pytest.mark.parametrize("damage", ["truncated", "no-footer", "footer-bytes", "empty", "garbage",
                                    "missing", "directory"])
def test_shard_is_invalid_when_damaged(shard, damage):
    data = shard.read_bytes()
    if damage == "truncated":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "no-footer":
        shard.write_bytes(data[:-8])
    elif damage == "footer-bytes":  # the footer length points into the middle of nowhere
        shard.write_bytes(data[:-8] + (len(data) * 2).to_bytes(4, "little") + b"PAR1")
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "garbage":
        shard.write_bytes(b"PAR1" + os.urandom(2000) + b"PAR1")
    elif damage == "missing":
        shard.unlink()
    else:
        shard.unlink()
        shard.mkdir()
    assert not shard_is_valid(shard, 40)
    assert not shard_is_valid(shard, None)


def test_shard_is_invalid_with_unreadable_rejected_metadata(tmp_path):
    path = tmp_path / "part-00000.parquet"
    write_table(path, make_shard(4), {**META, "rejected": "many"})
    assert not shard_is_valid(path, 4)


# -- hostile document ids ------------------------------------------------------------------------
def test_hostile_doc_ids_never_reach_a_file_name(tmp_path):
    out = tmp_path / "out"
    job = make_job(out, chunks=len(HOSTILE_IDS), job_id="hostile")
    before = all_files(out)
    table = make_shard(0, doc_ids=HOSTILE_IDS)
    write_table(job.embeddings_path(0), table, META)

    assert all_files(out) - before == {"hostile/embeddings/part-00000.parquet"}
    assert all_files(tmp_path) == {f"out/{f}" for f in all_files(out)}  # nothing escaped
    for bad in ("etc/passwd", "abs/path"):
        assert not (tmp_path / bad).exists()
    back = pq.read_table(job.embeddings_path(0))
    assert back["doc_id"].to_pylist() == HOSTILE_IDS  # NUL, 10k chars and emoji intact
    assert back.to_pylist() == table.to_pylist()
    assert job.finalize() is True
    assert all_files(out) - before == {"hostile/embeddings/part-00000.parquet",
                                       "hostile/rejects.jsonl", "hostile/_SUCCESS",
                                       "hostile/docs/index.parquet"}


# --- BGE-M3 output columns ------------------------------------------------------------------


def test_dense_only_schema_is_unchanged() -> None:
    from storage.schema import embeddings_schema

    assert embeddings_schema(8).names == ["doc_id", "chunk_index", "char_start", "char_end",
                                          "n_tokens", "text_sha256", "embedding", "cached",
                                           "line"]


def test_m3_columns_round_trip_and_skip_rejected_rows(tmp_path: Path) -> None:
    from storage.shards import embeddings_table, input_table

    rows = [{"line": i + 1, "doc_id": f"d{i}", "chunk_index": 0, "chunk_count": 1,
             "char_start": 0, "char_end": 3, "n_tokens": 3 + i, "text": "abc",
             "text_sha256": "0" * 64} for i in range(3)]
    vectors = np.eye(3, 4, dtype=np.float32)
    sparse = [(np.array([5, 9], np.int32), np.array([0.5, 0.25], np.float32)), None,
              (np.zeros(0, np.int32), np.zeros(0, np.float32))]
    colbert = [np.ones((2, 6), np.float32), None, np.full((4, 6), 0.5, np.float32)]
    keep = np.array([True, False, True])
    t = embeddings_table(input_table(rows), vectors, np.zeros(3, bool), keep, sparse=sparse,
                         colbert=colbert, colbert_dim=6)
    assert t.schema.field("sparse_ids").type == pa.list_(pa.int32())
    assert t.schema.field("sparse_weights").type == pa.list_(pa.float32())
    assert t.schema.field("colbert").type == pa.list_(pa.list_(pa.float32(), 6))
    assert t["doc_id"].to_pylist() == ["d0", "d2"]
    assert t["sparse_ids"].to_pylist() == [[5, 9], []]
    assert t["sparse_weights"].to_pylist() == [[0.5, 0.25], []]
    got = t["colbert"].to_pylist()
    assert [len(c) for c in got] == [2, 4] and got[1][0] == [0.5] * 6
