"""worker/pipeline.py with a FakeModel and a real job directory: the stages in order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from storage.readers import read_matrix
from tests.checker import check_job
from tests.fakes import DictCache, FakeModel, context, staged_job, text
from worker.pipeline import embed_shard, plan_groups

TEXTS = [text(i, extra=1 + i % 4) for i in range(20)]


@pytest.fixture
def job(tmp_path: Path):  # type: ignore[no-untyped-def]
    return staged_job(tmp_path / "out", [TEXTS])


def vectors_by_doc(job) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    ids, matrix = read_matrix(job.root)
    return {d: matrix[k] for k, (d, _c) in enumerate(ids)}


def test_every_chunk_lands_once_with_the_models_vector(job) -> None:
    model = FakeModel()
    res = embed_shard(context(job, model, max_batch_tokens=24))
    assert (res.status, res.chunks, res.rejected, res.attempt) == ("done", 20, 0, 1)
    assert res.finalized and job.success_path.exists()
    assert sorted(i for call in model.calls for i in call) == list(range(20))
    got = vectors_by_doc(job)
    want = model.expected(TEXTS)
    assert np.allclose([got[f"doc{i + 1}"] for i in range(20)], want, atol=1e-6)
    assert check_job(job.root).ok == 20


def test_staged_token_ids_are_embedded_without_tokenising(tmp_path: Path) -> None:
    model = FakeModel()
    tok = model.tokenizer
    # Text 0 is staged with the ids of text 1 (same length): the worker must use what it was given.
    staged = {TEXTS[0]: tok.encode(TEXTS[4]).ids, TEXTS[2]: tok.encode(TEXTS[2]).ids}
    assert len(staged[TEXTS[0]]) == len(tok.encode(TEXTS[0]).ids)
    job = staged_job(tmp_path / "out", [TEXTS], ids=staged)
    assert embed_shard(context(job, model)).status == "done"
    got, want = vectors_by_doc(job), model.expected(TEXTS)
    assert np.allclose(got["doc1"], want[4], atol=1e-6)  # the staged ids, not the text's
    assert np.allclose([got[f"doc{i + 1}"] for i in range(1, 20)], want[1:], atol=1e-6)


@pytest.mark.parametrize("bad", ["count", "vocab"])
def test_inconsistent_staged_ids_are_ignored(tmp_path: Path, bad: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model = FakeModel()
    ids = model.tokenizer.encode(TEXTS[4]).ids
    ids = ids + [5] if bad == "count" else [ids[0], 10_000, *ids[2:]]
    job = staged_job(tmp_path / "out", [TEXTS], ids={TEXTS[0]: ids})
    assert embed_shard(context(job, model)).status == "done"
    assert np.allclose(vectors_by_doc(job)["doc1"], model.expected(TEXTS)[0], atol=1e-6)
    assert "staged token ids do not match the bundle" in caplog.text


def test_already_done_shard_returns_already_done_and_runs_nothing(job) -> None:
    assert embed_shard(context(job, FakeModel())).status == "done"
    before = job.embeddings_path(0).stat().st_mtime_ns
    model = FakeModel()
    res = embed_shard(context(job, model))
    assert res.status == "already done" and res.finalized
    assert model.calls == [] and len(job.attempts(0)) == 1  # no new attempt recorded
    assert job.embeddings_path(0).stat().st_mtime_ns == before


def test_cache_hits_skip_inference(job) -> None:
    model, cache = FakeModel(), DictCache()
    cache.preload(model, TEXTS[::2])  # the even positions are cached
    res = embed_shard(context(job, model, cache=cache))
    assert res.cache_hits == 10 and res.chunks == 20
    assert sorted(i for c in model.calls for i in c) == list(range(1, 20, 2))
    t = pq.read_table(job.embeddings_path(0))
    cached = dict(zip(t["doc_id"].to_pylist(), t["cached"].to_pylist()))
    assert [cached[f"doc{i + 1}"] for i in range(20)] == [i % 2 == 0 for i in range(20)]
    hits = pq.read_table(job.metrics_path(0)).to_pylist()[0]
    assert (hits["batch_index"], hits["chunks"], hits["cache_hits"]) == (-1, 10, 10)
    assert hits["inference_ms"] == 0
    assert len(cache.data) == 20  # the misses were stored


def test_a_shard_wholly_in_the_cache_runs_no_batch(job) -> None:
    model, cache = FakeModel(), DictCache()
    cache.preload(model, TEXTS)
    assert embed_shard(context(job, model, cache=cache)).cache_hits == 20
    assert model.calls == []
    rows = pq.read_table(job.metrics_path(0)).to_pylist()
    assert [(r["batch_index"], r["chunks"], r["cache_hits"]) for r in rows] == [(-1, 20, 20)]
    assert np.allclose([vectors_by_doc(job)[f"doc{i + 1}"] for i in range(20)],
                       model.expected(TEXTS))


def test_a_failing_batch_is_split_to_singles_and_only_the_bad_chunk_is_rejected(tmp_path) -> None:
    texts = [text(i) for i in range(8)]
    texts[5] = "bad alpha beta"
    job = staged_job(tmp_path / "out", [texts])
    model = FakeModel(fail_word="bad")
    res = embed_shard(context(job, model, max_batch_tokens=1000))
    assert res.status == "done" and res.rejected == 1 and res.chunks == 7
    # The whole batch, then halves: the good halves land, the bad ones split down to [5].
    assert model.calls == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    rejects = [json.loads(x) for x in job.rejects_path.read_text().splitlines()]
    assert [(r["doc_id"], r["line"]) for r in rejects] == [("doc6", 6)]
    assert rejects[0]["reason"].startswith("inference failed: ")
    assert "fake session cannot run this batch" in rejects[0]["reason"]
    got = vectors_by_doc(job)
    assert "doc6" not in got
    good = [i for i in range(8) if i != 5]
    assert np.allclose([got[f"doc{i + 1}"] for i in good], model.expected([texts[i] for i in good]))
    assert pq.read_metadata(job.embeddings_path(0)).num_rows == 7
    res2 = check_job(job.root)
    assert res2.clean and (res2.ok, res2.rejected) == (7, 1)


def test_metrics_add_up_to_the_shard(job) -> None:
    model, cache = FakeModel(), DictCache()
    cache.preload(model, TEXTS[:3])
    budget = 20
    embed_shard(context(job, model, cache=cache, max_batch_tokens=budget))
    rows = pq.read_table(job.metrics_path(0)).to_pylist()
    inputs = pq.read_table(job.input_path(0))
    assert sum(r["chunks"] for r in rows) == 20
    assert sum(r["real_tokens"] for r in rows) == sum(inputs["n_tokens"].to_pylist())
    assert sum(r["cache_hits"] for r in rows) == 3
    batches = [r for r in rows if r["batch_index"] >= 0]
    assert [r["batch_index"] for r in batches] == list(range(len(model.calls)))
    assert [r["chunks"] for r in batches] == [len(c) for c in model.calls]
    for r in batches:
        assert r["real_tokens"] <= r["padded_tokens"] <= max(budget, r["real_tokens"])
        assert r["total_ms"] == pytest.approx(r["tokenize_ms"] + r["inference_ms"], abs=2e-3)
    assert {(r["shard"], r["attempt"], r["queue"], r["provider"]) for r in rows} == {
        (0, 1, "cpu", "FakeExecutionProvider")}
    meta = pq.read_schema(job.embeddings_path(0)).metadata
    assert meta[b"embedfleet.rejected"] == b"0" and meta[b"embedfleet.dim"] == b"8"
    m = job.reload().result
    assert (m["chunks"], m["cache_hits"], m["embedded_chunks"]) == (20, 3, 20)


def test_plan_groups_puts_suspects_alone_and_first() -> None:
    ids = {p: [1] * n for p, n in [(0, 3), (2, 5), (4, 3), (7, 5), (9, 4)]}
    groups = plan_groups(ids, {7, 2}, budget=8)
    assert groups[:2] == [[2], [7]]
    rest = groups[2:]
    assert sorted(p for g in rest for p in g) == [0, 4, 9]
    assert all(max(len(ids[p]) for p in g) * len(g) <= 8 for g in rest)
