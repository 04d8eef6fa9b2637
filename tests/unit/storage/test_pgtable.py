"""Target names and the column layout a job needs (no database)."""

from __future__ import annotations

import pytest

from storage.errors import InvalidTableName
from storage.pgtable import Layout, Target


def test_target_parse_defaults_to_public_and_refuses_names_needing_quotes():
    assert Target.parse("items") == Target("public", "items")
    assert Target.parse("rag.items_v2").qualified == "rag.items_v2"
    for bad in ("", "Items", "a;drop table x", "a.b.c", "1x", "x" * 64, 'a"b'):
        with pytest.raises(InvalidTableName, match="--table"):
            Target.parse(bad)


def test_layout_columns_follow_type_dim_and_sparse():
    lay = Layout(fingerprint="f", model="m", dim=384, vector_type=None, sparse_vocab=None)
    assert lay.columns("halfvec")[-1] == ("embedding", "halfvec(384)")
    assert [c for c, _ in lay.columns("vector")] == [
        "doc_id", "chunk_index", "char_start", "char_end", "n_tokens", "text_sha256", "embedding"]
    m3 = Layout(fingerprint="f", model="m", dim=1024, vector_type="vector", sparse_vocab=250002)
    assert m3.columns("vector")[-1] == ("sparse", "sparsevec(250002)")
