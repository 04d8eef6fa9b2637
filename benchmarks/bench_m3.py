"""BGE-M3 outputs: tokens/s of dense only vs dense+sparse+ColBERT, and bytes per chunk per output.

Random-weight BGE-M3-shaped models (speed does not depend on the weights): the tiny test model
(2 layers, 32 wide, tests/model_fixtures.py) and an all-MiniLM-L6-v2-shaped one (6 layers,
384 wide, 12 heads, FFN 1536, window 512), each with random ``colbert_linear.pt`` and
``sparse_linear.pt``, exported once with ``export_bundle``. Both paths run the same exported
graph through the worker's session (worker/model/session.py) on the same texts and batches;
the only difference is which graph outputs are fetched and post-processed. Bytes per chunk are
the zstd-compressed Parquet column sizes of an output shard written by storage/shards.py.

    PYTHONPATH=$PWD python benchmarks/bench_m3.py [--repeat 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.bundle import OUTPUTS  # noqa: E402
from storage.hashing import text_sha256  # noqa: E402
from storage.shards import embeddings_table, input_table  # noqa: E402
from worker.export.samples import SAMPLE_TEXTS  # noqa: E402

SHAPES = {
    "tiny (2x32)": None,
    "MiniLM-shaped (6x384)": {"hidden_size": 384, "num_hidden_layers": 6,
                              "num_attention_heads": 12, "intermediate_size": 1536,
                              "max_position_embeddings": 514},
}


OUTPUT_SETS = {"dense": ("dense",), "all": OUTPUTS}
"""The two output sets measured: dense only, and dense + sparse + ColBERT."""


def timed_pass(model, texts: list[str], outputs: tuple[str, ...]  # type: ignore[no-untyped-def]
               ) -> tuple[float, dict]:
    """Seconds for one pass over ``texts`` through the worker's session, and what it returned:
    dense only through ``embed`` (the worker's ``run``), more through ``encode``
    (``run_outputs``, one session run fetching every output asked for)."""
    t0 = time.perf_counter()
    out = {"dense": model.embed(texts)} if outputs == ("dense",) else model.encode(texts, outputs)
    return time.perf_counter() - t0, out


def build(root: Path, shape: dict | None) -> Path:
    """A BGE-M3-shaped source directory; ``shape`` resizes the tiny one."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from tests.model_fixtures import make_tiny_m3

    src = make_tiny_m3(root / "src")
    if shape:
        cfg = XLMRobertaConfig.from_pretrained(str(src))
        for k, v in shape.items():
            setattr(cfg, k, v)
        XLMRobertaModel(cfg).eval().save_pretrained(str(src))
        h = shape["hidden_size"]
        torch.save(torch.nn.Linear(h, h).state_dict(), src / "colbert_linear.pt")
        torch.save(torch.nn.Linear(h, 1).state_dict(), src / "sparse_linear.pt")
        pool = json.loads((src / "1_Pooling" / "config.json").read_text())
        pool["word_embedding_dimension"] = h
        (src / "1_Pooling" / "config.json").write_text(json.dumps(pool))
        tc = json.loads((src / "tokenizer_config.json").read_text())
        tc["model_max_length"] = 512
        (src / "tokenizer_config.json").write_text(json.dumps(tc))
    return src


def measure(bundle: Path, texts: list[str], repeat: int, threads: int) -> dict:
    from worker.model.session import load_model

    model = load_model(bundle, device="cpu", precision="fp32", threads=threads)
    tokens = sum(len(e.ids) for e in model.tokenizer.encode_batch(texts))
    model.embed(texts[:8])  # warm-up
    best = {"dense": float("inf"), "all": float("inf")}
    out: dict = {}
    for _ in range(repeat):
        for name, outputs in OUTPUT_SETS.items():
            secs, out = timed_pass(model, texts, outputs)
            best[name] = min(best[name], secs)
    return {"tokens": tokens, "dense_tok_s": tokens / best["dense"],
            "all_tok_s": tokens / best["all"], "bytes": column_bytes(texts, out, model)}


def column_bytes(texts: list[str], out: dict, model) -> dict:  # type: ignore[no-untyped-def]
    """zstd Parquet bytes per chunk of each output column, as the worker writes them."""
    rows = [{"line": i + 1, "doc_id": str(i), "chunk_index": 0, "chunk_count": 1,
             "char_start": 0, "char_end": len(t), "n_tokens": 0, "text": t,
             "text_sha256": text_sha256(t)} for i, t in enumerate(texts)]
    table = embeddings_table(input_table(rows), out["dense"], np.zeros(len(texts), bool),
                             sparse=out["sparse"], colbert=out["colbert"],
                             colbert_dim=model.bundle.config.colbert_dim)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    meta = pq.read_metadata(io.BytesIO(buf.getvalue()))
    sizes: dict[str, int] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            name = col.path_in_schema.split(".")[0]
            sizes[name] = sizes.get(name, 0) + col.total_compressed_size
    per = {"dense": sizes["embedding"], "sparse": sizes["sparse_ids"] + sizes["sparse_weights"],
           "colbert": sizes["colbert"]}
    return {k: v / len(texts) for k, v in per.items()}


def distinct_texts() -> list[str]:
    """188 different texts from SAMPLE_TEXTS (repeated rows would compress unrealistically)."""
    halves = [t[: max(4, len(t) // 2)] for t in SAMPLE_TEXTS]
    pairs = [a + " " + b for a, b in zip(SAMPLE_TEXTS, SAMPLE_TEXTS[1:])]
    backwards = [" ".join(reversed(t.split())) + " ." for t in SAMPLE_TEXTS]
    return list(SAMPLE_TEXTS) + halves + pairs + backwards


def main() -> None:
    from worker.export import export_bundle

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    texts = distinct_texts()
    print(f"{len(texts)} distinct texts (samples, halves, pairs, words reversed), best of "
          f"{args.repeat}, "
          f"{args.threads} ORT threads, CPU")
    print(f"{'model':24} {'tokens':>7} {'dense tok/s':>12} {'all tok/s':>10} {'ratio':>6} "
          f"{'B/chunk dense':>14} {'sparse':>7} {'colbert':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            root = Path(tmp) / name.split()[0]
            bundle = export_bundle(build(root, shape), root / "bundle", precisions="fp32",
                                   log=lambda s: None)
            r = measure(bundle, texts, args.repeat, args.threads)
            b = r["bytes"]
            print(f"{name:24} {r['tokens']:>7} {r['dense_tok_s']:>12,.0f} "
                  f"{r['all_tok_s']:>10,.0f} {r['all_tok_s'] / r['dense_tok_s']:>6.2f} "
                  f"{b['dense']:>14,.0f} {b['sparse']:>7,.0f} {b['colbert']:>8,.0f}")


if __name__ == "__main__":
    main()
