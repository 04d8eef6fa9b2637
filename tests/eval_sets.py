"""Small labelled sets from the real sample corpus, for ``producer eval``'s tests and README.

Triplets from halves of different documents (a third with positive and negative swapped, so
accuracy is not 1), pairs with graded scores, and a BEIR directory whose queries are slices of
their documents. ``python -m tests.eval_sets OUT`` writes all three under OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import sample_records, write_jsonl


def _docs(lo: int = 300, hi: int = 700) -> list[str]:
    return [r["text"] for r in sample_records() if lo < len(r["text"]) < hi]


def _halves(text: str) -> tuple[str, str]:
    cut = text.rfind(" ", 0, len(text) // 2)
    return text[:cut], text[cut + 1:]


def triplets(n: int = 30) -> list[dict]:
    docs, out = _docs(), []
    for i in range(n):
        head, tail = _halves(docs[i])
        other = _halves(docs[i + 1])[1]
        pos, neg = (tail, other) if i % 3 else (other, tail)
        out.append({"query": head[:200], "positive": pos, "negative": neg})
    return out


def pairs(n: int = 30) -> list[dict]:
    docs, out = _docs(), []
    for i in range(n):
        head, tail = _halves(docs[i])
        j = [i, i + 1, i + 7][i % 3]
        out.append({"text1": head, "text2": _halves(docs[j])[1] if j != i else tail,
                    "score": [5.0, 2.5, 0.0][i % 3] + (i % 2) * 0.5})
    return out


def retrieval(root: Path, n_docs: int = 40, n_queries: int = 20, long_doc: bool = False) -> Path:
    """A BEIR directory; query i comes from the middle of doc i; query 0 also judges doc 1.
    The last query has no qrels (not scored). ``long_doc`` appends a many-chunk document."""
    docs = _docs(200, 600)[:n_docs]
    if long_doc:
        docs.append("\n\n".join(_docs(600, 3000)[:8]))
    corpus = [{"_id": f"d{i:03}", "title": "", "text": t} for i, t in enumerate(docs)]
    queries = []
    for i in range(n_queries + 1):
        t = docs[i]
        lo = t.find(" ", len(t) // 3) + 1
        queries.append({"_id": f"q{i}", "text": t[lo:lo + 80]})
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "queries.jsonl", queries)
    lines = ["query-id\tcorpus-id\tscore", "q0\td001\t1"]
    lines += [f"q{i}\td{i:03}\t1" for i in range(n_queries)]
    if long_doc:
        lines += [f"q{n_queries - 1}\td{len(docs) - 1:03}\t1"]
    (root / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return root


def write_all(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "triplets.jsonl", triplets())
    write_jsonl(out / "pairs.jsonl", pairs())
    retrieval(out / "beir", long_doc=True)


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}/triplets.jsonl, pairs.jsonl, beir/")
