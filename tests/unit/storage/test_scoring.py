"""M3 scores (storage/scoring.py) against the formulas written out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from storage.scoring import colbert_score, combined_score, dense_score, sparse_score


def test_sparse_score_sums_shared_ids_only() -> None:
    q = (np.array([1, 4, 9], np.int32), np.array([0.5, 0.25, 1.0], np.float32))
    p = (np.array([4, 9, 20], np.int32), np.array([2.0, 0.1, 7.0], np.float32))
    assert sparse_score(q, p) == pytest.approx(0.25 * 2.0 + 1.0 * 0.1)
    assert sparse_score(q, (np.zeros(0, np.int32), np.zeros(0, np.float32))) == 0.0


def test_colbert_max_sim_averages_over_query_vectors() -> None:
    rng = np.random.default_rng(0)
    q, p = rng.standard_normal((3, 8)), rng.standard_normal((5, 8))
    expect = np.mean([max(float(qi @ pj) for pj in p) for qi in q])
    assert colbert_score(q, p) == pytest.approx(expect)
    assert colbert_score(q, p) != pytest.approx(colbert_score(p, q))  # not symmetric


def test_dense_and_combined() -> None:
    assert dense_score(np.array([1.0, 0.0]), np.array([0.5, 0.5])) == 0.5
    assert combined_score(0.9, 0.3, 0.6) == pytest.approx(0.6)
    assert combined_score(1.0, 0.0, 0.0, (1, 0, 0)) == 1.0
    with pytest.raises(ValueError, match="positive"):
        combined_score(1, 1, 1, (0, 0, 0))
