"""Staging benchmark: this tree against the previous release (commit 3ed42c3), in one run.

    python benchmarks/staging.py --big big.jsonl --million million.jsonl --small c5k.jsonl \
        --model .embedfleet/test-models/all-MiniLM-L6-v2 [--dry-docs 100000] [--run-docs 1000] \
        [--json benchmarks/results/staging.json]

Prints, for old and new:
  1. seconds from ``producer submit`` to the first task on the broker (``--big``, ~1 GB;
     the old release stages everything first: it is stopped after ``--old-cap-s`` and the
     time is extrapolated from its dry-run MB/s, flagged as such);
  2. dry-run staging MB/s on the first ``--dry-docs`` lines of ``--million`` with 1 and 2
     staging processes (the old release has one), with the peak RSS of the largest process;
  3. ``producer run`` on the first ``--run-docs`` lines of ``--small``: the whole command, its
     staging time (dry run) and its embedding time (first to last metric row of the job).
The old release is extracted with ``git archive`` into a temp dir and run from there.
Run on a quiet machine for absolute figures; on a shared one compare old and new only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OLD = "3ed42c3"


def tree_of(rev: str, tmp: Path) -> Path:
    d = tmp / rev
    d.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(d)], input=archive, check=True)
    return d


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}


def producer(tree: Path, *args: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "producer", *args], cwd=tree, env=_env(tree),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def head(src: Path, n: int, out: Path) -> Path:
    with src.open("rb") as f, out.open("wb") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return out


def first_task_s(tree: Path, corpus: Path, model: str, broker: str, out: Path, cap_s: float,
                 procs: list[str]) -> float | None:
    import redis

    r = redis.Redis.from_url(broker)
    r.flushdb()
    t0 = time.monotonic()
    p = producer(tree, "submit", str(corpus), "--out", str(out), "--model", model,
                 "--broker", broker, "--precision", "fp32", *procs)
    try:
        while time.monotonic() - t0 < cap_s:
            # normal-priority tasks (since --priority) wait in cpu\x06\x163, older ones in cpu;
            # with fair share in the job's own queue, registered in the same MULTI as the task
            if r.llen("cpu") + r.llen("cpu\x06\x163") + r.scard("_embedfleet.jobs.cpu") > 0:
                return time.monotonic() - t0
            if p.poll() is not None:
                raise RuntimeError(p.stdout.read() if p.stdout else "producer exited")
            time.sleep(0.05)
        return None
    finally:
        p.kill()
        p.wait()
        r.flushdb()


# Runs a command and prints the largest peak RSS (kB) of any process under it, staging pool
# included (RUSAGE_CHILDREN covers every waited-for descendant).
_PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
         "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
         "sys.exit(rc)")


def dry_run(tree: Path, corpus: Path, model: str, cache: str, procs: list[str]
            ) -> tuple[float, float]:
    """(MB/s, peak RSS MB of the largest process) of ``producer submit --dry-run``."""
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _PEAK, sys.executable, "-m", "producer", "submit",
                        str(corpus), "--dry-run", "--model", model, "--cache-url", cache,
                        *procs], cwd=tree, env=_env(tree), capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode:
        raise RuntimeError(p.stdout + p.stderr)
    kb = int(p.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return corpus.stat().st_size / 1e6 / wall, kb / 1024


def run_whole(tree: Path, corpus: Path, model: str, out: Path, home: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    t0 = time.monotonic()
    p = producer(tree, "run", str(corpus), "--out", str(out), "--model", model,
                 "--job-id", "bench", "--home", str(home), "--precision", "fp32")
    text = p.communicate()[0]
    wall = time.monotonic() - t0
    if p.returncode:
        raise RuntimeError(text)
    stamps = []
    for f in (out / "bench" / "metrics").glob("part-*.parquet"):
        t = pq.read_table(f, columns=["timestamp", "total_ms"]).to_pylist()
        stamps += [(int(x["timestamp"].timestamp() * 1000) if hasattr(x["timestamp"], "timestamp")
                    else int(x["timestamp"]), float(x["total_ms"] or 0)) for x in t]
    start = min(s - ms for s, ms in stamps) / 1000
    end = max(s for s, _ in stamps) / 1000
    return {"whole_s": wall, "embedding_s": end - start}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=Path, required=True)
    ap.add_argument("--million", type=Path, required=True)
    ap.add_argument("--small", type=Path, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dry-docs", type=int, default=100_000)
    ap.add_argument("--run-docs", type=int, default=1000)
    ap.add_argument("--old-cap-s", type=float, default=60)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from producer.local import LocalRedis

    res: dict[str, dict[str, object]] = {"old": {}, "new": {}}
    meta = {"command": " ".join(["benchmarks/staging.py", *sys.argv[1:]]), "old_rev": OLD,
            "cores": os.cpu_count(), "cpu": _cpu_model(), "load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        trees = {"old": tree_of(OLD, tmp), "new": ROOT}
        srv = LocalRedis(tmp / "redis")
        srv.start()
        try:
            model = str(Path(a.model).resolve())
            dry = head(a.million, a.dry_docs, tmp / "dry.jsonl")
            small = head(a.small, a.run_docs, tmp / "small.jsonl")
            for name, tree in trees.items():
                one = [] if name == "old" else ["--stage-procs", "1"]
                res[name]["dry_mb_s_1proc"], res[name]["dry_peak_rss_mb_1proc"] = dry_run(
                    tree, dry, model, srv.cache_url, one)
                if name == "new":
                    res[name]["dry_mb_s_2proc"], res[name]["dry_peak_rss_mb_2proc"] = dry_run(
                        tree, dry, model, srv.cache_url, ["--stage-procs", "2"])
                t = first_task_s(tree, a.big, model, srv.broker_url, tmp / f"out-{name}",
                                 a.old_cap_s if name == "old" else 120, [])
                if t is None:
                    est = a.big.stat().st_size / 1e6 / float(res[name]["dry_mb_s_1proc"])
                    res[name]["first_task_s"] = f"> {a.old_cap_s:.0f} (extrapolated {est:.0f})"
                else:
                    res[name]["first_task_s"] = round(t, 2)
                staging = small.stat().st_size / 1e6 / dry_run(tree, small, model,
                                                                srv.cache_url, [])[0]
                whole = run_whole(tree, small, model, tmp / f"run-{name}", tmp / f"home-{name}")
                res[name].update(run_staging_s=staging, **whole)
                res[name]["whole_over_max"] = whole["whole_s"] / max(staging,
                                                                      whole["embedding_s"])
        finally:
            srv.stop()
    print(f"corpora: big {a.big.stat().st_size / 1e9:.2f} GB, dry run {a.dry_docs:,} docs, "
          f"producer run {a.run_docs:,} docs; machine: {os.cpu_count()} cores")
    keys = sorted({k for v in res.values() for k in v})
    print(f"{'':22}{'old (' + OLD + ')':>24}{'new':>24}")
    for k in keys:
        cells = [res[n].get(k, "-") for n in ("old", "new")]
        print(f"{k:22}" + "".join(f"{c:>24.2f}" if isinstance(c, float) else f"{str(c):>24}"
                                  for c in cells))
    meta["load_after"] = os.getloadavg()[0]
    print(f"cpu: {meta['cpu']}; load average {meta['load_before']:.1f} at the start, "
          f"{meta['load_after']:.1f} at the end")
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, **res}, indent=2, default=str))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
