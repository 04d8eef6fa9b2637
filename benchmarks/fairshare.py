"""Fair share at equal priority (issue 30): a small job's time on one worker, alone, while a
large job runs (fair share: each job has its own queue, taken in turn), and the same with
``EMBED_FAIR_SHARE=0`` (one FIFO queue, the behaviour before), in one run.

    python benchmarks/fairshare.py       # --big 2000 --small 60 --shard-tokens 512 (MiniLM fp32)

A real redis-server and one ``celery -A worker worker -c 1``; the MiniLM bundle of the tests'
model cache (``--model`` to change); no embedding cache (``EMBED_CACHE_URL=none``) and distinct
texts per job, so every shard runs its model. A 5-document job runs first (the worker loads
the model); then the small job's time is measured from the moment its
``submit`` returned (every task queued) to its ``finished_at``; the large job is started
first and, once two of its shards landed, the small one is submitted; after each measurement
the large job is cancelled and its queue drained. Results: benchmarks/results/fairshare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from producer.cancel import cancel_job  # noqa: E402
from producer.job import Job, submit  # noqa: E402
from producer.priority import queue_depth  # noqa: E402
from producer.settings import ProducerSettings  # noqa: E402
from tests.checker import check_job  # noqa: E402
from tests.procs import RedisServer, Worker  # noqa: E402

WORDS = ("river stone lamp orchard violet engine harbor ladder quiet summer copper window "
         "garden thunder basket marble meadow signal winter paper").split()


def corpus(path: Path, n: int, salt: str) -> Path:
    """``n`` distinct ~50-token documents."""
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(40))
            f.write(json.dumps({"id": f"{salt}{i}", "text": f"{salt} {i} {words}"}) + "\n")
    return path


def landed(job: Job) -> list[float]:
    return sorted(p.stat().st_mtime for p in (job.path / "embeddings").glob("part-*.parquet"))


def wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := pred()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return got


def small_job(work: Path, name: str, a: argparse.Namespace, broker: str,
              settings: ProducerSettings) -> dict[str, Any]:
    job = submit(corpus(work / f"{name}.jsonl", a.small, name), work / "out", job_id=name,
                 model=a.model, precision="fp32", broker=broker, shard_tokens=a.shard_tokens,
                 stage_procs=1, settings=settings)
    t_sent = time.time()
    st = wait(lambda: job.status().finished and job.status(), 3600, f"{name} to finish")
    res = check_job(job.path)
    assert st.status == "succeeded" and res.clean and res.ok == res.expected, res.describe()
    done = float(json.loads((job.path / "manifest.json").read_text())["result"]["finished_at"])
    return {"job": name, "shards": st.shards, "tokens": st.tokens, "t_sent": t_sent,
            "finished_s": round(done - t_sent, 1), "t_done": done}


def with_big(work: Path, tag: str, a: argparse.Namespace, broker: RedisServer,
             fair: bool) -> dict[str, Any]:
    s = ProducerSettings(broker=broker.url(0), fair_share=fair)
    big = submit(corpus(work / f"big-{tag}.jsonl", a.big, f"big{tag}"), work / "out",
                 job_id=f"big-{tag}", model=a.model, precision="fp32", broker=broker.url(0),
                 shard_tokens=a.shard_tokens, stage_procs=1, settings=s)
    n_big = len(big.dir.reload().shards)
    wait(lambda: len(landed(big)) >= 2, 600, "the large job to start")
    row = small_job(work, f"small-{tag}", a, broker.url(0), s)
    row.update(big_shards=n_big, big_landed_meanwhile=sum(
        row["t_sent"] < t <= row["t_done"] for t in landed(big)))
    cancel_job(big.dir)
    r = broker.client()
    wait(lambda: queue_depth(r, "cpu") == 0 and r.hlen("unacked") == 0, 600, "the drain")
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=2000, help="documents of the large job")
    ap.add_argument("--small", type=int, default=60, help="documents of the small job")
    ap.add_argument("--shard-tokens", type=int, default=512)
    ap.add_argument("--model", default=str(ROOT / ".embedfleet/test-models/all-MiniLM-L6-v2"))
    a = ap.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = RedisServer(work / "broker").start()
        env = {"EMBED_BROKER_URL": broker.url(0), "EMBED_CACHE_URL": "none",
               "EMBED_HOME": str(work / "home"), "PYTHONPATH": str(ROOT)}
        w = Worker(env, work / "worker.log", name="fair").start()
        try:
            warm = ProducerSettings(broker=broker.url(0))
            a_warm = argparse.Namespace(**{**vars(a), "small": 5})
            small_job(work, "warm-up", a_warm, broker.url(0), warm)  # the worker loads the model
            rows = {"alone": small_job(work, "small-alone", a, broker.url(0),
                                       ProducerSettings(broker=broker.url(0))),
                    "fair_share": with_big(work, "fair", a, broker, fair=True),
                    "fifo": with_big(work, "fifo", a, broker, fair=False)}
        finally:
            w.stop()
            broker.stop()
    result = {"command": " ".join(["python benchmarks/fairshare.py", *sys.argv[1:]]),
              "big_docs": a.big, "small_docs": a.small, "shard_tokens": a.shard_tokens,
              "model": Path(a.model).name, "loadavg_start": load0,
              "loadavg_end": os.getloadavg()[0], "cpus": os.cpu_count(), "rows": rows}
    print(f"{'small job (' + str(a.small) + ' docs)':34}{'finished in, s':>16}"
          f"{'large-job shards meanwhile':>28}")
    for key, label in (("alone", "alone on the worker"),
                       ("fair_share", "while the large job runs, fair"),
                       ("fifo", "same, EMBED_FAIR_SHARE=0 (FIFO)")):
        r = rows[key]
        print(f"{label:34}{r['finished_s']:>16}{str(r.get('big_landed_meanwhile', '-')):>28}")
    print(f"(large job {rows['fair_share']['big_shards']} shards, small "
          f"{rows['alone']['shards']}; load average {load0:.1f} -> {os.getloadavg()[0]:.1f})")
    out = ROOT / "benchmarks" / "results" / "fairshare.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
