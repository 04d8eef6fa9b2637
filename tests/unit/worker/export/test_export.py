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


# --- variants that fail, full disks, killed exports (worker/export/__init__.py) -------------


def variant_root(root: Path) -> Path:
    root.mkdir()
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8.onnx.data"):
        (root / name).write_bytes(b"x")
    return root


def test_a_variant_that_fails_to_convert_is_one_line_and_removed(tmp_path, monkeypatch) -> None:
    from google.protobuf.message import EncodeError

    import worker.export as ex

    def too_big(src: Path, dst: Path) -> None:
        raise EncodeError("Failed to serialize proto\n(a second line that must not show)")

    monkeypatch.setattr(ex, "convert_fp16", too_big)
    root, lines = variant_root(tmp_path / "b"), []
    res = ex._variant(root, "fp16", lines.append, lambda r, p: {"passed": True})
    assert res == {"passed": False,
                   "reason": "conversion failed: EncodeError: Failed to serialize proto"}
    assert lines == ["converting fp16 ...", "fp16: FAILED (conversion failed: EncodeError: "
                     "Failed to serialize proto); NOT written to the bundle"]
    assert sorted(p.name for p in root.iterdir()) == [
        "model.int8.onnx", "model.int8.onnx.data", "model.onnx"]


def test_a_variant_that_fails_the_gate_goes_with_its_external_data(tmp_path, monkeypatch) -> None:
    import worker.export as ex

    monkeypatch.setattr(ex, "int8_until_gate", lambda root, log, gate: {
        "passed": False, "reason": "mean 0.9, min 0.8; needs mean >= 0.99 and min >= 0.97"})
    root, lines = variant_root(tmp_path / "b"), []
    assert ex._variant(root, "int8", lines.append, lambda r, p: {})["passed"] is False
    assert lines == ["int8: FAILED the quality gate (mean 0.9, min 0.8; needs mean >= 0.99 and "
                     "min >= 0.97); NOT written to the bundle"]
    assert sorted(p.name for p in root.iterdir()) == ["model.fp16.onnx", "model.onnx"]


def test_a_full_disk_is_not_a_variant_failure(tmp_path, monkeypatch) -> None:
    import errno

    import worker.export as ex

    def full(src: Path, dst: Path) -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        except OSError as exc:
            raise RuntimeError("onnx save failed") from exc

    monkeypatch.setattr(ex, "convert_fp16", full)
    with pytest.raises(RuntimeError):
        ex._variant(variant_root(tmp_path / "b"), "fp16", lambda s: None, lambda r, p: {})


@pytest.mark.parametrize(("exc", "full"), [
    (OSError(28, "No space left on device"), True),
    (OSError(122, "Disk quota exceeded"), True),
    (RuntimeError("write failed: No space left on device"), True),  # from C++ code
    (OSError(13, "Permission denied"), False),
    (ValueError("Failed to serialize proto"), False),
])
def test_no_space_reads_the_error_and_its_causes(exc: BaseException, full: bool) -> None:
    from worker.export import no_space

    assert no_space(exc) is full
    try:
        raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert no_space(wrapped) is full


def test_a_killed_exports_temp_dir_is_removed_by_the_next(tmp_path: Path, monkeypatch) -> None:
    import os

    import worker.export as ex
    from storage.atomic import tmp_name

    def no_tokenizer(src: Path, dst: Path) -> None:
        raise BundleError(f"{src}: no tokenizer")

    monkeypatch.setattr(ex, "copy_tokenizer", no_tokenizer)
    alive = tmp_name(tmp_path / "b")  # this process: an export still running
    dead = alive.with_name(alive.name.replace(f".{os.getpid()}.", ".999999999."))
    for d in (alive, dead):
        d.mkdir()
        (d / "model.onnx.data").write_bytes(b"GBs")
    with pytest.raises(BundleError, match="tokenizer"):  # fails after making its own temp dir
        export_bundle(model_dir(tmp_path / "m"), tmp_path / "b", precisions="fp32",
                      pooling="cls", log=lambda s: None)
    assert not dead.exists() and (alive / "model.onnx.data").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", alive.name])


def test_the_gates_of_one_export_embed_the_fp32_reference_once() -> None:
    import worker.export as ex

    calls: list[str] = []
    embed = ex._fp32_once(lambda root, prec, texts: calls.append(prec) or len(texts))
    for prec in ("fp16", "int8", "int8"):  # fp16, then two int8 recipes
        assert embed(Path("b"), "fp32", ["a", "b"]) == 2
        assert embed(Path("b"), prec, ["a", "b"]) == 2
    assert embed(Path("b"), "fp32", ["other"]) == 1
    assert calls == ["fp32", "fp16", "int8", "int8", "fp32"]
