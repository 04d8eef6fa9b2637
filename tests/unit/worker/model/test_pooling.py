"""worker/model/pooling.py: mean / cls / last over masked token states, L2 normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from worker.model.pooling import POOLERS, cls_pool, l2_normalize, last_pool, mean_pool, pool

# Two rows, four token positions, dim 2; row 1 has two real tokens then padding.
HIDDEN = np.array([
    [[1, 0], [3, 0], [5, 2], [7, 4]],
    [[2, 2], [4, 6], [99, 99], [-99, 99]],
], dtype=np.float32)
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=np.int64)


def test_mean_pool_ignores_padding() -> None:
    assert np.allclose(mean_pool(HIDDEN, MASK), [[4, 1.5], [3, 4]])


def test_mean_pool_of_an_all_padding_row_is_zero_not_nan() -> None:
    out = mean_pool(HIDDEN[:1], np.zeros((1, 4), dtype=np.int64))
    assert np.isfinite(out).all() and np.allclose(out, 0)


def test_cls_pool_takes_the_first_token() -> None:
    assert np.allclose(cls_pool(HIDDEN, MASK), [[1, 0], [2, 2]])


def test_last_pool_takes_the_last_real_token_not_the_padding() -> None:
    assert np.allclose(last_pool(HIDDEN, MASK), [[7, 4], [4, 6]])


def test_l2_normalize_gives_unit_rows_and_keeps_zero_rows_zero() -> None:
    x = np.array([[3, 4], [0, 0], [1e-3, 0]], dtype=np.float32)
    out = l2_normalize(x)
    assert np.allclose(out, [[0.6, 0.8], [0, 0], [1, 0]])
    assert np.isfinite(out).all()


@pytest.mark.parametrize("mode", sorted(POOLERS))
def test_pool_normalises_on_request_and_returns_float32(mode: str) -> None:
    raw = POOLERS[mode](HIDDEN, MASK)
    out = pool(mode, HIDDEN.astype(np.float16), MASK, normalize=True)
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    assert np.allclose(out, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-3)
    assert np.allclose(pool(mode, HIDDEN, MASK, normalize=False), raw)


def test_unknown_pooling_mode_is_an_error() -> None:
    with pytest.raises(KeyError):
        pool("max", HIDDEN, MASK, normalize=True)
