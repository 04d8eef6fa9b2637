"""producer/tools/evalcompact.py: each compact form's figures equal a direct NumPy computation
(Hamming distances on packed bits, sentence-transformers' int8 buckets, rescoring by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from producer.errors import UsageError
from producer.tools import evalmetrics as em
from producer.tools.evalcompact import combinations, scoring_vectors
from producer.tools.evaluate import EvalRow
from producer.tools.evalcompact import compact_rows
from storage.quantize import truncate

FULL = 48


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, FULL)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _trunc(v: np.ndarray, dim: int) -> np.ndarray:
    t = v[:, :dim].astype(np.float64)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances of packed bit rows."""
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=-1).sum(axis=-1)


def test_binary_triplet_accuracy_is_the_hamming_comparison() -> None:
    q, p, n = _unit(60, 1), _unit(60, 2), _unit(60, 3)
    p = q + 0.9 * p  # positives nearer on average, not always
    vecs = np.concatenate([q, p, n])
    s = scoring_vectors(vecs, 24, "binary")
    got = em.triplet_accuracy(s[:60], s[60:120], s[120:])
    bits = [np.packbits(_trunc(x, 24) > 0, axis=1) for x in (q, p, n)]
    dp = np.array([_hamming(bits[0][i:i + 1], bits[1][i:i + 1])[0, 0] for i in range(60)])
    dn = np.array([_hamming(bits[0][i:i + 1], bits[2][i:i + 1])[0, 0] for i in range(60)])
    assert got == float(np.mean(dp < dn))
    assert 0.5 < got < 1.0


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_int8_scores_with_sentence_transformers_buckets(dtype: str) -> None:
    vecs = _unit(200, 4)
    s = scoring_vectors(vecs, 32, dtype)
    t = truncate(vecs, 32)  # float32, as a job truncates (its own test: test_quantize.py)
    q = quantize_embeddings(t, dtype, calibration_embeddings=t).astype(np.float64)
    q += 128 if dtype == "int8" else 0
    lo, hi = t.min(axis=0).astype(np.float64), t.max(axis=0).astype(np.float64)
    want = lo + (q + 0.5) * (hi - lo) / 255
    np.testing.assert_allclose(s, want, rtol=1e-12, atol=1e-12)
    assert np.abs(s - t).max() <= (hi - lo).max() / 255  # within one bucket of the floats


def test_float16_and_float32_at_a_dim() -> None:
    vecs = _unit(5, 5)
    np.testing.assert_array_equal(scoring_vectors(vecs, 16, "float16"),
                                  _trunc(vecs, 16).astype(np.float32).astype(np.float16))
    np.testing.assert_allclose(scoring_vectors(vecs, 16, "float32"), _trunc(vecs, 16),
                               rtol=1e-6)


def test_binary_retrieval_and_rescoring_equal_a_loop() -> None:
    docs = _unit(80, 7)
    queries = (docs[:20] + 0.8 * _unit(20, 8)).astype(np.float32)
    doc_ids = [f"d{i:02d}" for i in range(80)]
    relevant = [{doc_ids[i]} for i in range(20)]
    chunk_doc = list(range(80))  # one chunk per document
    dim, k = 32, 12
    coarse = scoring_vectors(np.concatenate([queries, docs]), dim, "binary")
    fine = _trunc(np.concatenate([queries, docs]), dim)
    got = em.rescored_retrieval(coarse[:20], coarse[20:], fine[:20], fine[20:], k, chunk_doc,
                                doc_ids, relevant)
    qb, db = (np.packbits(_trunc(x, dim) > 0, axis=1) for x in (queries, docs))
    ham = _hamming(qb, db)
    found = []
    for i in range(20):
        cand = np.argsort(ham[i], kind="stable")[:k]  # ties: lower chunk first
        cos = fine[20:][cand] @ fine[i]
        found.append([doc_ids[j] for j in cand[np.lexsort((cand, -cos))]][:10])
    assert got == em.ranking_metrics(found, relevant)
    plain = em.retrieval_metrics(coarse[:20], coarse[20:], chunk_doc, doc_ids, relevant)
    ranked = [[doc_ids[j] for j in np.lexsort((np.arange(80), ham[i]))][:10] for i in range(20)]
    assert plain == em.ranking_metrics(ranked, relevant)


def test_rows_carry_bytes_and_a_rescored_row() -> None:
    row = EvalRow("fp32", "cpu", tokens_per_s=100.0)
    rows = compact_rows(row, _unit(10, 9), [(24, "binary"), (48, "float16")],
                        lambda v: {"m": float(v.sum())}, lambda c, f: {"m": 1.0})
    assert [(r.dim, r.dtype, r.bytes_per_vector, r.tokens_per_s) for r in rows] == [
        (24, "binary", 3, 100.0), (24, "binary+rescore", 3, 100.0), (48, "float16", 96, 100.0)]


def test_combinations() -> None:
    assert combinations([], ["int8", "binary"], 384) == [(384, "int8"), (384, "binary")]
    assert combinations([128, 384], [], 384) == [(128, "float32")]
    assert combinations([128], ["float32", "binary"], 384) == [(128, "float32"),
                                                               (128, "binary")]
    with pytest.raises(UsageError, match="--dim 512: must be between 1 and the model's 384"):
        combinations([512], [], 384)
    with pytest.raises(UsageError, match="--dtype int4: unknown"):
        combinations([], ["int4"], 384)
