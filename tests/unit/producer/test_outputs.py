"""``--outputs`` (producer/outputs.py): names checked against the bundle, one clear message."""

from __future__ import annotations

import pytest

from producer.errors import UsageError
from producer.outputs import estimate_bytes, parse_dense, parse_outputs
from storage.bundle import OUTPUTS, BundleConfig, Pooling

DENSE = BundleConfig("minilm", Pooling.MEAN, True, 256, 384)
M3 = BundleConfig("bge-m3", Pooling.CLS, True, 8192, 1024, outputs=OUTPUTS, colbert_dim=1024)


@pytest.mark.parametrize(("value", "expected"), [
    ("dense", ("dense",)),
    (None, ("dense",)),
    ("colbert, sparse", ("dense", "sparse", "colbert")),  # canonical order, dense always
    ("SPARSE", ("dense", "sparse")),
    (["dense", "colbert"], ("dense", "colbert")),
])
def test_output_sets(value: object, expected: tuple[str, ...]) -> None:
    assert parse_outputs(value, M3, "/b") == expected  # type: ignore[arg-type]


def test_unknown_output_is_named() -> None:
    with pytest.raises(UsageError, match=r"--outputs multivec: unknown output; valid: dense, "
                                         r"sparse, colbert"):
        parse_outputs("dense,multivec", M3, "/b")


def test_output_the_bundle_cannot_produce_names_the_bundle() -> None:
    with pytest.raises(UsageError, match=r"--outputs sparse,colbert: the bundle /models/minilm "
                                         r"cannot produce it \(it has: dense\)"):
        parse_outputs("dense,sparse,colbert", DENSE, "/models/minilm")


def test_disk_estimate_is_dominated_by_colbert() -> None:
    est = estimate_bytes(("dense", "sparse", "colbert"), M3, chunks=100, tokens=51_200)
    assert est == {"dense": 100 * 4096, "sparse": 8 * 51_000, "colbert": 4096 * 51_100}
    assert estimate_bytes(("dense",), DENSE, chunks=10, tokens=1000) == {"dense": 15_360}


# -- --dim / --dtype (parse_dense) -------------------------------------------------------------
MATRYOSHKA = BundleConfig("nomic", Pooling.MEAN, True, 512, 768,
                          matryoshka={"dims": [768, 256, 64], "from": "README.md"})


def test_dim_refused_on_a_model_not_declared_matryoshka() -> None:
    with pytest.raises(UsageError, match=r"--dim 128: the bundle /b does not declare its model "
                                         r"Matryoshka-trained.*--force-dim"):
        parse_dense(128, "float32", False, DENSE, "/b")
    assert parse_dense(128, "int8", True, DENSE, "/b") == {
        "dim": 128, "dtype": "int8", "full_dim": 384, "dim_allowed": "forced"}


def test_dim_on_a_matryoshka_bundle_and_plain_dtypes() -> None:
    assert parse_dense(256, "binary", False, MATRYOSHKA, "/b") == {
        "dim": 256, "dtype": "binary", "full_dim": 768, "dim_allowed": "matryoshka"}
    assert parse_dense(None, "float32", False, DENSE, "/b") is None  # manifest as before
    assert parse_dense(384, None, False, DENSE, "/b") is None  # the full dim is no --dim
    assert parse_dense(None, "float16", False, DENSE, "/b") == {
        "dim": None, "dtype": "float16", "full_dim": 384}
    with pytest.raises(UsageError, match="between 1 and the model's 768"):
        parse_dense(1024, "float32", False, MATRYOSHKA, "/b")
    with pytest.raises(UsageError, match="--dtype int4: unknown"):
        parse_dense(None, "int4", False, DENSE, "/b")


def test_estimate_uses_the_stored_size() -> None:
    assert estimate_bytes(["dense"], DENSE, 10, 100, {"dim": None, "dtype": "float16"}) == {
        "dense": 10 * 384 * 2}
    assert estimate_bytes(["dense"], MATRYOSHKA, 10, 100, {"dim": 256, "dtype": "binary"}) == {
        "dense": 10 * 32}
