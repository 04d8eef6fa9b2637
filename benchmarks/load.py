"""Load benchmark: the pipeline with the model cost removed (the ``hashing`` bundle).

    python benchmarks/load.py          # 1,000,000 chunks, then 8 jobs at once (--docs, --jobs)

Both phases run twice in one run: the previous release (``--old REV``, extracted with ``git
archive``, its own producer and workers) and this tree, each on fresh redis-servers.

Real parts only: throwaway redis-servers (broker, cache), real ``celery -A worker worker``
processes, ``producer submit`` subprocesses, Parquet on disk. The hashing bundle makes inference
nearly free: what is measured is the ceiling the pipeline itself puts on any model.

Phase 1, one job: ``producer submit`` stages the corpus while no worker runs (staging
chunks/s = chunks / (submitted_at - created_at) from the manifest), then the workers start and
drain the queue (fleet chunks/s = chunks / (finished_at - first task start)). Per task: wall time
from the workers' ``succeeded in`` log lines; inference and tokenise time from the metrics
shards; overhead = task wall - inference; gap = worker-seconds not spent in a task, per task.
Broker memory: ``INFO memory`` used_memory, sampled every 0.5 s and with the queue full.

Phase 2: ``--jobs`` corpora submitted at once by as many ``producer submit`` processes while
the workers run; every job is checked chunk by chunk (tests/checker.py: lost = duplicated =
unexpected = 0) and the report says how the fleet's task time was shared between the jobs.

``--profile-shards N`` (after a normal run) profiles the pipeline in process instead. Figures
depend on what else the machine does: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from benchmarks.staging import tree_of  # noqa: E402
from tests.checker import check_job  # noqa: E402
from tests.procs import RedisServer, Worker  # noqa: E402

PY = sys.executable
OLD = "d66ef79"
"""The previous release (stop 20): streaming staging, worker re-tokenises the staged text."""
TASK_RE = re.compile(r"succeeded in ([0-9.]+)s: \{'shard': (\d+)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000, help="documents of the big job "
                    "(synthetic: 1-3 sentences each, one chunk each)")
    ap.add_argument("--jobs", type=int, default=8, help="jobs submitted at once in phase 2")
    ap.add_argument("--job-docs", type=int, default=5000, help="documents per phase-2 job")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="worker processes (-c 1 each)")
    ap.add_argument("--old", default=OLD, metavar="REV", help="previous release run the same "
                    "way in the same run (git archive of REV); '' to skip")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/embedfleet-load"))
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "load.json")
    ap.add_argument("--profile-shards", type=int, default=0, metavar="N",
                    help="only profile: run N shards of a staged job in this process under "
                    "cProfile (stage it first with a normal run) and print the top functions")
    args = ap.parse_args(argv)
    if args.profile_shards:
        return profile(args.workdir.resolve(), args.dim, args.profile_shards)
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    big = corpus(work / f"corpus-{args.docs}.jsonl", args.docs, seed=0, env=tree_env(ROOT))
    many = corpus(work / f"corpus-{args.jobs}x{args.job_docs}.jsonl", args.jobs * args.job_docs,
                  seed=1, env=tree_env(ROOT))
    parts = split(many, args.jobs, work)
    result: dict[str, Any] = {"load_before": os.getloadavg(), "cores": os.cpu_count(),
                              "workers": args.workers, "dim": args.dim, "docs": args.docs,
                              "old_rev": args.old or None}
    with tempfile.TemporaryDirectory() as tmp:
        trees = ({"old": tree_of(args.old, Path(tmp))} if args.old else {}) | {"new": ROOT}
        for name, tree in trees.items():
            print(f"\n== {name} ({args.old if name == 'old' else 'working tree'})", flush=True)
            result[name] = one_tree(tree, work / name, big, parts, args)
    result["load_after"] = os.getloadavg()
    if args.old:
        compare(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.json}")
    return 0


def one_tree(tree: Path, work: Path, big: Path, parts: list[Path],
             args: argparse.Namespace) -> dict[str, Any]:
    """Both phases with one source tree (its producer, its workers), on fresh redis-servers."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = tree_env(tree)
    bundle = work / f"hashing-{args.dim}"
    run([PY, "-m", "producer", "export", "hashing", "--dim", str(args.dim), "--out",
         str(bundle)], env)
    broker, cache = RedisServer(work / "broker").start(), RedisServer(work / "cache").start()
    wenv = {**env, "EMBED_BROKER_URL": broker.url(0), "EMBED_CACHE_URL": cache.url(0),
            "EMBED_THREADS": "1"}
    workers: list[Worker] = []
    out, res = work / "out", {}
    try:
        res["one_job"] = one_job(big, out, bundle, broker, cache, wenv, workers, work, env,
                                 args.workers)
        cache.client().flushall()  # phase 2 gets no hits from phase 1
        res["many_jobs"] = many_jobs(parts, out, bundle, broker, env, workers)
    finally:
        for w in workers:
            w.stop()
        broker.stop()
        cache.stop()
    return res


COMPARED = [("staging_chunks_per_s", "staging, chunks/s"), ("fleet_chunks_per_s",
            "fleet, chunks/s"), ("task_ms_mean", "task wall, ms (mean)"),
            ("inference_ms_per_task", "inference, ms per task"),
            ("tokenize_ms_per_task", "tokenising, ms per task"),
            ("outside_tokenise_and_inference_ms_per_task", "rest of a task, ms"),
            ("gap_ms_per_task", "between tasks, ms per task"),
            ("broker_used_memory_mb_peak", "broker peak used_memory, MB"),
            ("job_dir_files", "files in the job directory")]


def compare(result: dict[str, Any]) -> None:
    old, new = result["old"], result["new"]
    print(f"\n{'':36}{'old ' + str(result['old_rev']):>16}{'new':>16}")
    for key, label in COMPARED:
        print(f"{label:36}{old['one_job'][key]:>16,}{new['one_job'][key]:>16,}")
    k = len(new["many_jobs"]["jobs"])
    for key, label in (("wall_s", f"{k} jobs at once: wall, s"),
                       ("chunks_per_s_whole", f"{k} jobs at once: chunks/s"),
                       ("all_exactly_once", f"{k} jobs: every job exactly once")):
        print(f"{label:36}{str(old['many_jobs'][key]):>16}{str(new['many_jobs'][key]):>16}")


def one_job(corpus_path: Path, out: Path, bundle: Path, broker: RedisServer,
            cache: RedisServer, wenv: dict[str, str], workers: list[Worker], work: Path,
            env: dict[str, str], n_workers: int) -> dict[str, Any]:
    job_dir = submit(corpus_path, out, bundle, broker, f"load-{int(time.time())}", env)
    m = manifest(job_dir)
    chunks, shards = m["totals"]["chunks"], len(m["shards"])
    staging_s = staged_at(m) - m["created_at"]
    queued_mem = used_memory(broker)
    for i in range(n_workers):
        workers.append(Worker(wenv, work / f"worker-{i}.log", name=f"load{i}",
                              cwd=Path(wenv["PYTHONPATH"])).start())
    peak = wait_finished([job_dir], broker)
    m = manifest(job_dir)
    fleet_s = m["result"]["finished_at"] - task_times(job_dir)[1]
    tasks = sorted(float(s) for w in workers for s, _ in TASK_RE.findall(w.text()))
    met = pq.read_table(job_dir / "metrics", columns=["inference_ms", "tokenize_ms",
                                                       "cache_hits"])
    inf_ms, tok_ms = sum(met["inference_ms"].to_pylist()), sum(met["tokenize_ms"].to_pylist())
    check = check_job(job_dir)
    res = {
        "chunks": chunks, "shards": shards, "staging_s": round(staging_s, 1),
        "staging_chunks_per_s": round(chunks / staging_s), "fleet_s": round(fleet_s, 1),
        "fleet_chunks_per_s": round(chunks / fleet_s),
        "task_ms_mean": round(1000 * sum(tasks) / max(1, len(tasks)), 1),
        "task_ms_median": round(1000 * tasks[len(tasks) // 2], 1) if tasks else None,
        "inference_ms_per_task": round(inf_ms / shards, 1),
        "tokenize_ms_per_task": round(tok_ms / shards, 1),
        "overhead_ms_per_task": round(1000 * sum(tasks) / max(1, len(tasks)) - inf_ms / shards, 1),
        "outside_tokenise_and_inference_ms_per_task": round(
            1000 * sum(tasks) / max(1, len(tasks)) - (inf_ms + tok_ms) / shards, 1),
        "gap_ms_per_task": round(1000 * (n_workers * fleet_s - sum(tasks)) / shards, 1),
        "cache_hits": int(sum(met["cache_hits"].to_pylist())),
        "broker_used_memory_mb_queued": round(queued_mem / 2**20, 2),
        "broker_used_memory_mb_peak": round(peak / 2**20, 2),
        "cache_used_memory_mb": round(used_memory(cache) / 2**20, 1),
        "job_dir_files": sum(len(f) for _, _, f in os.walk(job_dir)),
        "check": check.as_dict(), "redelivered_shards": redelivered(job_dir),
    }
    print_table("one job", res)
    return res


def many_jobs(parts: list[Path], out: Path, bundle: Path, broker: RedisServer,
              env: dict[str, str], workers: list[Worker]) -> dict[str, Any]:
    t0 = time.time()
    procs = [subprocess.Popen(
        [PY, "-m", "producer", "submit", str(p), "--out", str(out), "--model", str(bundle),
         "--broker", broker.url(0), "--job-id", f"many-{int(t0)}-{k}", "--precision", "fp32"],
        env=env, cwd=env["PYTHONPATH"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for k, p in enumerate(parts)]
    for p, o in zip(procs, [p.communicate()[0].decode(errors="replace") for p in procs]):
        if p.returncode != 0:
            raise RuntimeError(f"producer submit failed ({p.returncode}):\n{o}")
    dirs = [out / f"many-{int(t0)}-{k}" for k in range(len(parts))]
    wait_finished(dirs, broker)
    end = max(manifest(d)["result"]["finished_at"] for d in dirs)
    rows, busy_total = [], 0.0
    for d in dirs:
        busy, first, last = task_times(d)
        busy_total += busy
        m, check = manifest(d), check_job(d)
        rows.append({"job": d.name, "chunks": m["totals"]["chunks"], "shards": len(m["shards"]),
                     "staging_s": round(staged_at(m) - m["created_at"], 1),
                     "first_task_s": round(first - t0, 1), "done_s": round(last - t0, 1),
                     "task_s": round(busy, 1), "check": check.as_dict(),
                     "exactly_once": check.clean and check.ok == check.expected,
                     "redelivered_shards": redelivered(d)})
    for r in rows:
        r["share_of_fleet_task_time"] = round(r["task_s"] / busy_total, 3)
    chunks = sum(r["chunks"] for r in rows)
    res = {"jobs": rows, "wall_s": round(end - t0, 1),
           "chunks_per_s_whole": round(chunks / (end - t0)),
           "all_exactly_once": all(r["exactly_once"] for r in rows)}
    print(f"\n{len(rows)} jobs submitted at once by {len(rows)} `producer submit` processes: "
          f"{chunks:,} chunks in {res['wall_s']} s (submit → last job done), "
          f"{res['chunks_per_s_whole']:,} chunks/s, every job exactly once: "
          f"{res['all_exactly_once']}")
    cols = ["job", "chunks", "shards", "staging_s", "first_task_s", "done_s", "task_s",
            "share_of_fleet_task_time", "exactly_once", "redelivered_shards"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    return res


def profile(work: Path, dim: int, n: int) -> int:
    """cProfile of ``embed_shard`` on ``n`` shards of a copy of the newest big job's input."""
    import cProfile
    import pstats
    import shutil

    from storage.cache import EmbeddingCache
    from storage.jobdir import JobDir
    from worker.model.session import load_model
    from worker.pipeline import ShardContext, embed_shard

    src = max((work / "new" / "out").glob("load-*"), key=lambda p: p.stat().st_mtime)
    dst = work / "profile-job"
    shutil.rmtree(dst, ignore_errors=True)
    job = JobDir.create(work, dst.name)
    for s in manifest(src)["shards"][: n + 1]:
        shutil.copy(src / "input" / f"part-{s['shard']:05d}.parquet", job.input_dir)
    m = manifest(src)
    m.update(job_id=dst.name, status="running", shards=m["shards"][: n + 1])
    m.pop("result", None)
    job.write_manifest(m)
    cache_srv = RedisServer(work / "profile-cache").start()
    try:
        model = load_model(work / "new" / f"hashing-{dim}", device="cpu", precision="fp32",
                           threads=1)
        cache = EmbeddingCache.from_url(cache_srv.url(0), dim)

        def ctx(shard: int) -> ShardContext:
            return ShardContext(job=job, shard=shard, queue="cpu", hostname="profile",
                                max_attempts=3, max_batch_tokens=4096,
                                load_model=lambda: model, cache_for=lambda _dim: cache)

        embed_shard(ctx(0))  # warm-up
        prof, t0 = cProfile.Profile(), time.perf_counter()
        prof.enable()
        for shard in range(1, n + 1):
            embed_shard(ctx(shard))
        prof.disable()
        print(f"{n} shards in {time.perf_counter() - t0:.2f}s "
              f"({1000 * (time.perf_counter() - t0) / n:.0f} ms per shard), by own time:")
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    finally:
        cache_srv.stop()
    return 0


# -- helpers -------------------------------------------------------------------------------------

def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env=env, cwd=env["PYTHONPATH"], check=True, stdout=subprocess.DEVNULL)


def corpus(path: Path, docs: int, seed: int, env: dict[str, str]) -> Path:
    if not path.is_file():
        run([PY, str(ROOT / "benchmarks" / "corpus.py"), "--synthetic-million", "--docs",
             str(docs), "--seed", str(seed), "--out", str(path)], env)
    return path


def split(path: Path, k: int, work: Path) -> list[Path]:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    step, parts = -(-len(lines) // k), [work / f"{path.stem}-part{i}.jsonl" for i in range(k)]
    for i, p in enumerate(parts):
        p.write_text("".join(lines[i * step:(i + 1) * step]), encoding="utf-8")
    return parts


def submit(corpus_path: Path, out: Path, bundle: Path, broker: RedisServer, job_id: str,
           env: dict[str, str]) -> Path:
    run([PY, "-m", "producer", "submit", str(corpus_path), "--out", str(out), "--model",
         str(bundle), "--broker", broker.url(0), "--job-id", job_id, "--precision", "fp32"], env)
    return out / job_id


def staged_at(m: dict[str, Any]) -> float:
    """When staging ended: streaming staging records it (submitted_at is its start)."""
    return float((m.get("staging") or {}).get("finished_at") or m["submitted_at"])


def tree_env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "TOKENIZERS_PARALLELISM": "false"}


def manifest(job_dir: Path) -> dict[str, Any]:
    return json.loads((job_dir / "manifest.json").read_text())


def used_memory(srv: RedisServer) -> int:
    return int(srv.client().info("memory")["used_memory"])


def wait_finished(dirs: list[Path], broker: RedisServer, timeout: float = 7200) -> int:
    """Poll until every job has a result; returns the broker's peak used_memory meanwhile."""
    peak, deadline = 0, time.monotonic() + timeout
    while not all("result" in manifest(d) for d in dirs):
        peak = max(peak, used_memory(broker))
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout}s: {dirs}")
        time.sleep(0.5)
    return peak


def task_times(job_dir: Path) -> tuple[float, float, float]:
    """(seconds inside tasks, first start, last end): attempt record → embeddings file."""
    busy, first, last = 0.0, float("inf"), 0.0
    for s in manifest(job_dir)["shards"]:
        name = f"{s['shard']:05d}"
        recs = sorted((job_dir / "_state" / "attempts").glob(f"{name}.*"),
                      key=lambda p: int(p.suffix[1:]))
        start = json.loads(recs[-1].read_text())["time"]
        end = (job_dir / "embeddings" / f"part-{name}.parquet").stat().st_mtime
        busy += end - start
        first, last = min(first, start), max(last, end)
    return busy, first, last


def redelivered(job_dir: Path) -> int:
    """Shards with more than one attempt (a redelivered or retried task)."""
    counts = Counter(p.name.split(".")[0] for p in (job_dir / "_state" / "attempts").iterdir())
    return sum(1 for n in counts.values() if n > 1)


def print_table(title: str, res: dict[str, Any]) -> None:
    print(f"\n{title}\n" + "\n".join(f"  {k:45} {v:,}" if isinstance(v, (int, float))
                                      else f"  {k:45} {v}" for k, v in res.items()))


if __name__ == "__main__":
    raise SystemExit(main())
