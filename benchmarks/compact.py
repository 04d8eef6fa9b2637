"""Compact vectors: bytes per chunk of each ``--dtype`` (and ``--dim``), and what they cost.

    python benchmarks/compact.py --json benchmarks/results/compact.json

1. One ``producer run`` of CORPUS per dtype (full dimension) and per dtype at ``--dim 256``
   (``--force-dim``: MiniLM is not Matryoshka-trained), all with one private cache, so the
   model runs once and every other job is cast from cached vectors; the bytes per chunk are
   ``producer report``'s (the dense column in the shard footers, compressed with zstd).
2. ``producer eval``'s rows (``run_eval`` with ``--dim 128,256 --dtype float32,float16,int8,
   binary``) on the small retrieval set tests/eval_sets.py builds from the sample corpus
   (20 queries, 40 documents: a wiring check more than a verdict; run ``producer eval`` on your
   own labelled data for that).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.tools.report import load_report, summarize  # noqa: E402
from storage.quantize import DTYPES  # noqa: E402


def bytes_per_chunk(corpus: Path, bundle: Path, tmp: Path) -> list[dict]:
    env = {**os.environ, "EMBED_HOME": str(tmp / "home"), "EMBED_THREADS": "2",
           "PYTHONPATH": str(ROOT)}
    rows = []
    for dim in (None, 256):
        for dtype in DTYPES:
            job = f"{dtype}-{dim or 'full'}"
            cmd = [sys.executable, "-m", "producer", "run", str(corpus), "--out", str(tmp / "out"),
                   "--job-id", job, "--model", str(bundle), "--precision", "fp32",
                   "--dtype", dtype] + (["--dim", str(dim), "--force-dim"] if dim else [])
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            manifest, metrics, _ = load_report(tmp / "out" / job)
            b = summarize(manifest, metrics)["bytes_per_chunk"]["dense"]
            rows.append({"dim": b["dim"], "dtype": dtype, "raw": b["raw"], "disk": b["disk"],
                         "encoded": b["encoded"]})
            print(rows[-1], flush=True)
    return rows


def eval_rows(bundle: Path, tmp: Path) -> list[dict]:
    from producer.tools.evaldata import read_eval_data
    from producer.tools.evaluate import run_eval
    from tests.eval_sets import retrieval

    data = read_eval_data(retrieval(tmp / "beir"))
    rows = run_eval(bundle, data, variants=["fp32"], providers=["cpu"], dims=[128, 256],
                    dtypes=["float32", "float16", "int8", "binary"])
    return [{"dim": r.dim or 384, "dtype": r.dtype, "bytes": r.bytes_per_vector,
             **{k: round(v, 4) for k, v in r.metrics.items()}} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=ROOT / "examples" / "sample.jsonl")
    ap.add_argument("--model", type=Path,
                    default=ROOT / ".embedfleet" / "test-models" / "all-MiniLM-L6-v2",
                    help="bundle (default: the tests' MiniLM export)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = {"corpus": str(a.corpus.relative_to(ROOT)) if a.corpus.is_relative_to(ROOT)
               else str(a.corpus), "bytes_per_chunk": bytes_per_chunk(a.corpus, a.model,
                                                                      Path(d)),
               "eval": eval_rows(a.model, Path(d))}
    for r in res["eval"]:
        print(r)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
