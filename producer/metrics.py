"""Fleet metrics in Prometheus text format (``producer metrics``): what to autoscale on.

From the broker (Redis), read fresh on every scrape:

    embedfleet_queue_depth{queue,priority}      messages waiting (LLEN of each priority list,
                                                the queue's job queues' included)
    embedfleet_tasks_unacked{queue}             messages a worker holds (in flight)
    embedfleet_job_queued{job,queue}            waiting messages per job (bodies decoded)
    embedfleet_job_unacked{job}                 in-flight messages per job

From the job directories named with ``--jobs`` (metrics shards are immutable once written, so
each file is read once per process and its sums kept):

    embedfleet_job_shards{job,state}            done, failed, pending (file listings, no reads)
    embedfleet_worker_tokens_total{worker}      real tokens through inference
    embedfleet_worker_batch_seconds_{sum,count} inference time and batches: mean batch latency
    embedfleet_worker_tokens_per_second{worker} tokens_total / batch seconds
    embedfleet_worker_failed_attempts_total{worker}  attempts that did not write their shard
                                                (an error or a crash), counted once the shard
                                                is done or failed

The KEDA ScaledObject in docs/fleet.md scales on queue depth + unacked per worker.
"""

from __future__ import annotations

import base64
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from producer.priority import step_name
from storage.jobfs import job_path
from worker.fairshare import PRIORITY_STEPS, all_list_keys, base_of

HELP = {
    "embedfleet_queue_depth": ("gauge", "Messages waiting in a queue's priority list."),
    "embedfleet_tasks_unacked": ("gauge", "Messages delivered to a worker, not yet acked."),
    "embedfleet_job_queued": ("gauge", "Messages of a job waiting in a queue."),
    "embedfleet_job_unacked": ("gauge", "Messages of a job delivered to a worker, not acked."),
    "embedfleet_job_shards": ("gauge", "Shards of a job by state."),
    "embedfleet_worker_tokens_total": ("counter", "Real tokens embedded (inference batches)."),
    "embedfleet_worker_batch_seconds": ("summary", "Inference time per batch."),
    "embedfleet_worker_tokens_per_second": ("gauge", "Tokens per second of inference."),
    "embedfleet_worker_failed_attempts_total": ("counter", "Ended attempts that wrote no shard."),
}


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def message_job(raw: bytes | str) -> str:
    """The job id a Celery message (kombu's Redis JSON envelope) is for; "" if it names none.

    >>> body = base64.b64encode(json.dumps([[{"job_id": "j1", "shard": 0}], {}, {}]).encode())
    >>> message_job(json.dumps({"body": body.decode(), "properties": {}}))
    'j1'
    """
    try:
        env = json.loads(raw)
        if isinstance(env, list):  # the unacked hash holds [message, exchange, routing_key]
            env = env[0]
        body = env["body"]
        if (env.get("properties") or {}).get("body_encoding", "base64") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0].get("job_id", "")) if args and isinstance(args[0], dict) else ""
    except (ValueError, KeyError, TypeError, IndexError):
        return ""


def broker_samples(client: Any, queues: Iterable[str]) -> list[Sample]:
    """Queue depth per queue and priority, unacked per queue, both per job (one pipeline).
    A queue's figures include its job queues' (worker/fairshare.py)."""
    out: list[Sample] = []
    queued: Counter[tuple[str, str]] = Counter()
    for q in queues:
        lists = all_list_keys(client, q)
        for step in PRIORITY_STEPS:
            msgs = [m for key, s in lists if s == step for m in client.lrange(key, 0, -1)]
            out.append(Sample("embedfleet_queue_depth", {"queue": q, "priority": step_name(step)},
                              len(msgs)))
            queued.update((message_job(m), q) for m in msgs)
    unacked: Counter[str] = Counter()
    unacked_jobs: Counter[str] = Counter()
    for raw in client.hvals("unacked"):
        try:
            rk = str(json.loads(raw)[2])
        except (ValueError, IndexError, TypeError):
            rk = ""
        unacked[base_of(rk) or rk] += 1
        unacked_jobs[message_job(raw)] += 1
    for q in queues:
        out.append(Sample("embedfleet_tasks_unacked", {"queue": q}, unacked.get(q, 0)))
    out += [Sample("embedfleet_job_queued", {"job": j or "unknown", "queue": q}, n)
            for (j, q), n in sorted(queued.items())]
    out += [Sample("embedfleet_job_unacked", {"job": j or "unknown"}, n)
            for j, n in sorted(unacked_jobs.items())]
    return out


@dataclass
class _ShardFile:
    """What one metrics shard says, per worker (read once: the file never changes)."""

    attempt: int = 0
    by_host: dict[str, list[float]] = field(default_factory=dict)  # tokens, ms, batches


class Collector:
    """Everything ``producer metrics`` reports; ``text()`` is one scrape."""

    def __init__(self, broker: str, queues: list[str], jobs: list[str]) -> None:
        self.broker, self.queues, self.jobs = broker, queues, [job_path(j) for j in jobs]
        self._files: dict[Path, _ShardFile] = {}
        self._attempt_hosts: dict[Path, str] = {}
        self._failed: set[tuple[Path, int]] = set()

    def text(self) -> str:
        import redis

        r = redis.Redis.from_url(self.broker, socket_timeout=5, socket_connect_timeout=5)
        with r:
            samples = broker_samples(r, self.queues)
        for job in self.job_dirs():
            samples += self._job_samples(job)
        samples += self._worker_samples()
        return render(samples)

    def job_dirs(self) -> list[Path]:
        out = []
        for p in self.jobs:
            if (p / "manifest.json").is_file():
                out.append(p)
            elif p.is_dir():
                out += sorted(d for d in p.iterdir() if (d / "manifest.json").is_file())
        return out

    def _job_samples(self, root: Path) -> list[Sample]:
        from storage.jobdir import JobDir

        jd = JobDir(root)
        total = len(jd.shard_entries())
        done = len(list(jd.embeddings_dir.glob("part-*.parquet")))
        marked = list((jd.state_dir / "failed").glob("part-*.json"))
        failed = len(marked)
        self._failed |= {(jd.root, int(p.stem.split("-")[1])) for p in marked}
        for p in jd.metrics_dir.glob("part-*.parquet"):
            if p not in self._files:
                self._files[p] = _read_shard_metrics(p)
        self._scan_attempts(jd)
        job = root.name
        return [Sample("embedfleet_job_shards", {"job": job, "state": s}, n) for s, n in
                (("done", done), ("failed", failed),
                 ("pending", max(0, total - done - failed)))]

    def _scan_attempts(self, jd: Any) -> None:
        """Remember the host of every ended attempt file (running ones have in-flight files)."""
        running = {p.name for p in (jd.state_dir / "inflight").glob("*.*")}
        for p in (jd.state_dir / "attempts").glob("*.*"):
            if p not in self._attempt_hosts and p.name not in running:
                try:
                    self._attempt_hosts[p] = str(json.loads(p.read_text() or "{}")
                                                 .get("host", ""))
                except (OSError, ValueError):
                    continue

    def _worker_samples(self) -> list[Sample]:
        sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        ok: set[tuple[Path, int, int]] = set()
        for p, f in self._files.items():
            ok.add((p.parent.parent, int(p.stem.split("-")[1]), f.attempt))
            for host, v in f.by_host.items():
                sums[host] = [a + b for a, b in zip(sums[host], v)]
        failed: Counter[str] = Counter()
        ended = {(job, shard) for job, shard, _ in ok} | self._failed
        for p, host in self._attempt_hosts.items():
            job, (shard, _, n) = p.parent.parent.parent, p.name.partition(".")
            if (job, int(shard)) in ended and (job, int(shard), int(n)) not in ok:
                failed[host] += 1  # counted once its shard is done or failed
        out = []
        for host in sorted(set(sums) | set(failed)):
            tokens, ms, batches = sums[host]
            w = {"worker": host}
            out += [Sample("embedfleet_worker_tokens_total", w, tokens),
                    Sample("embedfleet_worker_batch_seconds_sum", w, round(ms / 1000, 3)),
                    Sample("embedfleet_worker_batch_seconds_count", w, batches),
                    Sample("embedfleet_worker_tokens_per_second", w,
                           round(tokens / (ms / 1000), 1) if ms else 0.0),
                    Sample("embedfleet_worker_failed_attempts_total", w, failed[host])]
        return out


def _read_shard_metrics(p: Path) -> _ShardFile:
    from storage.metrics import read_metric_rows

    f = _ShardFile()
    for r in read_metric_rows([p], ("batch_index", "real_tokens", "inference_ms", "hostname",
                                    "attempt")):
        f.attempt = int(r.get("attempt") or 0)
        if int(r.get("batch_index") or 0) < 0:
            continue  # the cache-hit row: no inference
        v = f.by_host.setdefault(str(r.get("hostname") or ""), [0.0, 0.0, 0.0])
        v[0] += int(r.get("real_tokens") or 0)
        v[1] += float(r.get("inference_ms") or 0.0)
        v[2] += 1
    return f


def render(samples: list[Sample]) -> str:
    """Prometheus text exposition format (0.0.4): HELP/TYPE once per family.

    >>> print(render([Sample("embedfleet_queue_depth", {"queue": "cpu"}, 3)]), end="")
    # HELP embedfleet_queue_depth Messages waiting in a queue's priority list.
    # TYPE embedfleet_queue_depth gauge
    embedfleet_queue_depth{queue="cpu"} 3
    """
    lines, seen = [], set()
    for s in samples:
        family = s.name.removesuffix("_sum").removesuffix("_count")
        if family not in seen and family in HELP:
            seen.add(family)
            kind, text = HELP[family]
            lines += [f"# HELP {family} {text}", f"# TYPE {family} {kind}"]
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
        value = int(s.value) if float(s.value).is_integer() else s.value
        lines.append(f"{s.name}{{{labels}}} {value}" if labels else f"{s.name} {value}")
    return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def serve(collector: Collector, bind: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server answering GET /metrics with one scrape (call ``serve_forever``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "only /metrics")
                return
            try:
                body, code = collector.text().encode(), 200
            except Exception as exc:  # the broker is down: say so, as a scrape error
                body, code = f"scrape failed: {type(exc).__name__}: {exc}\n".encode(), 503
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer((bind, port), Handler)
