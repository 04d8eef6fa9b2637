"""worker/extra_outputs.py with a fake cache and a fake model: dense-only jobs take none of
the extra paths; multi-output jobs key, look up, store and collect every output by position."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from worker.extra_outputs import ShardOutputs

M3 = ("dense", "sparse", "colbert")


class FakeCache:
    def __init__(self) -> None:
        self.vectors: dict[str, Any] = {}
        self.entries: dict[str, Any] = {}

    def get_many(self, keys):  # type: ignore[no-untyped-def]
        return [self.vectors.get(k) for k in keys]

    def put_many(self, items):  # type: ignore[no-untyped-def]
        self.vectors.update(items)
        return len(items)

    def get_entries(self, keys):  # type: ignore[no-untyped-def]
        return [self.entries.get(k) for k in keys]

    def put_entries(self, items):  # type: ignore[no-untyped-def]
        self.entries.update(items)
        return len(items)


class FakeModel:
    pad_id = 1
    bundle = SimpleNamespace(config=SimpleNamespace(colbert_dim=3))

    def run(self, batch):  # type: ignore[no-untyped-def]
        raise AssertionError("a multi-output job must not call run")

    def run_outputs(self, batch, outputs):  # type: ignore[no-untyped-def]
        n = len(batch.positions)
        return {"dense": np.full((n, 2), 0.5, np.float32),
                "sparse": [(np.array([p], np.int32), np.array([0.1], np.float32))
                           for p in batch.positions],
                "colbert": [np.ones((p + 1, 3), np.float32) for p in batch.positions]}


def test_dense_only_job_is_the_old_path() -> None:
    out = ShardOutputs((), 3, colbert_dim=0)
    model = FakeModel()
    assert out.dense_only and out.bind(model) is model and out.table_columns() == {}
    assert out.keys("fp", ["aa"]) == ["emb:v1:fp:aa"]
    cache = FakeCache()
    out.store(cache, ["k0", "k1", "k2"], np.eye(3, 2, dtype=np.float32), [0, 2])
    assert set(cache.vectors) == {"k0", "k2"} and not cache.entries
    assert out.nbytes([0, 1], dim=2) == 16


def test_multi_output_run_collects_rows_by_position_and_round_trips_the_cache() -> None:
    out = ShardOutputs(list(M3), 4, colbert_dim=0)
    assert out.keys("fp", ["aa"]) == ["emb:v1:fp+dense,sparse,colbert:aa"]
    model = out.bind(FakeModel())
    assert model.pad_id == 1 and out.colbert_dim == 3  # the rest comes from the wrapped model
    dense = model.run(SimpleNamespace(positions=[3, 1]))
    assert dense.shape == (2, 2)
    assert out.extra["sparse"][3][0].tolist() == [3] and out.extra["sparse"][0] is None
    assert out.extra["colbert"][1].shape == (2, 3)
    assert out.nbytes([3], dim=2) == 8 + 8 + 4 * 3 * 4
    cols = out.table_columns()
    assert set(cols) == {"sparse", "colbert", "colbert_dim"} and cols["colbert_dim"] == 3

    cache, keys = FakeCache(), ["k0", "k1", "k2", "k3"]
    vectors = np.zeros((4, 2), np.float32)
    vectors[[3, 1]] = dense
    assert out.store(cache, keys, vectors, [1, 3]) == 2 and not cache.vectors
    again = ShardOutputs(list(M3), 4, colbert_dim=3)
    hits = again.lookup(cache, keys)
    assert [h is not None for h in hits] == [False, True, False, True]
    assert again.extra["colbert"][3].shape == (4, 3) and again.extra["sparse"][1][0][0] == 1


def test_an_entry_without_every_wanted_output_is_a_miss() -> None:
    cache = FakeCache()
    cache.entries["k"] = {"dense": np.zeros(2), "sparse": (np.zeros(0), np.zeros(0))}
    out = ShardOutputs(M3, 1, 3)
    assert out.lookup(cache, ["k"]) == [None] and out.extra["sparse"][0] is None
