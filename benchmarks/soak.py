"""Soak under chaos: jobs through real Redis and N workers while faults land at seeded times.

    python benchmarks/soak.py                     # 10 minutes, 3 workers, seed 0
    python benchmarks/soak.py --minutes 1 --partition-s 10   # the CI version (test_soak.py)

The hashing bundle (``producer export hashing --dim D``: inference nearly free, so the
plumbing is what runs), a broker Redis with AOF, and ``--workers`` real ``celery -A worker
worker`` processes, each talking to Redis through its own relay on 127.0.0.1
(tests/relay.py). Jobs are submitted one after another (``Job.wait``: the producer's own
reconciler re-sends what a broker restart lost) while three kinds of fault land at seeded
random times: a worker SIGKILLed (this script restarts it, as a supervisor would), a worker
partitioned for ``--partition-s`` then healed, Redis shut down and restarted on its port.

At the end every job is classified by tests/checker.py (lost = duplicated = unexpected = 0),
and every worker started must be consuming: with the others frozen it has to take a shard of a
probe job within ``--consume-s``. One summary row is printed and the run is written to
``benchmarks/results/soak.json`` (``--json``). Exit 1 when any job is not exactly once or a
worker is not consuming.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.job import Job, submit  # noqa: E402
from tests.checker import check_job  # noqa: E402
from tests.procs import RedisServer, Worker  # noqa: E402
from tests.relay import Relay  # noqa: E402
from worker.export.hashing import export_hashing_bundle  # noqa: E402

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega").split()
ENV = {"EMBED_VISIBILITY_TIMEOUT": "12", "EMBED_UNACKED_RESTORE_INTERVAL": "1",
       "EMBED_SOFT_TIME_LIMIT": "8", "EMBED_TIME_LIMIT": "10", "EMBED_THREADS": "1",
       "EMBED_FAULTS": "sleep=0.05"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long faults and jobs run")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64, help="hashing bundle dimension")
    ap.add_argument("--docs", type=int, default=120, help="documents per job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--partition-s", type=float, default=45.0, help="length of a partition")
    ap.add_argument("--consume-s", type=float, default=90.0,
                    help="time a worker gets to take a probe shard at the end")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="embedfleet-soak-"))
    try:
        result = soak(tmp, args)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    cols = ["minutes", "workers", "jobs", "chunks", "lost", "duplicated", "unexpected",
            "kills", "partitions", "redis_restarts", "consuming_at_end", "passed", "wall_s"]
    print(" | ".join(cols))
    print(" | ".join(str(result[c]) for c in cols))
    print(f"written to {args.json}")
    return 0 if result["passed"] else 1


def schedule(rng: random.Random, seconds: float, partition_s: float) -> list[tuple[float, str]]:
    """Seeded fault times: each kind at least once, about one per kind per 3 minutes, spread
    over the run so that a partition ends (and the last fault settles) before the end.

    >>> [k for _, k in schedule(random.Random(0), 60, 10)]
    ['redis_restart', 'partition', 'kill']
    """
    per_kind = max(1, round(seconds / 180))
    last = max(1.0, seconds - partition_s - 5)
    events = [(rng.uniform(5, last), kind) for kind in ("kill", "partition", "redis_restart")
              for _ in range(per_kind)]
    return sorted(events)


def corpus(path: Path, rng: random.Random, n: int, tag: str) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            f.write(json.dumps({"id": f"{tag}-{i}", "text": f"{tag} {text}"}) + "\n")
    return path


def soak(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    t_start = time.monotonic()
    bundle = export_hashing_bundle(tmp / f"hashing-{args.dim}", args.dim, log=lambda _: None)
    srv = RedisServer(tmp / "redis", appendonly=True).start()
    relays = [Relay(srv.port) for _ in range(args.workers)]
    workers: list[Worker] = []
    jobs: list[Job] = []
    counts = {"kills": 0, "partitions": 0, "redis_restarts": 0}
    log: list[dict[str, Any]] = []
    try:
        for i, relay in enumerate(relays):
            env = {**ENV, "EMBED_BROKER_URL": relay.url(0), "EMBED_CACHE_URL": relay.url(1),
                   "EMBED_HOME": str(tmp / "home")}
            workers.append(Worker(env, tmp / f"soak{i}.log", name=f"soak{i}").start())
        seconds = args.minutes * 60
        events = schedule(rng, seconds, args.partition_s)
        heal_at: dict[int, float] = {}
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds or heal_at:
            now = time.monotonic() - t0
            while events and events[0][0] <= now:
                _, kind = events.pop(0)
                victim = rng.choice([v for v in range(args.workers) if v not in heal_at])
                log.append({"t": round(now, 1), "fault": kind, "worker": victim})
                if kind == "kill":
                    workers[victim].kill()
                elif kind == "partition":
                    relays[victim].partition()
                    heal_at[victim] = now + args.partition_s
                else:
                    srv.stop(nosave=True)  # AOF with fsync always keeps every write
                    srv.start()
                counts["kills" if kind == "kill" else f"{kind}s"] += 1
            for v, t in list(heal_at.items()):
                if now >= t:
                    relays[v].heal()
                    del heal_at[v]
                    log.append({"t": round(now, 1), "fault": "heal", "worker": v})
            for w in workers:  # the supervisor: restart a worker that exited
                if w.proc is not None and w.proc.poll() is not None:
                    w.proc = None
                    w.start()
            busy = [j for j in jobs if not j.status().finished]
            if len(busy) < 2 and time.monotonic() - t0 < seconds:  # two jobs in flight
                tag = f"j{len(jobs):03d}"
                jobs.append(submit(corpus(tmp / f"{tag}.jsonl", rng, args.docs, tag),
                                   tmp / "out", model=str(bundle), precision="fp32",
                                   broker=srv.url(0), job_id=tag, shard_tokens=400,
                                   max_batch_tokens=256))
            time.sleep(0.5)
        for j in jobs:  # the producer's reconciler: re-sends what a restart lost
            j.wait(poll_s=0.5, timeout_s=600)
        checks = [check_job(j.path) for j in jobs]
        consuming = probe_consumers(tmp, workers, bundle, srv, args.consume_s, rng)
    finally:
        for w in workers:
            w.stop()
        for r in relays:
            r.close()
        srv.stop()
    total = {k: sum(getattr(c, k) for c in checks) for k in (
        "expected", "ok", "lost", "duplicated", "unexpected", "rejected", "failed")}
    return {
        "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:]),
        "minutes": args.minutes, "workers": args.workers, "seed": args.seed, "dim": args.dim,
        "jobs": len(jobs), "chunks": total["expected"], **total, **counts,
        "consuming_at_end": sum(consuming.values()), "consuming": consuming,
        "passed": (total["ok"] == total["expected"] and all(c.clean for c in checks)
               and all(consuming.values()) and len(consuming) == args.workers),
        "faults": log, "wall_s": round(time.monotonic() - t_start, 1),
        "cores": os.cpu_count(), "loadavg_end": os.getloadavg()[0],
    }


def probe_consumers(tmp: Path, workers: list[Worker], bundle: Path, srv: RedisServer,
                    timeout: float, rng: random.Random) -> dict[str, bool]:
    """Each worker alone (the others frozen) must take a shard of a small probe job.

    A frozen worker may still hold a BRPOP (1 s) that Redis answers with the next message
    even though the worker is stopped: the probe job is sent after that second, and has many
    more shards than there are frozen workers anyway.
    """
    out: dict[str, bool] = {}
    for i, w in enumerate(workers):
        others = [o for o in workers if o is not w]
        for o in others:
            o.freeze()
        try:
            time.sleep(1.5)  # kombu's BRPOP timeout: the frozen workers' last BRPOPs end
            tag = f"probe{i}"
            job = submit(corpus(tmp / f"{tag}.jsonl", rng, 20 * len(workers), tag),
                         tmp / "out", model=str(bundle), precision="fp32", broker=srv.url(0),
                         job_id=tag, shard_tokens=100)
            deadline = time.monotonic() + timeout
            took = False
            while not took and time.monotonic() < deadline:
                took = any(str(r.get("host", "")).startswith(f"{w.name}@")
                           for s in job.dir.manifest.shards for r in job.dir.attempts(s.shard))
                time.sleep(0.2)
            out[w.name] = took
        finally:
            for o in others:
                o.freeze(False)
        job.wait(poll_s=0.5, timeout_s=300)
    return out


if __name__ == "__main__":
    sys.exit(main())
