"""BGE-M3 in one pass: a tiny random BGE-M3 through ``producer export`` and a real worker,
against FlagEmbedding's formulas written out in torch on the same texts.

The reference (``FlagEmbedding/inference/embedder/encoder_only/m3.py``, reimplemented here, not
installed) runs each text alone, so it has no padding at all; the job runs short texts and
texts near 8,192 tokens in the same padded batches, so padding leaking into sparse or ColBERT
outputs would show as extra ids, wrong weights or extra vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from producer.job import submit
from storage.bundle import load_bundle
from storage.readers import iter_colbert, read_matrix, read_sparse
from tests.conftest import write_jsonl
from tests.model_fixtures import XLMR_DIM, XLMR_WINDOW, make_tiny_m3
from worker.errors import BundleError
from worker.export.samples import SAMPLE_TEXTS

pytestmark = pytest.mark.integration


def flagembedding_reference(src: Path, tokenizer: Any, texts: list[str]) -> list[dict]:
    """Dense, lexical weights and ColBERT vectors as FlagEmbedding's M3 computes them."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    colbert = torch.nn.Linear(XLMR_DIM, XLMR_DIM)
    colbert.load_state_dict(torch.load(src / "colbert_linear.pt", map_location="cpu"))
    sparse = torch.nn.Linear(XLMR_DIM, 1)
    sparse.load_state_dict(torch.load(src / "sparse_linear.pt", map_location="cpu"))
    hf_tok = AutoTokenizer.from_pretrained(str(src))
    unused = {hf_tok.cls_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id, hf_tok.unk_token_id}
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text).ids])
        mask = torch.ones_like(ids)
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            dense = torch.nn.functional.normalize(h[:, 0], dim=-1)[0]
            token_weights = torch.relu(sparse(h)).squeeze(-1)[0]
            vecs = colbert(h[:, 1:]) * mask[:, 1:][:, :, None].float()
            vecs = torch.nn.functional.normalize(vecs, dim=-1)[0][: int(mask.sum()) - 1]
        lexical: dict[int, float] = {}
        for tid, w in zip(ids[0].tolist(), token_weights.tolist()):
            if tid not in unused and w > 0 and w > lexical.get(tid, 0):
                lexical[tid] = w
        out.append({"dense": dense.numpy(), "sparse": lexical, "colbert": vecs.numpy(),
                    "n_tokens": ids.shape[1]})
    return out


def long_text(tokenizer: Any, tokens: int) -> str:
    text = ""
    while len(tokenizer.encode(text).ids) < tokens + 50:
        text += " ".join(SAMPLE_TEXTS) + " "
    return text[: tokenizer.encode(text).offsets[tokens][1]]


@pytest.fixture(scope="module")
def m3_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_m3(tmp_path_factory.mktemp("m3") / "src")  # same seeds as m3_bundle


def test_m3_bundle_names_its_outputs(m3_bundle: Path) -> None:
    cfg = load_bundle(m3_bundle).config
    assert cfg.outputs == ("dense", "sparse", "colbert") and cfg.colbert_dim == XLMR_DIM
    assert cfg.sparse_skip_ids == (0, 1, 2, 3) and cfg.max_length == XLMR_WINDOW
    gate = json.loads((m3_bundle / "embedfleet.json").read_text())["quality_gate"]
    assert gate["fp32"]["max_abs_err_vs_torch"] < 1e-4


def test_job_outputs_match_flagembedding(tmp_path, fleet, redis_url, m3_bundle, m3_src) -> None:
    full = load_bundle(m3_bundle).load_tokenizer(truncate=False)
    shorts = [SAMPLE_TEXTS[i] for i in (0, 3, 10, 20, 30, 41)]
    longs = [long_text(full, XLMR_WINDOW - 40), long_text(full, XLMR_WINDOW - 200)[100:]]
    docs = [{"id": f"s{i}", "text": t} for i, t in enumerate(shorts)]
    docs += [{"id": f"l{i}", "text": t} for i, t in enumerate(longs)]
    fleet()
    job = submit(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "out", model=str(m3_bundle),
                 precision="fp32", broker=redis_url, outputs="dense,sparse,colbert",
                 max_batch_tokens=3 * XLMR_WINDOW, job_id="m3")
    st = job.wait(timeout_s=600)
    assert st.status == "succeeded", st
    assert job.dir.reload().outputs == ["dense", "sparse", "colbert"]
    ids, dense = read_matrix(job.path)
    sp_ids, sparse = read_sparse(job.path)
    colbert = dict(iter_colbert(job.path))
    assert sp_ids == ids and sorted(colbert) == sorted(ids) and len(ids) == len(docs)
    inputs = pq.read_table(job.dir.input_path(0)).to_pylist()
    by_key = {(r["doc_id"], r["chunk_index"]): r for r in inputs}
    texts = [by_key[k]["text"] for k in ids]
    assert max(by_key[k]["n_tokens"] for k in ids) >= XLMR_WINDOW - 45  # near the window
    ref = flagembedding_reference(m3_src, load_bundle(m3_bundle).load_tokenizer(), texts)
    for k, d, (tok, w), r in zip(ids, dense, sparse, ref):
        assert float(d @ r["dense"]) >= 0.9999, k
        assert tok.tolist() == sorted(r["sparse"]), k  # same ids, sorted, no padding ids
        ref_w = np.array([r["sparse"][t] for t in tok.tolist()], dtype=np.float32)
        assert np.abs(w - ref_w).max(initial=0.0) <= 1e-4, k
        cb = colbert[k]
        assert cb.shape == r["colbert"].shape == (r["n_tokens"] - 1, XLMR_DIM), k
        assert (cb * r["colbert"]).sum(axis=1).min() >= 0.9999, k
    # at least one batch really mixed a near-8,192-token text with shorter ones
    met = pq.read_table(job.dir.metrics_path(0)).to_pylist()
    mixed = [m for m in met if m["chunks"] > 1 and m["padded_tokens"] - m["real_tokens"] > 4000]
    assert mixed, met
    assert all(m["output_bytes"] > 4 * XLMR_DIM * m["chunks"] for m in met if m["chunks"])


def test_dense_only_job_on_an_m3_bundle_keeps_the_dense_schema(
        tmp_path, fleet, redis_url, m3_bundle) -> None:
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(SAMPLE_TEXTS[:5])]
    fleet()
    job = submit(write_jsonl(tmp_path / "c.jsonl", docs), tmp_path / "out", model=str(m3_bundle),
                 precision="fp32", broker=redis_url, job_id="dense")
    assert job.wait(timeout_s=300).status == "succeeded"
    shard = job.dir.embeddings_path(0)
    assert pq.read_schema(shard).names == ["doc_id", "chunk_index", "char_start", "char_end",
                                           "n_tokens", "text_sha256", "embedding", "cached",
                                           "line"]
    with pytest.raises(ValueError, match="no sparse output"):
        read_sparse(job.path, require_success=False)


def test_missing_head_file_is_an_export_error_naming_it(tmp_path: Path) -> None:
    from worker.export import export_bundle

    src = make_tiny_m3(tmp_path / "bge-m3-tiny")
    (src / "sparse_linear.pt").unlink()
    with pytest.raises(BundleError, match=r"sparse_linear.pt: missing BGE-M3 head file"):
        export_bundle(src, tmp_path / "b", precisions="fp32")
    (src / "colbert_linear.pt").unlink()  # named bge-m3 with neither file: still refused
    with pytest.raises(BundleError, match=r"colbert_linear.pt: missing BGE-M3 head file"):
        export_bundle(src, tmp_path / "b", precisions="fp32")
    assert not (tmp_path / "b").exists()


def test_unknown_or_unsupported_output_is_refused_before_staging(
        tmp_path: Path, xlmr_bundle: Path, m3_bundle: Path, redis_url: str) -> None:
    from click.testing import CliRunner

    from producer.cli import main

    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "hello"}])
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["submit", str(corpus), "--out", str(out), "--model",
                                    str(m3_bundle), "--outputs", "dense,multivec", "--dry-run"])
    assert res.exit_code != 0 and "--outputs multivec: unknown output" in res.output
    res = CliRunner().invoke(main, ["submit", str(corpus), "--out", str(out), "--model",
                                    str(xlmr_bundle), "--outputs", "sparse", "--dry-run"])
    assert res.exit_code != 0 and "cannot produce it (it has: dense)" in res.output
    assert not out.exists()
    res = CliRunner().invoke(main, ["submit", str(corpus), "--out", str(out), "--model",
                                    str(m3_bundle), "--outputs", "dense,sparse,colbert",
                                    "--dry-run", "--cache-url", redis_url])
    assert res.exit_code == 0, res.output
    assert "disk      about" in res.output and "colbert" in res.output
    assert not out.exists()  # a dry run writes nothing
