"""``--outputs`` (producer/outputs.py): names checked against the bundle, one clear message."""

from __future__ import annotations

import pytest

from producer.errors import UsageError
from producer.outputs import estimate_bytes, parse_outputs
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
