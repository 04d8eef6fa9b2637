"""Does storing token ids in the input shard pay? (issue #13, "chunk once")

    python benchmarks/token_ids.py --corpus c5k.jsonl --model .embedfleet/test-models/all-MiniLM-L6-v2

Takes the chunks of the first ``--docs`` documents (chunked as staging does), then measures, on
one thread, per 1,000 chunks:
  worker side   tokenising as the worker does (HF) (``encode_batch``, offsets computed), the
                same with ``encode_batch_fast`` (no offsets), and reading stored ids back from a
                Parquet column (read + to numpy);
  staging side  staging's encoder (worker/staging/fastcount.py: nanotoken where it matches), the extra cost of keeping the ids staging already has (build the list<int32>
                column, write it with zstd) and the input shard's size with and without it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from worker.staging.chunking import chunk_budget, chunk_document  # noqa: E402
from storage.bundle import load_bundle  # noqa: E402


def best(fn, repeat: int = 3) -> float:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return min(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=2000)
    a = ap.parse_args()
    bundle = load_bundle(a.model)
    tok = bundle.load_tokenizer(truncate=False)
    wtok = bundle.load_tokenizer(truncate=True)
    mt = bundle.config.max_length
    budget = chunk_budget(tok, mt, None, "")
    texts = []
    with a.corpus.open() as f:
        for i, line in enumerate(f):
            if i >= a.docs:
                break
            doc = json.loads(line)["text"]
            texts += [doc[s.char_start:s.char_end]
                      for s in chunk_document(doc, tok, max_tokens=mt, budget=budget)]
    n = len(texts)
    from worker.staging.fastcount import encoder_for

    fast = encoder_for(wtok.__class__.from_str(tok.to_str()))
    ids = [e.ids for e in wtok.encode_batch_fast(texts)]
    tokens = sum(map(len, ids))
    base = pa.table({"text": texts})
    with_ids = base.append_column("input_ids", pa.array(ids, type=pa.list_(pa.int32())))

    def size(t: pa.Table) -> int:
        buf = io.BytesIO()
        pq.write_table(t, buf, compression="zstd")
        return buf.tell()

    raw = io.BytesIO()
    pq.write_table(with_ids, raw, compression="zstd")

    def read_ids() -> None:
        col = pq.read_table(io.BytesIO(raw.getvalue()), columns=["input_ids"])["input_ids"]
        col = col.combine_chunks()
        col.values.to_numpy(), col.offsets.to_numpy()

    per = 1000 / n
    rows = [
        ("worker: encode_batch (today)", best(lambda: wtok.encode_batch(texts)) * per),
        ("worker: encode_batch_fast", best(lambda: wtok.encode_batch_fast(texts)) * per),
        ("worker: read stored ids", best(read_ids) * per),
        ("staging: encoder_for (nanotoken)", best(lambda: fast(texts)) * per),
        ("staging: build ids column", best(lambda: pa.array(ids, type=pa.list_(pa.int32()))) * per),
        ("staging: write text only", best(lambda: size(base)) * per),
        ("staging: write text + ids", best(lambda: size(with_ids)) * per),
    ]
    print(f"{n:,} chunks, {tokens:,} tokens, {sum(map(len, texts)) / 1e6:.1f} M chars; "
          f"ms per 1,000 chunks, one thread")
    for name, s in rows:
        print(f"  {name:32s} {s * 1000:8.1f} ms")
    print(f"  input shard size: text only {size(base) / 1e6:.2f} MB, with ids "
          f"{size(with_ids) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
