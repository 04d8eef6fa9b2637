"""``producer eval``'s metrics: plain arrays in, plain floats out (pure NumPy).

Not a stage of the job flow. Each function computes what sentence-transformers' evaluator of
the same name computes, so a figure here can be compared with a training log's:

- ``triplet_accuracy``: share of triplets with cos(q, p) > cos(q, n), strictly (TripletEvaluator,
  margin 0; seed 003's ``evaluate.py``).
- ``pair_correlations``: Pearson and Spearman of cosine vs gold score
  (EmbeddingSimilarityEvaluator; Spearman ranks ties by their average, as scipy does).
- ``retrieval_metrics``: recall@k, MRR@10, nDCG@10 with binary relevance
  (InformationRetrievalEvaluator): hits ordered by descending score, ties by ascending corpus
  id. A document cut into several chunks scores by its best chunk (max-sim): a long document is
  relevant where any of its windows answers the query.

Cosines are taken in float64 on the float32 vectors (``worker.model.pooling.cosine_rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from worker.model.pooling import cosine_rows

Array = npt.NDArray[np.floating]
RECALL_AT = (1, 3, 5, 10)
MRR_AT = 10
NDCG_AT = 10
QUERY_BLOCK = 256
"""Queries scored against the whole corpus at a time (bounds the score matrix)."""


def cosines(a: Array, b: Array) -> npt.NDArray[np.float64]:
    """Cosine of row i of ``a`` with row i of ``b``, in float64 (``pooling.cosine_rows``).

    >>> cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [-1.0, -1.0]]))
    array([ 1., -1.])
    """
    return cosine_rows(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def triplet_accuracy(query: Array, positive: Array, negative: Array) -> float:
    """Share of rows where the positive is strictly closer (cosine) to the query.

    >>> q = np.array([[1.0, 0.0], [1.0, 0.0]])
    >>> triplet_accuracy(q, np.array([[1.0, 0.1], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]]))
    0.5
    """
    return float(np.mean(cosines(query, positive) > cosines(query, negative)))


def pair_correlations(a: Array, b: Array, scores: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation of cos(a_i, b_i) with the gold ``scores``.

    >>> v = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    >>> round(pair_correlations(v, np.array([[1.0, 0.0]] * 3), [3, 2, 1])["spearman"], 12)
    1.0
    """
    cos = cosines(a, b)
    gold = np.asarray(scores, dtype=np.float64)
    return {"pearson": pearson(gold, cos), "spearman": pearson(average_ranks(gold),
                                                               average_ranks(cos))}


def pearson(x: Array, y: Array) -> float:
    """Pearson's r (nan when either side is constant)."""
    xm = np.asarray(x, dtype=np.float64) - np.mean(x, dtype=np.float64)
    ym = np.asarray(y, dtype=np.float64) - np.mean(y, dtype=np.float64)
    den = float(np.linalg.norm(xm) * np.linalg.norm(ym))
    return float(np.clip(np.dot(xm, ym) / den, -1.0, 1.0)) if den > 0 else float("nan")


def average_ranks(x: Array) -> npt.NDArray[np.float64]:
    """1-based ranks, ties sharing their average rank (scipy's ``rankdata``).

    >>> average_ranks(np.array([10.0, 20.0, 10.0]))
    array([1.5, 3. , 1.5])
    """
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    starts = np.flatnonzero(np.r_[True, sx[1:] != sx[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def retrieval_metrics(
    queries: Array, chunks: Array, chunk_doc: Sequence[int], doc_ids: Sequence[str],
    relevant: Sequence[set[str]], recall_at: Sequence[int] = RECALL_AT,
) -> dict[str, float]:
    """recall@k, MRR@10 and nDCG@10 over queries; a document scores by its best chunk.

    Args:
        queries: One vector per query.
        chunks: One vector per corpus chunk, grouped by document in ``doc_ids`` order.
        chunk_doc: For each chunk, the index of its document in ``doc_ids`` (non-decreasing).
        doc_ids: Corpus ids; ties in score are broken by ascending id.
        relevant: For each query, the ids of its relevant documents (non-empty).

    >>> q = np.array([[1.0, 0.0]])
    >>> c = np.array([[0.0, 1.0], [1.0, 0.1], [0.6, 0.8]])
    >>> m = retrieval_metrics(q, c, [0, 0, 1], ["a", "b"], [{"a"}])
    >>> m["mrr@10"], m["recall@1"]  # "a" ranks first by its second chunk
    (1.0, 1.0)
    """
    c = _unit(chunks)
    return ranked_retrieval(lambda lo, hi: _unit(queries[lo:hi]) @ c.T, len(queries),
                            chunk_doc, doc_ids, relevant, recall_at)


def rescored_retrieval(coarse_q: Array, coarse_c: Array, queries: Array, chunks: Array,
                       candidates: int, chunk_doc: Sequence[int], doc_ids: Sequence[str],
                       relevant: Sequence[set[str]], recall_at: Sequence[int] = RECALL_AT
                       ) -> dict[str, float]:
    """Retrieve the ``candidates`` best chunks by cosine of the coarse vectors (binary: the
    +-1 sign vectors, i.e. by Hamming distance; ties by chunk order), then rank those
    candidates only, by cosine of the full-precision vectors (rescoring)."""
    cq, cc, fc = _unit(coarse_q), _unit(coarse_c), _unit(chunks)
    k = min(candidates, len(fc))

    def sims(lo: int, hi: int) -> npt.NDArray[np.float64]:
        coarse = cq[lo:hi] @ cc.T
        top = np.argsort(-coarse, axis=1, kind="stable")[:, :k]
        fine = np.full(coarse.shape, -np.inf)
        rows = np.arange(len(top))[:, None]
        fine[rows, top] = np.einsum("qd,qkd->qk", _unit(queries[lo:hi]), fc[top])
        return fine

    return ranked_retrieval(sims, len(coarse_q), chunk_doc, doc_ids, relevant, recall_at)


def ranked_retrieval(sims_of: Callable[[int, int], npt.NDArray[np.float64]], n_queries: int,
                     chunk_doc: Sequence[int], doc_ids: Sequence[str],
                     relevant: Sequence[set[str]], recall_at: Sequence[int] = RECALL_AT
                     ) -> dict[str, float]:
    """``retrieval_metrics`` from a chunk-similarity function of a block of queries."""
    starts = np.flatnonzero(np.r_[True, np.diff(np.asarray(chunk_doc)) != 0])
    tie_rank = np.empty(len(doc_ids), dtype=np.int64)
    tie_rank[sorted(range(len(doc_ids)), key=doc_ids.__getitem__)] = np.arange(len(doc_ids))
    cut = max(*recall_at, MRR_AT, NDCG_AT)
    found: list[list[str]] = []
    for lo in range(0, n_queries, QUERY_BLOCK):
        sims = sims_of(lo, lo + QUERY_BLOCK)
        doc_sims = np.maximum.reduceat(sims, starts, axis=1)  # max-sim: best chunk per document
        for row in doc_sims:
            order = np.lexsort((tie_rank, -row))[:cut]
            found.append([doc_ids[i] for i in order])
    return ranking_metrics(found, relevant, recall_at)


def ranking_metrics(found: Sequence[Sequence[str]], relevant: Sequence[set[str]],
                    recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """The metrics of ranked id lists against relevant sets (InformationRetrievalEvaluator's).

    >>> ranking_metrics([["x", "a"]], [{"a"}])["ndcg@10"]
    0.6309297535714575
    """
    out: dict[str, list[float]] = {f"recall@{k}": [] for k in recall_at}
    out[f"mrr@{MRR_AT}"], out[f"ndcg@{NDCG_AT}"] = [], []
    for hits, rel in zip(found, relevant, strict=True):
        gains = [1.0 if h in rel else 0.0 for h in hits]
        for k in recall_at:
            out[f"recall@{k}"].append(sum(gains[:k]) / len(rel))
        first = next((i for i, g in enumerate(gains[:MRR_AT]) if g), None)
        out[f"mrr@{MRR_AT}"].append(0.0 if first is None else 1.0 / (first + 1))
        ideal = _dcg([1.0] * len(rel), NDCG_AT)
        out[f"ndcg@{NDCG_AT}"].append(_dcg(gains, NDCG_AT) / ideal)
    return {k: float(np.mean(v)) for k, v in out.items()}


def primary_metric(task: str) -> str:
    """The figure a task is judged (and gated) by."""
    return {"triplets": "accuracy", "pairs": "spearman", "retrieval": f"ndcg@{NDCG_AT}"}[task]


def metric_deltas(metrics: Mapping[str, float], reference: Mapping[str, float]
                  ) -> dict[str, float]:
    """``metrics - reference`` for every figure both have."""
    return {k: float(v) - float(reference[k]) for k, v in metrics.items() if k in reference}


def _dcg(gains: Sequence[float], k: int) -> float:
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(gains[:k])))


def _unit(x: Array) -> npt.NDArray[np.float64]:
    """Rows at unit length; sign vectors (every entry +-1, a binary output's bits) as they
    are: their norms are all sqrt(dim), so dot products rank as cosines do, and they are exact
    integers (``dim - 2 * Hamming``), so equal Hamming distances stay ties (broken by id)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size and np.all(np.abs(x) == 1.0):
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
