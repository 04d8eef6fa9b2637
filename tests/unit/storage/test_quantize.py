"""storage/quantize.py against sentence-transformers' ``quantize_embeddings`` (the reference)
and storage/calibration.py's write-once claim."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import quantize_embeddings

from storage import calibration
from storage.readers import quantize_queries
from storage.quantize import (BITS, DTYPES, Calibration, bytes_per_vector, calibrate,
                              calibration_sample, to_stored, from_packed, packed_bits, quantize,
                              truncate)


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_ranged_values_equal_sentence_transformers(precision: str) -> None:
    cal, x = _unit(300, 64, 1), _unit(50, 64, 2)  # x has values outside cal's ranges: clipped
    want = quantize_embeddings(x, precision=precision, calibration_embeddings=cal)
    got = quantize(x, precision, calibrate(cal).ranges)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert {int(got.min()), int(got.max())} == ({-128, 127} if precision == "int8" else {0, 255})


def test_ranges_survive_their_json_form() -> None:
    cal, x = _unit(200, 32, 3), _unit(20, 32, 4)
    again = Calibration.from_dict(calibrate(cal, shard=7).to_dict())
    assert again.sample_size == 200 and again.shard == 7
    np.testing.assert_array_equal(quantize(x, "int8", again.ranges),
                                  quantize_embeddings(x, "int8", calibration_embeddings=cal))


def test_constant_dimension_uses_step_one_as_reference() -> None:
    cal = _unit(10, 8, 5)
    cal[:, 3] = 0.25
    x = _unit(4, 8, 6)
    np.testing.assert_array_equal(quantize(x, "uint8", calibrate(cal).ranges),
                                  quantize_embeddings(x, "uint8", calibration_embeddings=cal))


@pytest.mark.parametrize("precision", BITS)
@pytest.mark.parametrize("dim", [64, 20])  # 20: the last byte is padded with zero bits
def test_bits_equal_sentence_transformers(precision: str, dim: int) -> None:
    x = _unit(40, dim, 7)
    x[0, :3] = 0.0  # exactly zero is not > 0
    want = quantize_embeddings(x, precision=precision)
    got = quantize(x, precision)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(packed_bits(got, precision), np.packbits(x > 0, axis=-1))
    np.testing.assert_array_equal(from_packed(packed_bits(got, precision), precision), got)


def test_float_casts_and_sizes() -> None:
    x = _unit(5, 16, 8)
    assert quantize(x, "float16").dtype == np.float16
    np.testing.assert_array_equal(quantize(x, "float32"), x)
    assert [bytes_per_vector(d, 1024) for d in DTYPES] == [4096, 2048, 1024, 1024, 128, 128]


def test_truncate_keeps_the_prefix_and_renormalises() -> None:
    x = _unit(6, 32, 9)
    t = truncate(x, 8)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t * np.linalg.norm(x[:, :8], axis=1, keepdims=True), x[:, :8],
                               rtol=1e-5)
    assert truncate(x, None) is not None and truncate(x, 32).shape == (6, 32)
    with pytest.raises(ValueError, match="between 1 and 32"):
        truncate(x, 40)


def test_int8_without_ranges_refused() -> None:
    with pytest.raises(ValueError, match="calibration ranges"):
        quantize(_unit(3, 4, 1), "int8")
    with pytest.raises(ValueError, match="at least 2"):
        calibrate(_unit(1, 4, 1))
    with pytest.raises(ValueError, match="unknown"):
        quantize(_unit(3, 4, 1), "int4")


def test_sample_is_capped_and_spread() -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    s = calibration_sample(x, 10)
    assert len(s) == 10 and s[0, 0] == 0 and s[-1, 0] == 99


def test_first_claim_wins(tmp_path) -> None:
    a, b = calibrate(_unit(20, 8, 1), shard=3), calibrate(_unit(20, 8, 2), shard=5)
    assert calibration.claim(tmp_path, a) is a
    got = calibration.claim(tmp_path, b)  # the loser quantizes with the winner's ranges
    assert got.shard == 3
    np.testing.assert_array_equal(got.ranges, a.ranges)
    assert calibration.read(tmp_path)["sample_size"] == 20
    assert [p.name for p in (tmp_path / "_state").iterdir()] == ["calibration.json"]


def test_queries_quantized_with_the_jobs_ranges() -> None:
    from storage.manifest import Manifest

    docs, queries = _unit(100, 32, 1), _unit(5, 32, 2)
    cal = calibrate(truncate(docs, 16))
    m = Manifest(model={"dim": 32}, dense={"dim": 16, "dtype": "int8", "full_dim": 32},
                 calibration=cal.to_dict())
    want = quantize_embeddings(truncate(queries, 16), "int8",
                               calibration_embeddings=truncate(docs, 16))
    np.testing.assert_array_equal(quantize_queries(m, queries), want)
    np.testing.assert_array_equal(to_stored(queries, 16, "int8", cal), want)
    with pytest.raises(ValueError, match="no int8/uint8 calibration"):
        quantize_queries(Manifest(dense={"dtype": "uint8"}), queries)
