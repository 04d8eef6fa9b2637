"""Real processes for integration tests: a throwaway redis-server and celery workers.

Never the shared Redis on 6379: every server here listens on a free port with its data in a
temp dir. Workers are real ``celery -A worker worker`` subprocesses in their own sessions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from producer.local import free_port, redis_server_binary

ROOT = Path(__file__).resolve().parent.parent


class RedisServer:
    def __init__(self, workdir: Path, *, appendonly: bool = False, port: int | None = None,
                 extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        # No retries: redis-py 8 retries SHUTDOWN with backoff after the server hangs up.
        return redis.Redis(port=self.port, db=db, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", str(self.workdir), "--save", "",
               "--appendonly", "yes" if self.appendonly else "no",
               "--appendfsync", "always", "--logfile", str(self.workdir / "redis.log"),
               *self.extra]
        self.proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, nosave: bool = True) -> None:
        if self.proc is None:
            return
        try:
            self.client().shutdown(nosave=nosave)
        except redis.RedisError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


class Worker:
    """One ``celery -A worker worker`` process (prefork, ``-c 1`` by default)."""

    def __init__(self, env: dict[str, str], log: Path, *, queue: str = "cpu", name: str = "w1",
                 concurrency: int = 1,
                 flags: tuple[str, ...] = ("--without-gossip", "--without-mingle"),
                 cwd: Path = ROOT) -> None:
        self.env = {**os.environ, **env}
        self.cwd = cwd  # the source tree it runs (benchmarks run an old release from elsewhere)
        self.flags = flags
        self.log = log
        self.queue = queue
        self.name = name
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Worker:
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", self.queue,
               "-c", str(self.concurrency), "-P", "prefork", "-n", f"{self.name}@%h",
               *self.flags, "-l", "INFO"]
        f = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=f,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        self.wait_for(" ready.", timeout)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited ({self.proc.returncode}):\n{self.text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not in worker log:\n{self.text()[-4000:]}")
            time.sleep(0.1)

    def children(self) -> list[int]:
        import psutil

        if self.proc is None:
            return []
        try:
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or, ``frozen=False``, SIGCONT) the worker and its pool: while frozen it
        sends the broker nothing, so a queue length read then stays true until it thaws."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                os.killpg(self.proc.pid, signal.SIGCONT)  # a frozen worker must see the SIGTERM
                self.proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None


def http_get(url: str, auth: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    """GET with optional basic auth; (status, body), status 0 when nothing answers."""
    import base64
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def rabbitmq_up(host: str = "127.0.0.1", port: int = 5672) -> bool:
    """True when something accepts connections on RabbitMQ's port."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def flower_process(broker: str, log: Path, auth: str) -> Iterator[str]:
    """``celery -A worker flower`` on a free 127.0.0.1 port with basic auth; yields its base URL.

    Started before the workers: Flower builds its task list from events it receives live.
    """
    port = free_port()
    argv = [str(Path(sys.executable).parent / "celery"), "-A", "worker", "flower",
            f"--port={port}", "--address=127.0.0.1", f"--basic_auth={auth}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "CELERY_"))}
    env["EMBED_BROKER_URL"] = broker
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while http_get(f"{base}/healthcheck")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flower did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.2)
        yield base
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
