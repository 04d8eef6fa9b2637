"""The typed manifest reads every manifest the earlier versions wrote and writes it back."""

from __future__ import annotations

from storage.manifest import Manifest, ShardEntry

OLD = {
    "format": 1, "job_id": "j", "created_at": 1.0, "created_by": "h",
    "input": {"path": "/c.jsonl", "sha256": "ab", "bytes": 9}, "model": {"bundle_path": "/b"},
    "precision": "auto", "queue": "cpu", "broker_hint": "redis://x", "chunking": {},
    "max_batch_tokens": None, "max_attempts": 3, "staged": True, "status": "running",
    "shards": [{"shard": 0, "chunks": 5, "tokens": 70}], "totals": {"chunks": 5},
    "submitted_at": 2.0,
}


def test_an_old_manifest_round_trips_key_for_key():
    m = Manifest.from_dict(OLD)
    assert m.shards == [ShardEntry(0, 5, 70)] and m.bundle_path == "/b" and m.staged
    assert m.to_dict() == OLD


def test_unknown_keys_survive_and_new_fields_are_added():
    m = Manifest.from_dict({**OLD, "from_the_future": [1]})
    m.splits = [{"index": 0}]
    d = m.to_dict()
    assert d["from_the_future"] == [1] and d["splits"] == [{"index": 0}]
    assert Manifest.from_dict(d).splits == [{"index": 0}]


def test_a_minimal_manifest_gets_defaults():
    m = Manifest.from_dict({"staged": False})
    assert (m.status, m.shards, m.result, m.finished) == ("staging", [], None, False)


def test_the_json_form_is_to_dict_and_there_is_no_mapping_view():
    m = Manifest.from_dict(OLD)
    d = m.to_dict()
    assert d["shards"] == OLD["shards"] and d.get("model") == {"bundle_path": "/b"}
    assert d == OLD and "result" not in d and d.get("result", 1) == 1
    assert not hasattr(m, "get") and not hasattr(m, "__getitem__")  # fields only
