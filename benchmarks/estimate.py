"""How close ``producer run --dry-run``'s estimate comes to the measured time (issue 30).

    python benchmarks/estimate.py          # --calib 400 --docs 2000 --workers 1

A calibration job (``--calib`` documents) runs first with ``producer run`` into a fresh output
root and EMBED_HOME; then ``producer run TARGET --dry-run`` prints its estimate (rate from the
calibration job's metrics shards), then ``producer run TARGET`` runs it. Both corpora are
distinct texts (no cache hit). Reported: the estimate, the job's wall (``result.wall_s``:
submit to finish, with staging and worker start) and its fleet time (first attempt start to
finish), and the estimate's error against each. Results: benchmarks/results/estimate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("river stone lamp orchard violet engine harbor ladder quiet summer copper window "
         "garden thunder basket marble meadow signal winter paper").split()


def corpus(path: Path, n: int, salt: str) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(120))
            f.write(json.dumps({"id": f"{salt}{i}", "text": f"{salt} {i} {words}"}) + "\n")
    return path


def producer(*args: str, env: dict[str, str]) -> str:
    p = subprocess.run([sys.executable, "-m", "producer", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(p.stdout + p.stderr)
    return p.stdout + p.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib", type=int, default=400)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--model", default=str(ROOT / ".embedfleet/test-models/all-MiniLM-L6-v2"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        env = dict(os.environ, EMBED_HOME=str(t / "home"), PYTHONPATH=str(ROOT))
        common = ["--out", str(t / "out"), "--model", a.model, "--precision", "fp32",
                  "--workers", str(a.workers)]
        producer("run", str(corpus(t / "calib.jsonl", a.calib, "c")), "--job-id", "calib",
                 *common, env=env)
        target = corpus(t / "target.jsonl", a.docs, "t")
        dry = producer("run", str(target), "--dry-run", *common, env=env)
        m = re.search(r"estimate\s+(\d+):(\d+):(\d+)", dry)
        assert m, dry
        est = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
        t0 = time.time()
        producer("run", str(target), "--job-id", "target", *common, env=env)
        run_s = time.time() - t0
        job = t / "out" / "target"
        res = json.loads((job / "manifest.json").read_text())["result"]
        first = min(json.loads(p.read_text())["time"]
                    for p in (job / "_state" / "attempts").iterdir())
        fleet_s = res["finished_at"] - first
    row = {"docs": a.docs, "calib_docs": a.calib, "workers": a.workers,
           "tokens": res["real_tokens"], "estimate_s": est, "job_wall_s": res["wall_s"],
           "fleet_s": round(fleet_s, 1), "command_s": round(run_s, 1),
           "error_vs_job_wall": round(est / res["wall_s"] - 1, 3),
           "error_vs_fleet": round(est / fleet_s - 1, 3),
           "dry_run": [ln.strip() for ln in dry.splitlines() if "estimate" in ln or "rate" in ln],
           "loadavg": os.getloadavg()[0], "cpus": os.cpu_count()}
    print(json.dumps(row, indent=2))
    out = ROOT / "benchmarks" / "results" / "estimate.json"
    out.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
