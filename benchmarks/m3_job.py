"""Issue 24's end-to-end job on a BGE-M3-size bundle: 43 documents, 3 of ~10,000 tokens.

``corpus`` writes the JSONL (real text from benchmarks/corpus.py: 40 short documents and 3
long ones made of consecutive documents until ~10,000 tokens of the bundle's tokenizer);
``check`` reads the finished job and the private fleet's worker log and prints what the issue
asks about: children replaced, shards re-sent or run twice, the probe's time, compute time.

    python benchmarks/m3_job.py corpus --bundle /work/m3/bundle-fp32 --out /tmp/m3job.jsonl
    flock /work/m3/heavy.lock /usr/bin/time -v env EMBED_HOME=/tmp/m3home \\
        producer run /tmp/m3job.jsonl --model /work/m3/bundle-fp32 --out /tmp/m3out \\
        --job-id m3 --outputs dense,sparse,colbert 2>&1 | tee /tmp/m3run.log
    python benchmarks/m3_job.py check --job /tmp/m3out/m3 --home /tmp/m3home \\
        --run-log /tmp/m3run.log

benchmarks/results/m3_job.json holds the last run's figures (with the environment it needed:
longer task time limits, since one 8,192-token fp32 batch takes minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

LONG_TOKENS = 10_000


def make_corpus(bundle: str, out: Path, n_short: int = 40, n_long: int = 3) -> dict:
    from corpus import build_corpus

    from storage.bundle import load_bundle

    tok = load_bundle(bundle).load_tokenizer(truncate=False)
    docs = build_corpus(600, seed=24, log=lambda *_: None)
    sizes = [len(e.ids) for e in tok.encode_batch([d["text"] for d in docs])]
    short = [d for d, n in zip(docs, sizes) if 20 <= n <= 400][:n_short]
    rest = [(d, n) for d, n in zip(docs, sizes) if d not in short]
    longs, text, count = [], [], 0
    for d, n in rest:
        text.append(d["text"])
        count += n
        if count >= LONG_TOKENS:
            longs.append({"id": f"long-{len(longs)}", "text": "\n\n".join(text)})
            text, count = [], 0
            if len(longs) == n_long:
                break
    rows = [{"id": d["id"], "text": d["text"]} for d in short] + longs
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    lengths = [len(e.ids) for e in tok.encode_batch([r["text"] for r in longs])]
    return {"docs": len(rows), "short": len(short), "long_tokens": lengths}


def check(job_dir: Path, home: Path, run_log: Path | None) -> dict:
    from storage.jobdir import JobDir

    job = JobDir.open(job_dir)
    shards = job.manifest.shards
    attempts = {s.shard: len(job.attempts(s.shard)) for s in shards}
    logs = sorted((home / "logs").glob("run-*/*.log"), key=lambda p: p.stat().st_mtime)
    text = "\n".join(p.read_text(errors="replace") for p in logs[-4:])
    probe = re.findall(r"CPU runtime probe took ([\d.]+) s", text)
    run_text = run_log.read_text(errors="replace") if run_log else ""
    import pyarrow.parquet as pq

    compute_ms = 0.0
    for s in shards:
        t = pq.read_table(job.metrics_path(s.shard), columns=["inference_ms"]).to_pydict()
        compute_ms += sum(t["inference_ms"])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", run_text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", run_text)
    return {
        "status": job.manifest.status, "shards": len(shards), "attempts": attempts,
        "run_twice": [s for s, n in attempts.items() if n > 1],
        "resent_lines": run_text.count("re-sent"),
        "children_replaced": text.count("recycling this worker process"),
        "rss_after_load": re.findall(r"RSS (\d+) MB after loading; recycled above (\S+)", text),
        "probe_s": [float(p) for p in probe],
        "probe_figures": re.findall(r"CPU runtime probe: .*", text),
        "choice": re.findall(r"CPU RUNTIME CHOICE.*", text),
        "inference_s": round(compute_ms / 1000, 1), "wall": wall.group(1) if wall else None,
        "max_rss_mb_time_v": int(rss.group(1)) // 1024 if rss else None,
    }


def torch_check(job_dir: Path, model_dir: str, min_tokens: int) -> dict:
    """The job's dense vectors of its chunks of at least ``min_tokens`` tokens against the HF
    model in torch fp32 (CLS of the last hidden state, L2-normalised: BGE-M3's dense vector),
    on the same staged chunk texts and the bundle's token ids."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModel

    from storage.jobdir import JobDir
    from storage.readers import read_matrix

    job = JobDir.open(job_dir)
    ids, dense = read_matrix(job_dir)
    texts = {(r["doc_id"], r["chunk_index"]): r["text"] for s in job.manifest.shards
             for r in pq.read_table(job.input_path(s.shard)).to_pylist()}
    from storage.bundle import load_bundle

    tok = load_bundle(job.manifest.bundle_path).load_tokenizer(truncate=True)
    long_rows = [(i, tok.encode(texts[k]).ids) for i, k in enumerate(ids)]
    long_rows = [(i, t) for i, t in long_rows if len(t) >= min_tokens]
    model = AutoModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    out = []
    for i, t in long_rows:
        with torch.inference_mode():
            h = model(input_ids=torch.tensor([t]),
                      attention_mask=torch.ones(1, len(t), dtype=torch.long)).last_hidden_state
        ref = torch.nn.functional.normalize(h[:, 0].float(), dim=-1).numpy()[0]
        out.append({"chunk": list(ids[i]), "tokens": len(t),
                    "cos_vs_torch_fp32": float(np.dot(ref, dense[i]))})
    return {"min_cos": min((o["cos_vs_torch_fp32"] for o in out), default=None), "chunks": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("--bundle", required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--long-docs", type=int, default=3,
                   help="documents of ~10,000 tokens (each 2 chunks; 3 is the issue's job)")
    k = sub.add_parser("check")
    k.add_argument("--job", type=Path, required=True)
    k.add_argument("--home", type=Path, required=True)
    k.add_argument("--run-log", type=Path)
    t = sub.add_parser("torch", help="long chunks' dense vectors vs torch fp32")
    t.add_argument("--job", type=Path, required=True)
    t.add_argument("--model-dir", required=True)
    t.add_argument("--min-tokens", type=int, default=8000)
    a = ap.parse_args(argv)
    if a.cmd == "torch":
        print(json.dumps(torch_check(a.job, a.model_dir, a.min_tokens), indent=1))
        return 0
    res = (make_corpus(a.bundle, a.out, n_long=a.long_docs) if a.cmd == "corpus"
           else check(a.job, a.home, a.run_log))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
