"""storage/docindex.py: which record of a repeated id is kept, the reject naming both lines,
and finalize's drop of the rejected records' already-embedded rows (idempotent, shard valid)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import docindex
from storage.shards import embeddings_table, input_table, read_metadata, shard_is_valid, write_table


def _docs(rows: list[tuple[int, str]]) -> pa.Table:
    return pa.Table.from_pylist([{"line": ln, "doc_id": d, "doc_sha256": f"h{ln}",
                                  "carried": False} for ln, d in rows],
                                schema=docindex.DOCS_SCHEMA)


def test_reject_keeps_the_first_and_names_both_lines():
    kept, losers = docindex.winners(_docs([(1, "a"), (2, "b"), (4, "a"), (7, "a")]), "reject")
    assert kept["line"].to_pylist() == [1, 2]
    assert [(r["line"], r["doc_id"]) for r in losers] == [(4, "a"), (7, "a")]
    assert losers[0]["reason"] == ("duplicate id 'a': line 4 repeats the id of line 1, which "
                                   "is kept (--on-duplicate-id reject)")


def test_last_keeps_the_last():
    kept, losers = docindex.winners(_docs([(1, "a"), (2, "b"), (4, "a"), (7, "a")]), "last")
    assert sorted(kept["line"].to_pylist()) == [2, 7]
    assert [r["line"] for r in losers] == [1, 4]
    assert "line 1 is replaced by line 4" in losers[0]["reason"]


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="use reject or last"):
        docindex.winners(_docs([]), "first")


def test_drop_excluded_keeps_the_shard_valid_and_is_idempotent(tmp_path):
    rows = [{"line": ln, "doc_id": d, "chunk_index": c, "chunk_count": 2, "char_start": 0,
             "char_end": 5, "n_tokens": 4, "text": "t", "text_sha256": "x"}
            for ln, d, c in [(1, "a", 0), (1, "a", 1), (3, "a", 0), (3, "a", 1), (5, "b", 0)]]
    path = tmp_path / "embeddings" / "part-00000.parquet"
    path.parent.mkdir()
    write_table(path, embeddings_table(input_table(rows), np.ones((5, 4), np.float32),
                                       np.zeros(5, bool)), {"rejected": 0, "fingerprint": "f"})
    docindex.record_duplicates(tmp_path, [{"line": 3, "doc_id": "a", "reason": "dup"}])
    assert docindex.drop_excluded(tmp_path, [path]) == 2
    assert pq.read_table(path)["line"].to_pylist() == [1, 1, 5]
    assert read_metadata(path)["rejected"] == "2" and read_metadata(path)["fingerprint"] == "f"
    assert shard_is_valid(path, 5)  # rows + rejected = the chunks staged
    assert docindex.drop_excluded(tmp_path, [path]) == 0  # a second finalize changes nothing
