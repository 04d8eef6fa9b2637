"""``producer metrics`` scraped while jobs run (issue 30): the queue depth it reports is what the
broker holds, per priority list and per job; in-flight tasks are the unacked ones; per-worker
tokens are the metrics shards' sums. Real redis-server, a real celery worker (frozen with
SIGSTOP while a scrape and the broker are compared, so nothing moves in between)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from producer.local import free_port
from producer.metrics import Collector, serve
from producer.priority import queue_depth
from worker.fairshare import all_list_keys
from tests.conftest import write_jsonl
from tests.procs import http_get

pytestmark = pytest.mark.integration
LINE = re.compile(r'^(\w+)(?:\{(.*)\})? (\S+)$')


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = LINE.match(line)
        assert m, line
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def get(s: dict, name: str, **labels: str) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


def corpus(path: Path, n: int, salt: str) -> Path:
    return write_jsonl(path, [{"id": f"d{i}", "text": f"{salt} document {i} about rivers, "
                               "lamps and copper windows in a quiet summer garden"}
                              for i in range(n)])


def scrape(redis_url: str, out: Path) -> dict:
    res = CliRunner().invoke(main, ["metrics", "--broker", redis_url, "--queue", "cpu",
                                    "--jobs", str(out)])
    assert res.exit_code == 0, res.output
    return parse(res.output)


def test_metrics_match_the_broker_during_a_job(tmp_path: Path, fleet, redis_server,
                                               redis_url: str, minilm_bundle: Path) -> None:
    out, r = tmp_path / "out", redis_server.client()
    common = dict(model=str(minilm_bundle), precision="fp32", broker=redis_url,
                  shard_tokens=64, stage_procs=1)
    a = submit(corpus(tmp_path / "a.jsonl", 30, "alpha"), out, job_id="a", **common)
    b = submit(corpus(tmp_path / "b.jsonl", 6, "beta"), out, job_id="b", priority="high",
               **common)
    na, nb = len(a.dir.reload().shards), len(b.dir.reload().shards)
    s = scrape(redis_url, out)  # no worker yet: everything is queued
    assert get(s, "embedfleet_queue_depth", queue="cpu", priority="normal") == na
    assert get(s, "embedfleet_queue_depth", queue="cpu", priority="high") == nb
    assert get(s, "embedfleet_job_queued", job="a", queue="cpu") == na
    assert get(s, "embedfleet_job_queued", job="b", queue="cpu") == nb
    assert get(s, "embedfleet_tasks_unacked", queue="cpu") == 0
    assert get(s, "embedfleet_job_shards", job="a", state="pending") == na

    w = fleet(env={"EMBED_FAULTS": "sleep=0.5"})
    deadline = time.monotonic() + 240
    while True:  # frozen with a task of job a in flight (b, high, went first)
        assert time.monotonic() < deadline, "no task in flight"
        if r.hlen("unacked") and (out / "b" / "_SUCCESS").exists():
            w.freeze()
            if r.hlen("unacked"):
                break
            w.freeze(False)  # it acked between the look and the freeze
        time.sleep(0.05)
    try:
        s = scrape(redis_url, out)
        depth = sum(get(s, "embedfleet_queue_depth", queue="cpu", priority=p)
                    for p in ("high", "normal", "low", "9"))
        lists = all_list_keys(r, "cpu")  # cpu's priority lists and its jobs' queues'
        assert depth == queue_depth(r, "cpu") == sum(r.llen(k) for k, _ in lists)
        assert get(s, "embedfleet_tasks_unacked", queue="cpu") == r.hlen("unacked") == 1
        done = len(list((out / "a" / "embeddings").glob("*.parquet")))
        queued = get(s, "embedfleet_job_queued", job="a", queue="cpu")
        assert queued + get(s, "embedfleet_job_unacked", job="a") + done == na
        assert get(s, "embedfleet_job_shards", job="a", state="done") == done
        assert get(s, "embedfleet_job_shards", job="b", state="done") == nb
    finally:
        w.freeze(False)
    assert a.wait(timeout_s=300).status == "succeeded"

    port = free_port()
    server = serve(Collector(redis_url, ["cpu"], [str(out)]), "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, body = http_get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    assert code == 200
    s = parse(body.decode())
    rows = pq.read_table(out / "a" / "metrics").to_pylist() + pq.read_table(
        out / "b" / "metrics").to_pylist()
    batches = [x for x in rows if x["batch_index"] >= 0]
    host = batches[0]["hostname"]
    assert {x["hostname"] for x in rows} == {host}
    assert get(s, "embedfleet_worker_tokens_total", worker=host) == sum(
        x["real_tokens"] for x in batches)
    assert get(s, "embedfleet_worker_batch_seconds_count", worker=host) == len(batches)
    assert get(s, "embedfleet_worker_tokens_per_second", worker=host) > 0
    assert get(s, "embedfleet_worker_failed_attempts_total", worker=host) == 0
    assert get(s, "embedfleet_queue_depth", queue="cpu", priority="normal") == 0
