"""export_bundle's checks before any weights load (worker/export/__init__.py).

A bad precision or a target directory that is not a bundle is refused before torch is
imported, and nothing is created or deleted on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.errors import BundleError
from worker.export import export_bundle


def model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8,
                                                  "max_position_embeddings": 64}))
    return root


def test_unknown_precision_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"unknown precision \['bf16'\]"):
        export_bundle(model_dir(tmp_path / "m"), tmp_path / "out", precisions=("fp32", "bf16"))
    assert not (tmp_path / "out").exists()


def test_a_directory_that_is_not_a_bundle_is_not_overwritten(tmp_path: Path) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        export_bundle(model_dir(tmp_path / "m"), other, precisions="fp32", pooling="cls")
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "notes"]  # no temp dir left
