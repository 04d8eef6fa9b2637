"""BGE-M3 per-text rules (worker/model/heads.py): padding and special tokens never leak."""

from __future__ import annotations

import numpy as np

from worker.model.heads import colbert_rows, output_nbytes, sparse_rows

SKIP = (0, 1, 2, 3)  # <s>, <pad>, </s>, <unk>


def padded_batch():  # type: ignore[no-untyped-def]
    ids = np.array([[0, 10, 11, 10, 3, 2], [0, 12, 2, 1, 1, 1]])
    mask = (np.arange(6)[None, :] < np.array([[6], [3]])).astype(np.int64)
    w = np.array([[0.9, 0.1, 0.0, 0.4, 0.8, 0.7],
                  [0.9, 0.3, 0.6, 5.0, 5.0, 5.0]], dtype=np.float32)[..., None]
    return ids, mask, w


def test_sparse_keeps_the_max_per_id_sorted_and_skips_specials() -> None:
    ids, mask, w = padded_batch()
    rows = sparse_rows(w, ids, mask, SKIP)
    assert rows[0][0].tolist() == [10] and rows[0][1].tolist() == [np.float32(0.4)]
    assert rows[0][0].dtype == np.int32 and rows[0][1].dtype == np.float32
    assert rows[1][0].tolist() == [12]  # pad positions carry weight 5.0: they must not count


def test_sparse_drops_zero_weights_and_can_be_empty() -> None:
    ids = np.array([[0, 9, 2]])
    rows = sparse_rows(np.zeros((1, 3, 1), np.float32), ids, np.ones_like(ids), SKIP)
    assert rows[0][0].size == 0 and rows[0][1].size == 0


def test_sparse_ids_come_out_sorted() -> None:
    ids = np.array([[0, 50, 7, 30, 7, 2]])
    w = np.array([[[0.0], [0.1], [0.2], [0.3], [0.5], [0.0]]], np.float32)
    got_ids, got_w = sparse_rows(w, ids, np.ones_like(ids), SKIP)[0]
    assert got_ids.tolist() == [7, 30, 50]
    np.testing.assert_allclose(got_w, [0.5, 0.3, 0.1])


def test_colbert_drops_cls_keeps_eos_and_cuts_padding() -> None:
    _, mask, _ = padded_batch()
    vecs = np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32)
    rows = colbert_rows(vecs, mask)
    assert [r.shape for r in rows] == [(5, 4), (2, 4)]  # n_tokens - 1 each
    np.testing.assert_allclose(np.linalg.norm(rows[1], axis=1), 1.0, rtol=1e-6)
    expect = vecs[1, 1:3] / np.linalg.norm(vecs[1, 1:3], axis=1, keepdims=True)
    np.testing.assert_allclose(rows[1], expect, rtol=1e-6)


def test_output_bytes_count_every_output() -> None:
    assert output_nbytes(384) == 1536
    sparse = (np.zeros(10, np.int32), np.zeros(10, np.float32))
    assert output_nbytes(1024, sparse, np.zeros((99, 1024))) == 4096 + 80 + 99 * 4096
