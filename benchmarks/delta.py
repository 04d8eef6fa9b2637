"""Delta re-index benchmark (issue 27): a full job, then a lightly changed corpus with --since.

One run: a corpus of real documents (benchmarks/corpus.py) is embedded with ``producer run``;
a second version with 1% of documents changed (a sentence appended), 1% deleted and 1% added
is embedded with ``producer run --since`` and an empty cache (a fresh EMBED_HOME: no vector in
any Redis). Reported: each whole command's wall time, a one-document ``producer run`` as the
fixed start-up (private Redis, worker boot), the ratio with and without it; that the unchanged
documents' rows are identical (embedding bytes); and ``producer load`` into PostgreSQL: the
full load of v2 into an empty table vs the delta load of v2 into a table holding v1.

    python benchmarks/delta.py --docs 5000 --write     # results/delta.json

``--model``: a bundle directory; default: the hashing bundle (``producer export hashing``),
which removes the model cost, so the ratio measures what the pipeline does besides inference
(reading, hashing, chunking, staging, writing); with a real model the first job costs more and
the ratio falls further.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable


def timed_run(corpus: Path, out: Path, job_id: str, model: Path, home: Path,
              *extra: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMBED_HOME": str(home)}
    t0 = time.perf_counter()
    subprocess.run([PY, "-m", "producer", "run", str(corpus), "--out", str(out), "--job-id",
                    job_id, "--model", str(model), "--precision", "fp32", "--home", str(home),
                    "--workers", "1", *extra], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def versions(n: int, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, int]]:
    from benchmarks.corpus import build_corpus

    k = max(1, n // 100)
    docs = build_corpus(n + k, seed=seed, log=lambda *_: None)
    for i, d in enumerate(docs):
        d["id"] = f"doc-{i}"
    v1, extra = docs[:n], docs[n:]
    rng = random.Random(seed)
    picked = rng.sample(range(n), 2 * k)
    changed, deleted = set(picked[:k]), set(picked[k:])
    v2 = [dict(d, text=d["text"] + " This paragraph was revised.") if i in changed else d
          for i, d in enumerate(v1) if i not in deleted] + extra
    return v1, v2, {"changed": k, "deleted": k, "added": len(extra)}


def write(path: Path, docs: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    return path


def unchanged_identical(job1: Path, job2: Path, v2_unchanged: set[str]) -> tuple[int, bool]:
    from storage.readers import read_table

    def rows(job: Path) -> dict[tuple[str, int], bytes]:
        t = read_table(job)
        emb = t["embedding"].combine_chunks().values.to_numpy().reshape(t.num_rows, -1)
        return {(d, c): emb[i].tobytes() for i, (d, c) in enumerate(zip(
            t["doc_id"].to_pylist(), t["chunk_index"].to_pylist())) if d in v2_unchanged}

    a, b = rows(job1), rows(job2)
    return len(b), a == b


def pg_loads(job1: Path, job2: Path) -> dict[str, float]:
    from storage.pgload import load_job
    from tests.pgjobs import PgServer

    root = Path(tempfile.mkdtemp(prefix="embedfleet-pg-"))
    root.chmod(0o755)
    srv = PgServer(root / "data")
    try:
        dsn = srv.new_database()
        t0 = time.perf_counter()
        full = load_job(job2, dsn, "full_v2", create=True, index="none")
        full_s = time.perf_counter() - t0
        load_job(job1, dsn, "items", create=True, index="none")
        t0 = time.perf_counter()
        delta = load_job(job2, dsn, "items", index="none")
        delta_s = time.perf_counter() - t0
    finally:
        srv.stop()
        shutil.rmtree(root, ignore_errors=True)
    return {"full_load_s": round(full_s, 3), "full_rows": full.rows_added,
            "delta_load_s": round(delta_s, 3), "delta_rows_added": delta.rows_added,
            "ratio": round(delta_s / full_s, 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="delta-bench-"))
    model = a.model or work / "hashing-384"
    if not model.exists():
        subprocess.run([PY, "-m", "producer", "export", "hashing", "--dim", "384", "--out",
                        str(model)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    v1, v2, changes = versions(a.docs, a.seed)
    c1, c2 = write(work / "v1.jsonl", v1), write(work / "v2.jsonl", v2)
    tiny = write(work / "tiny.jsonl", [{"id": "x", "text": "one short document"}])
    out = work / "out"
    startup = timed_run(tiny, out, "tiny", model, work / "home0")
    full = timed_run(c1, out, "v1", model, work / "home1")
    since = timed_run(c2, out, "v2", model, work / "home2", "--since", str(out / "v1"))
    m2 = json.loads((out / "v2" / "manifest.json").read_text())
    old = {(d["id"], d["text"]) for d in v1}
    unchanged = {d["id"] for d in v2 if (d["id"], d["text"]) in old}
    n_rows, identical = unchanged_identical(out / "v1", out / "v2", unchanged)
    res: dict[str, Any] = {
        "command": f"python benchmarks/delta.py --docs {a.docs}" + (" --write" if a.write else ""),
        "model": "hashing-384 (no inference cost)" if a.model is None else str(a.model),
        "docs": a.docs, "changes": changes, "manifest_delta": m2["delta"],
        "startup_s": round(startup, 2), "full_run_s": round(full, 2),
        "since_run_s": round(since, 2), "ratio": round(since / full, 4),
        "ratio_beyond_startup": round(max(since - startup, 0) / max(full - startup, 1e-9), 4),
        "unchanged_rows": n_rows, "unchanged_rows_identical": identical,
        "load": pg_loads(out / "v1", out / "v2"),
        "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end "
                   "(shared with other jobs: one run, ratios not absolute times)",
    }
    print(json.dumps(res, indent=2))
    if a.write:
        (ROOT / "benchmarks" / "results" / "delta.json").write_text(json.dumps(res, indent=2)
                                                                     + "\n")


if __name__ == "__main__":
    main()
