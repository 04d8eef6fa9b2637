"""Flower watching a real fleet: a throwaway redis-server, one real worker, a real MiniLM job.

Task results are ignored by the app (``task_ignore_result=True``, no result backend), yet Flower
shows them: the worker puts ``saferepr(return value)`` (a Python repr, cut at 1024 characters)
into the ``task-succeeded`` event, and Flower keeps its state from events. So ``/api/tasks``
has the shard summary while ``/api/task/result/<id>``, which asks the result backend, has none.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from producer.job import Job, submit
from tests.conftest import SAMPLE
from tests.procs import Worker, flower_process, http_get

pytestmark = pytest.mark.integration

AUTH = "user:pw"
TASK = "embedfleet.embed_shard"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def http(url: str, auth: str | None = AUTH, timeout: float = 10) -> tuple[int, bytes]:
    return http_get(url, auth=auth, timeout=timeout)


def api(base: str, path: str) -> Any:
    status, body = http(base + path)
    assert status == 200, (path, status, body[:500])
    return json.loads(body)


def poll(fn: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """``fn()`` until it returns something truthy (Flower learns from events, asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.fixture
def flower(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``celery -A worker flower`` on 127.0.0.1 with basic auth; yields its base URL.

    Started before the worker: Flower builds its task list from events it receives live. With
    Flower in use, events are on (EMBED_EVENTS=1) for the producer and the workers.
    """
    monkeypatch.setenv("EMBED_EVENTS", "1")
    with flower_process(redis_url, tmp_path / "flower.log", AUTH) as base:
        yield base


def run_small_job(tmp_path: Path, fleet: Callable[..., Worker], redis_url: str,
                  bundle: Path) -> tuple[Worker, Job]:
    """One worker, then the first 20 documents of the sample as job ``flower``."""
    worker = fleet(name="flower1", env={"EMBED_EVENTS": "1"})  # Flower needs events
    corpus = tmp_path / "corpus.jsonl"
    lines = SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:20]
    corpus.write_text("".join(lines), encoding="utf-8")
    job = submit(corpus, tmp_path / "out", model=str(bundle), broker=redis_url,
                 job_id="flower")
    st = job.wait(timeout_s=300)
    assert st.status == "succeeded", st
    return worker, job


def test_flower_shows_workers_tasks_and_results(tmp_path: Path, flower: str, fleet: Any,
                                                redis_url: str, minilm_bundle: Path) -> None:
    worker, job = run_small_job(tmp_path, fleet, redis_url, minilm_bundle)
    node = f"{worker.name}@{socket.gethostname()}"
    st = job.status()
    shards = {s.shard for s in job.dir.reload().shards}

    # The worker, with the queue it consumes (remote-control `inspect`, hence refresh=1).
    workers = poll(lambda: (w := api(flower, "/api/workers?refresh=1")).get(node) and w,
                   what=f"{node} in /api/workers")
    info = workers[node]
    assert [q["name"] for q in info["active_queues"]] == ["cpu"]
    assert TASK in info["registered"]
    assert info["stats"]["prefetch_count"] == 1  # worker_prefetch_multiplier=1, -c 1
    assert info["conf"]["task_acks_late"] is True and info["conf"]["accept_content"] == ["json"]

    # One SUCCESS task per shard, from task events.
    def succeeded() -> dict[str, Any]:
        tasks = api(flower, f"/api/tasks?taskname={TASK}&state=SUCCESS")
        return tasks if len(tasks) == len(shards) else {}

    tasks = poll(succeeded, what=f"{len(shards)} succeeded {TASK} tasks in /api/tasks")
    seen, chunks, tokens = set(), 0, 0
    for uuid, t in tasks.items():
        # fair share: a job's tasks travel on its own queue, shown as cpu.job.<job id>
        assert t["name"] == TASK and t["worker"] == node, t
        assert t["routing_key"] in ("cpu", "cpu.job.flower"), t
        (payload,) = ast.literal_eval(t["args"])  # argsrepr: a Python repr, not JSON
        assert payload["job_id"] == "flower" and payload["job_dir"] == str(job.path)
        seen.add(payload["shard"])
        # The return value, ignored by the result backend, travels in the task-succeeded event.
        result = ast.literal_eval(t["result"])
        assert result["shard"] == payload["shard"] and result["status"] == "done", result
        # The provider the worker's start-up probe chose (CPU EP or OpenVINO EP), as in the
        # shard's own metrics file.
        ran = set(pq.read_table(job.dir.metrics_path(payload["shard"]))["provider"].to_pylist())
        assert ran == {result["provider"]}, (ran, result)
        chunks += result["chunks"]
        tokens += result["tokens"]
        assert api(flower, f"/api/task/info/{uuid}")["result"] == t["result"]
    assert seen == shards
    assert chunks == st.chunks and tokens == st.tokens, (chunks, tokens, st)

    # No result backend: the AsyncResult endpoint answers 503 (use /api/task/info instead).
    assert http(f"{flower}/api/task/result/{next(iter(tasks))}")[0] == 503

    # The API needs the password; the Prometheus endpoint and healthcheck do not (by design).
    assert http(f"{flower}/api/workers", auth=None)[0] == 401
    assert http(f"{flower}/api/workers", auth="user:wrong")[0] == 401
    assert http(f"{flower}/api/tasks", auth=None)[0] == 401
    status, metrics = http(f"{flower}/metrics", auth=None)
    assert status == 200
    line = f'flower_events_total{{task="{TASK}",type="task-succeeded",worker="{node}"}}'
    assert f"{line} {float(len(shards))}" in metrics.decode(), metrics.decode()[:2000]


def browser() -> str | None:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    return None


def test_flower_tasks_page_screenshot(tmp_path: Path, flower: str, fleet: Any, redis_url: str,
                                      minilm_bundle: Path) -> None:
    """Headless Chromium renders the tasks page with the job's task (basic auth in the URL)."""
    exe = browser()
    if exe is None:
        pytest.skip("no chromium: apt-get install -y --no-install-recommends chromium")
    run_small_job(tmp_path, fleet, redis_url, minilm_bundle)
    tasks = poll(lambda: api(flower, f"/api/tasks?taskname={TASK}&state=SUCCESS"),
                 what="a succeeded task")
    url = flower.replace("http://", f"http://{AUTH}@") + "/tasks"
    common = [exe, "--headless", "--no-sandbox", "--disable-gpu",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--window-size=1400,900",
              # The task table is filled by an XHR after load: let it finish.
              "--virtual-time-budget=8000"]

    # What the page shows once its scripts ran: the task's id and state in the table.
    dom = subprocess.run([*common, f"--user-data-dir={tmp_path / 'chromium-dom'}",
                          "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for uuid in tasks:
        assert uuid in dom.stdout, dom.stdout[-3000:]
    assert "SUCCESS" in dom.stdout and TASK in dom.stdout

    png = tmp_path / "flower-tasks.png"
    shot = subprocess.run([*common, f"--user-data-dir={tmp_path / 'chromium'}",
                           f"--screenshot={png}", url], capture_output=True, text=True,
                          timeout=90)
    assert png.is_file(), shot.stderr[-2000:]
    assert png.stat().st_size > 10_000, png.stat().st_size
    if out := os.environ.get("EMBEDFLEET_SCREENSHOT"):  # e.g. docs/flower-tasks.png
        shutil.copyfile(png, out)


# --- large-fleet settings: no gossip, mingle or heartbeat unless EMBED_EVENTS=1 ----------------
@pytest.fixture
def plain_worker(tmp_path: Path, redis_server: Any,
                 redis_url: str) -> Iterator[Callable[..., Worker]]:
    """``celery -A worker worker -Q cpu`` with none of the ``--without-*`` flags: what the app's
    own defaults give a fleet worker."""
    started: list[Worker] = []

    def start(name: str, **env: str) -> Worker:
        e = {"EMBED_BROKER_URL": redis_url, "EMBED_CACHE_URL": redis_server.url(1),
             "EMBED_THREADS": "1", "EMBED_HOME": str(tmp_path / "home"), **env}
        w = Worker(e, tmp_path / f"{name}.log", name=name, flags=())
        started.append(w)
        return w.start()

    yield start
    for w in started:
        w.stop()


def broker_events(redis_server: Any, seconds: float) -> list[bytes]:
    """Channels of the event messages (``celeryev`` fanout) published on the broker."""
    sub = redis_server.client().pubsub()
    sub.psubscribe("*celeryev*")
    seen: list[bytes] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        m = sub.get_message(timeout=0.2)
        if m and m["type"] == "pmessage":
            seen.append(m["channel"])
    sub.close()
    return seen


def test_fleet_worker_sends_no_events_by_default(redis_server: Any, plain_worker: Any) -> None:
    worker = plain_worker("quiet")
    # Heartbeats go out every 2 s when on; 5 s of silence means none are sent.
    assert broker_events(redis_server, 5) == []
    assert "mingle: searching for neighbors" not in worker.text()
    bindings = redis_server.client().smembers("_kombu.binding.celeryev")
    assert not [b for b in bindings if b"celeryev." in b], bindings  # no gossip queue
    events_on = plain_worker("loud", EMBED_EVENTS="1")
    assert any(b"worker.heartbeat" in c for c in broker_events(redis_server, 5))
    assert "mingle: searching for neighbors" not in events_on.text()


def test_fleet_worker_with_events_shows_in_flower(tmp_path: Path, flower: str, redis_url: str,
                                                 plain_worker: Any, minilm_bundle: Path) -> None:
    worker = plain_worker("fleet1", EMBED_EVENTS="1")
    node = f"{worker.name}@{socket.gethostname()}"
    # Online from its heartbeats (events), and known to remote control (inspect).
    poll(lambda: api(flower, "/api/workers?status=1").get(node), what=f"{node} alive")
    poll(lambda: node in api(flower, "/api/workers?refresh=1"), what=f"{node} in /api/workers")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(SAMPLE.read_text(encoding="utf-8").splitlines(True)[:5]))
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), broker=redis_url,
                 job_id="fleet")
    assert job.wait(timeout_s=300).status == "succeeded"
    tasks = poll(lambda: api(flower, f"/api/tasks?taskname={TASK}&state=SUCCESS"),
                 what="a succeeded task from the fleet worker")
    assert {t["worker"] for t in tasks.values()} == {node}
