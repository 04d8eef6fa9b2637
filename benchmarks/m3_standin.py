"""Build a BGE-M3 stand-in: BAAI/bge-m3's shape with random weights, as a model directory.

No weights can be downloaded here, and export, memory and speed do not depend on the weight
values, so this is XLM-R large as bge-m3 ships it (24 layers, hidden 1,024, 16 heads, FFN
4,096, vocabulary 250,002, 8,194 positions: 568M parameters, 2.27 GB in fp32) with random
``colbert_linear.pt`` (1,024 -> 1,024) and ``sparse_linear.pt`` (1,024 -> 1), a Unigram
``tokenizer.json`` trained on the seed documents, CLS pooling and Normalize. The layout and
the code are those of the tiny test model (tests/model_fixtures.py ``make_m3``).

    # the real-size stand-in (about 2.3 GB on disk, ~5 GB RAM while it is made)
    flock /work/m3/heavy.lock python benchmarks/m3_standin.py --out /work/m3/src
    # a cheap model over 2 GB (the embedding matrix alone): what tests/integration/test_export_2gb.py builds
    python benchmarks/m3_standin.py --out /tmp/big --layers 1 --hidden 256 --heads 4 \\
        --ffn 512 --vocab 2200000 --window 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.model_fixtures import BGE_M3_SHAPE, XlmrShape, make_m3  # noqa: E402
from worker.export.samples import SAMPLE_TEXTS  # noqa: E402

SEED_DIRS = (ROOT.parent / "shared" / "seeds", ROOT.parent.parent / "shared" / "seeds")


def seed_texts(seeds: Path | None) -> list[str]:
    """Tokenizer training text: the seed documents' paragraphs plus the export samples
    (worker/export/samples.py, so the gate's texts in every script tokenize well)."""
    dirs = [seeds] if seeds else [d for d in SEED_DIRS if d.is_dir()][:1]
    texts = [p for d in dirs for f in sorted(d.glob("*.txt"))
             for p in f.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    if seeds and not texts:
        raise SystemExit(f"{seeds}: no *.txt seed documents there; pass a directory that has some")
    return texts + list(SAMPLE_TEXTS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="model directory to write")
    d = BGE_M3_SHAPE
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--heads", type=int, default=d.heads)
    ap.add_argument("--ffn", type=int, default=d.ffn)
    ap.add_argument("--vocab", type=int, default=d.vocab,
                    help="embedding rows (ids past the tokenizer's are never produced)")
    ap.add_argument("--window", type=int, default=d.window, help="token window (positions - 2)")
    ap.add_argument("--tokenizer-vocab", type=int, default=d.tokenizer_vocab)
    ap.add_argument("--seeds", type=Path, default=None,
                    help="directory of *.txt to train the tokenizer on (default ../shared/seeds)")
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        raise SystemExit(f"{a.out}: exists and is not empty; pass a new directory")
    shape = XlmrShape(hidden=a.hidden, layers=a.layers, heads=a.heads, ffn=a.ffn, vocab=a.vocab,
                      window=a.window, tokenizer_vocab=a.tokenizer_vocab)
    t0 = time.perf_counter()
    make_m3(a.out, shape, seed_texts(a.seeds))
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"{a.out}: {shape} {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
