"""Eval metrics on hand-made vectors: against scipy and hand counts, ties, and max-sim."""

from __future__ import annotations

import numpy as np
import pytest

from producer.tools import evalmetrics as em


def test_triplet_accuracy_is_strict() -> None:
    q = np.array([[1.0, 0.0]] * 3)
    pos = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    neg = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])  # last row: a tie is not a hit
    assert em.triplet_accuracy(q, pos, neg) == pytest.approx(1 / 3)


def test_correlations_match_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    gold = rng.integers(0, 5, size=50).astype(float)  # many ties: average ranks matter
    got = em.pair_correlations(a, b, gold)
    cos = em.cosines(a, b)
    assert got["pearson"] == pytest.approx(stats.pearsonr(gold, cos)[0], abs=1e-12)
    assert got["spearman"] == pytest.approx(stats.spearmanr(gold, cos)[0], abs=1e-12)
    assert np.array_equal(em.average_ranks(gold), stats.rankdata(gold))


def test_constant_scores_give_nan_not_a_crash() -> None:
    assert np.isnan(em.pearson(np.ones(4), np.arange(4.0)))


def test_ranking_metrics_by_hand() -> None:
    found = [["a", "b", "c"], ["x", "y", "z"], ["n", "m"]]
    relevant = [{"a", "c"}, {"z"}, {"q"}]
    m = em.ranking_metrics(found, relevant, recall_at=(1, 3))
    assert m["recall@1"] == pytest.approx((0.5 + 0 + 0) / 3)
    assert m["recall@3"] == pytest.approx((1.0 + 1.0 + 0) / 3)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3)
    ndcg0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg0 + (1 / np.log2(4)) + 0) / 3)


def test_score_ties_go_to_the_smaller_corpus_id() -> None:
    q = np.array([[1.0, 0.0]])
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert em.retrieval_metrics(q, same, [0, 1], ["b", "a"], [{"a"}])["recall@1"] == 1.0
    assert em.retrieval_metrics(q, same, [0, 1], ["b", "a"], [{"b"}])["recall@1"] == 0.0


def test_a_document_scores_by_its_best_chunk() -> None:
    q = np.array([[1.0, 0.0]])
    chunks = np.array([[0.0, 1.0], [0.0, 1.0], [0.99, 0.1], [0.9, 0.4]])
    # doc "long": three chunks, only the last one close; doc "short": one fairly close chunk
    m = em.retrieval_metrics(q, chunks, [0, 0, 0, 1], ["long", "short"], [{"long"}])
    assert m["mrr@10"] == 1.0
    mean = em.retrieval_metrics(q, chunks[[0, 3]], [0, 1], ["long", "short"], [{"long"}])
    assert mean["mrr@10"] == 0.5  # without the good chunk the long one ranks second


def test_deltas_and_primary_metric() -> None:
    assert em.metric_deltas({"a": 0.5, "b": 1.0}, {"a": 0.75}) == {"a": -0.25}
    assert [em.primary_metric(t) for t in ("triplets", "pairs", "retrieval")] == [
        "accuracy", "spearman", "ndcg@10"]
