"""Loading a bundle into an ONNX Runtime session and running it (worker/model/session.py),
on the real all-MiniLM-L6-v2 bundle; provider choice itself: test_providers.py here; CUDA
needs a GPU: tests/integration/test_cpu_providers.py and the gpu marker."""

from __future__ import annotations

import numpy as np
import pytest

from storage.bundle import load_bundle
from storage.errors import BundleError
from worker.model.session import cpu_flags, load_model, pad_token_id


def test_cpu_ep_fp32_gives_unit_vectors_and_the_cpu_ep_fingerprint(minilm_bundle) -> None:
    model = load_model(minilm_bundle, device="cpu", precision="fp32", cpu_provider="cpu")
    assert (model.provider, model.precision, model.fallback) == ("CPUExecutionProvider",
                                                                  "fp32", False)
    assert model.fingerprint == load_bundle(minilm_bundle).fingerprint("fp32")
    vecs = model.embed(["a short text", "another, somewhat longer text about embeddings"])
    assert vecs.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert float(vecs[0] @ vecs[1]) < 0.99  # two texts, two vectors
    assert pad_token_id(model.tokenizer) == 0  # [PAD] of the WordPiece vocabulary


def test_a_missing_variant_names_the_bundle(minilm_bundle, tmp_path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(minilm_bundle, b)
    for f in b.glob("model.*.onnx"):
        f.unlink()
    with pytest.raises(BundleError, match="bundle has no fp16 variant"):
        load_model(b, device="cpu", precision="fp16", cpu_provider="cpu")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 amx_bf16\n\nprocessor : 1\nflags : x\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "amx_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_padding_batches_to_a_length_multiple_changes_no_vector(minilm_bundle, m3_bundle) -> None:
    """``EMBED_PAD_MULTIPLE`` pads with masked-out tokens: the vectors (and BGE-M3's sparse and
    ColBERT rows, one per real token) are those of the exact-length batch (CPU EP fp32)."""
    texts = ["a short text", "another, somewhat longer text about embeddings " * 3, "x"]
    plain = load_model(minilm_bundle, device="cpu", precision="fp32", cpu_provider="cpu")
    padded = load_model(minilm_bundle, device="cpu", precision="fp32", cpu_provider="cpu",
                        pad_to=16)
    assert (plain.pad_multiple, padded.pad_multiple) == (1, 16)
    np.testing.assert_allclose(padded.embed(texts), plain.embed(texts), atol=2e-6)
    m3 = [load_model(m3_bundle, device="cpu", precision="fp32", cpu_provider="cpu", pad_to=k)
          for k in (0, 32)]
    got = [m.encode(texts, ["dense", "sparse", "colbert"]) for m in m3]
    np.testing.assert_allclose(got[1]["dense"], got[0]["dense"], atol=2e-6)
    for a, b in zip(got[0]["colbert"], got[1]["colbert"], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=2e-5)
    for (ia, wa), (ib, wb) in zip(got[0]["sparse"], got[1]["sparse"], strict=True):
        assert list(ia) == list(ib)
        np.testing.assert_allclose(wa, wb, atol=2e-5)
