"""docker-compose.yml, checked without Docker: parse it, then run every service's command here.

No Docker engine runs on CI machines, so each service's ``command`` (and healthcheck) is
translated to this machine and started for real: compose ``${VAR:-default}`` interpolation with
a controlled environment, the hostnames ``redis``/``redis-cache`` rewritten to throwaway
redis-servers on free ports, ``/data`` to a temp dir, Flower's port to a free one, and
``celery``/``producer``/``python`` resolved from the project's virtualenv. A service counts as
working when it gets ready (Redis answers PING, a worker logs `` ready.``, Flower answers
``/healthcheck``, the producer exits 0) and its own healthcheck passes. The file must never
describe a command that does not work.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from producer.local import free_port, redis_server_binary
from tests.procs import ROOT, RedisServer, http_get

pytestmark = pytest.mark.integration

COMPOSE = ROOT / "docker-compose.yml"
FLEET_DOC = ROOT / "docs" / "fleet.md"
VENV_BIN = Path(sys.executable).parent
APP_UID = "10001"
REQUIRED = {"redis", "redis-cache", "worker-cpu", "worker-gpu", "flower", "producer"}
# What `.env` holds (docs/fleet.md#passwords); the tests run the Redis services with them.
PASSWORDS = {"REDIS_PASSWORD": "broker-pw-0123", "CACHE_PASSWORD": "cache-pw-4567"}
# Pools without time limits or with a shared interpreter break the delivery settings
# (soft/hard time limits, one process per shard); the queue purge drops work.
FORBIDDEN_ARGS = ("--pool=solo", "-P solo", "--pool solo", "-P threads", "--pool=threads",
                  "-P gevent", "-P eventlet", "--purge", "pickle", "-O fair")


# ---------------------------------------------------------------------------- compose helpers

_VAR = re.compile(r"\$(?:(?P<esc>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_EXPR = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``:-``, ``-``, ``:?``, ``?``.

    >>> interpolate("${A:-x} $${B} ${C-y}", {"A": "", "C": ""})
    'x ${B} '
    """

    def sub(m: re.Match[str]) -> str:
        if m.group("esc"):
            return "$"
        if m.group("named"):
            return env.get(m.group("named"), "")
        e = _EXPR.fullmatch(m.group("braced"))
        assert e, f"unsupported interpolation {m.group(0)!r}"
        val, op, arg = env.get(e["name"]), e["op"], e["arg"] or ""
        if op is None:
            return val or ""
        if op == ":-":
            return val if val else arg
        if op == "-":
            return val if val is not None else arg
        if op == ":+":
            return arg if val else ""
        if op == "+":
            return arg if val is not None else ""
        if (op == ":?" and not val) or (op == "?" and val is None):
            raise ValueError(f"required variable {e['name']} is missing a value: {arg}")
        return val or ""

    return _VAR.sub(sub, text)


def interpolate_all(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_all(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate_all(v, env) for k, v in node.items()}
    return node


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as ``docker compose config`` would see it with ``env`` in the shell."""
    return interpolate_all(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")), env or {})


def argv_of(value: str | list[str] | None) -> list[str]:
    """Compose ``command``/``entrypoint``: a list is exec form, a string is split like a shell."""
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def environment_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def flags(argv: list[str]) -> dict[str, str]:
    """``--name value`` pairs of a redis-server command line."""
    return {a[2:]: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}


def redis_argv(command: list[str]) -> list[str]:
    """The redis-server part of a service's ``sh -c "printf ... | exec redis-server - ..."``."""
    script = argv_of(command)[-1]
    return shlex.split(script[script.index("redis-server"):])


class AuthRedis(RedisServer):
    """A throwaway redis-server with the password the compose file's URLs carry."""

    def __init__(self, workdir: Path, password: str) -> None:
        super().__init__(workdir, extra=["--requirepass", password])
        self.password = password

    def client(self, db: int = 0) -> redis.Redis:  # type: ignore[override]
        return redis.Redis(port=self.port, db=db, password=self.password, socket_timeout=5)


def volume_targets(svc: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source for short-syntax volumes."""
    out = {}
    for v in svc.get("volumes") or []:
        parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
        out[parts[1]] = parts[0]
    return out


class Local:
    """Rewrites a container command line and environment for this machine."""

    def __init__(self, tmp: Path, ports: Mapping[str, int], flower_port: int | None = None):
        self.tmp, self.ports, self.flower_port = tmp, dict(ports), flower_port

    def text(self, s: str) -> str:
        for host, port in self.ports.items():
            s = re.sub(rf"(redis://(?:[^@/]*@)?){re.escape(host)}:6379\b",
                       rf"\g<1>127.0.0.1:{port}", s)
        s = re.sub(r"(?<![\w./-])/data(?=/|\b|$)", str(self.tmp / "data"), s)
        s = re.sub(r"(?<![\w./-])/corpus(?=/|\b|$)", str(self.tmp / "corpus"), s)
        if self.flower_port:
            s = s.replace("--port=5555", f"--port={self.flower_port}")
            s = s.replace("127.0.0.1:5555", f"127.0.0.1:{self.flower_port}")
            s = s.replace("--address=0.0.0.0", "--address=127.0.0.1")
        return s

    def argv(self, argv: list[str]) -> list[str]:
        return [self.text(a) for a in argv]

    def env(self, svc: dict[str, Any]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("EMBED_", "CELERY_", "FLOWER_"))}
        base["PATH"] = f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}"
        base["HOSTNAME"] = socket.gethostname()  # Docker sets it; healthchecks use $HOSTNAME
        base.update({k: self.text(v) for k, v in environment_of(svc).items()})
        return base


@contextmanager
def started(argv: list[str], env: Mapping[str, str],
            log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own session (cwd = repo root); kill its process group on exit."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env), stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers (prefork children)
        except ProcessLookupError:
            pass


def wait_until(ready: Any, proc: subprocess.Popen[bytes], log: Path, what: str,
               timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout:.0f}s:\n{tail(log)}")
        time.sleep(0.2)


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "<no log>"


def healthcheck_argv(svc: dict[str, Any]) -> list[str]:
    test = svc["healthcheck"]["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *rest = test
    assert kind in ("CMD", "CMD-SHELL"), test
    return ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest


def run_healthcheck(svc: dict[str, Any], local: Local, env: Mapping[str, str],
                    rewrite: Any = None) -> subprocess.CompletedProcess[str]:
    argv = local.argv(healthcheck_argv(svc))
    if rewrite:
        argv = [rewrite(a) for a in argv]
    return subprocess.run(argv, cwd=ROOT, env=dict(env), capture_output=True, text=True,
                          timeout=60)


def click_parse(args: list[str]) -> None:
    """Parse ``producer ARGS`` as the CLI would (types, choices, existing paths), run nothing."""
    from producer.cli import main

    with main.make_context("producer", list(args)) as ctx:
        name, cmd, rest = main.resolve_command(ctx, list(args))
        assert cmd is not None, args
        cmd.make_context(name or "", rest, parent=ctx).close()


# ---------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({"FLOWER_BASIC_AUTH": "admin:secret", **PASSWORDS})


def _auth_server(tmp_path_factory: pytest.TempPathFactory, name: str,
                 password: str) -> Iterator[RedisServer]:
    srv = AuthRedis(tmp_path_factory.mktemp(name), password).start()
    yield srv
    if srv.proc is not None:  # SIGTERM: redis-py's SHUTDOWN retries its connection for seconds
        srv.proc.terminate()
        srv.proc.wait(timeout=10)
        srv.proc = None


@pytest.fixture(scope="module")
def broker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _auth_server(tmp_path_factory, "broker", PASSWORDS["REDIS_PASSWORD"])


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    yield from _auth_server(tmp_path_factory, "cache", PASSWORDS["CACHE_PASSWORD"])


@pytest.fixture
def local(tmp_path: Path, broker_server: RedisServer, cache_server: RedisServer) -> Local:
    (tmp_path / "data").mkdir()
    broker_server.client().flushall()
    return Local(tmp_path, {"redis": broker_server.port, "redis-cache": cache_server.port},
                 flower_port=free_port())


# ---------------------------------------------------------------------------- the file itself

def test_compose_file_declares_the_fleet(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert REQUIRED <= set(services), sorted(services)

    # Broker: never evict a task, append every write to disk.
    broker = flags(redis_argv(services["redis"]["command"]))
    assert broker["maxmemory-policy"] == "noeviction"
    assert broker["appendonly"] == "yes" and broker["appendfsync"] == "everysec"
    assert "/data" in volume_targets(services["redis"])
    assert "ports" not in services["redis"], "the broker has no TLS: never publish it"
    # Cache: bounded, LFU eviction, never on disk.
    cache = flags(redis_argv(services["redis-cache"]["command"]))
    assert cache["maxmemory"] == "2gb" and cache["maxmemory-policy"] == "allkeys-lfu"
    assert cache["save"] == "" and cache.get("appendonly", "no") == "no"
    assert "ports" not in services["redis-cache"]
    # Both require a password that comes from `.env`, never from the file or an argv.
    raw = COMPOSE.read_text(encoding="utf-8")
    for name, var in (("redis", "REDIS_PASSWORD"), ("redis-cache", "CACHE_PASSWORD")):
        svc = services[name]
        assert environment_of(svc)[var] == PASSWORDS[var]
        assert "requirepass" in argv_of(svc["command"])[-1]
        assert PASSWORDS[var] not in " ".join(redis_argv(svc["command"]))
        assert f"${{{var}:?" in raw

    for name, queue in (("worker-cpu", "cpu"), ("worker-gpu", "gpu")):
        svc = services[name]
        argv = argv_of(svc["command"])
        assert argv[:4] == ["celery", "-A", "worker", "worker"], argv
        assert argv[argv.index("-Q") + 1] == queue
        env = environment_of(svc)
        assert env["EMBED_BROKER_URL"] == f"redis://:{PASSWORDS['REDIS_PASSWORD']}@redis:6379/0"
        assert env["EMBED_CACHE_URL"] == \
            f"redis://:{PASSWORDS['CACHE_PASSWORD']}@redis-cache:6379/0"
        assert env["EMBED_JOB_ROOTS"] == "/data/out"
        assert env["EMBED_MODEL_ROOTS"] == "/data/home/models"
        assert env["EMBED_HOME"].startswith("/data/")
        assert "EMBED_THREADS" in env
        assert volume_targets(svc)["/data"] == "jobs"
        assert svc["healthcheck"]["test"], name
    assert "profiles" not in services["worker-cpu"], "`docker compose up` starts a CPU worker"
    assert services["worker-cpu"]["build"]["dockerfile"] == "Dockerfile"

    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)

    flower = services["flower"]
    assert flower["profiles"] == ["monitor"]
    assert environment_of(flower)["FLOWER_BASIC_AUTH"] == "admin:secret"  # from the shell
    script = " ".join(argv_of(flower["command"]))
    assert "${FLOWER_BASIC_AUTH:?" in script, "flower must refuse to start without basic auth"
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"]), flower["ports"]

    producer = services["producer"]
    assert producer["profiles"] == ["tools"] and argv_of(producer["entrypoint"]) == ["producer"]
    assert volume_targets(producer)["/data"] == "jobs"
    assert services["export"]["profiles"] == ["tools"]
    assert {"jobs", "redis-data"} <= set(compose["volumes"])

    for name, svc in services.items():
        line = " ".join(argv_of(svc.get("entrypoint")) + argv_of(svc.get("command")))
        for bad in FORBIDDEN_ARGS:
            assert bad not in line, f"{name}: {bad!r} in {line!r}"
        assert "FLOWER_UNAUTHENTICATED_API" not in environment_of(svc), name
        # the redis image drops root by itself; MinIO's server (profile objstore) runs as its
        # image's user and holds only the bucket's volume, no embedfleet code
        if not svc["image"].startswith(("redis:", "quay.io/minio/")):
            assert str(svc.get("user", "0")).split(":")[0] not in ("0", "root"), name
        for port in svc.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on all hosts"


def test_compose_needs_only_the_passwords() -> None:
    """`docker compose up` on a laptop: the two passwords from `.env`, nothing else."""
    with pytest.raises(ValueError, match="REDIS_PASSWORD.*docs/fleet.md#passwords"):
        load_compose({})
    bare = load_compose(PASSWORDS)
    assert environment_of(bare["services"]["flower"])["FLOWER_BASIC_AUTH"] == ""
    assert environment_of(bare["services"]["worker-cpu"])["EMBED_THREADS"] == ""


def test_dockerfiles() -> None:
    cpu = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    gpu = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", cpu, re.MULTILINE)
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu and "torch==2.13.0" in cpu
    assert '".[cpu,export,flower]"' in cpu
    assert re.search(r"^FROM \$\{CUDA_IMAGE\}$", gpu, re.MULTILINE) and "nvidia/cuda:" in gpu
    assert '".[gpu,flower]"' in gpu
    installs = [ln for ln in gpu.splitlines() if "pip install" in ln and not ln.startswith("#")]
    assert not [ln for ln in installs if re.search(r"[\[,]cpu\b|onnxruntime[=>< \"]", ln)]
    for text in (cpu, gpu):
        assert re.search(r"^USER app$", text, re.MULTILINE)
        assert f"--uid {APP_UID}" in text and "chown -R app:app /data" in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "tests"} <= set(ignored)


# ---------------------------------------------------------------------------- run each service

@pytest.mark.parametrize("name", ["redis", "redis-cache"])
def test_redis_service_runs(name: str, compose: dict[str, Any], local: Local,
                            tmp_path: Path) -> None:
    svc = compose["services"][name]
    argv = argv_of(svc["command"])
    assert argv[:2] == ["sh", "-c"] and "| exec redis-server - " in argv[2]
    port = free_port()
    script = argv[2].replace("redis-server", shlex.quote(redis_server_binary()), 1) + (
        f" --port {port} --bind 127.0.0.1 --dir {shlex.quote(str(tmp_path))} --daemonize no")
    env = {**os.environ, **environment_of(svc)}
    password = env["REDIS_PASSWORD" if name == "redis" else "CACHE_PASSWORD"]
    log = tmp_path / f"{name}.log"
    with started(["sh", "-c", script], env, log) as proc:
        client = redis.Redis(port=port, socket_timeout=2, password=password)

        def pong() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(pong, proc, log, name, timeout=15)
        with pytest.raises(redis.AuthenticationError):  # the password took effect
            redis.Redis(port=port, socket_timeout=2).ping()
        assert password not in " ".join(redis_argv(svc["command"]))
        cfg = client.config_get("*")
        for key, value in flags(redis_argv(svc["command"])).items():  # the flags took effect
            if key == "maxmemory":
                value = str(int(value[:-2]) * 1024**3) if value.endswith("gb") else value
            assert cfg[key] == value, (key, cfg[key], value)
        cli = f"{Path(redis_server_binary()).with_name('redis-cli')} -p {port}"
        hc = run_healthcheck(svc, local, env, lambda a: a.replace("redis-cli", cli))
        assert hc.returncode == 0, hc


@pytest.mark.parametrize("name,queue", [("worker-cpu", "cpu"), ("worker-gpu", "gpu")])
def test_worker_service_runs(name: str, queue: str, compose: dict[str, Any], local: Local,
                             tmp_path: Path) -> None:
    svc = compose["services"][name]
    env = local.env(svc)
    log = tmp_path / f"{name}.log"
    with started(local.argv(argv_of(svc["command"])), env, log) as proc:
        wait_until(lambda: " ready." in tail(log, 10**6), proc, log, name, timeout=60)
        text = tail(log, 10**6)
        assert re.search(rf"^\s+\.> {queue}\s+exchange=", text, re.MULTILINE), text  # consumes -Q
        assert f"127.0.0.1:{local.ports['redis']}/0" in text  # the rewritten broker
        hc = run_healthcheck(svc, local, env)
        assert hc.returncode == 0 and "healthy:" in hc.stdout, hc


def test_flower_service_runs(compose: dict[str, Any], local: Local, tmp_path: Path) -> None:
    svc = compose["services"]["flower"]
    env = local.env(svc)
    argv = local.argv(argv_of(svc["command"]))
    base = f"http://127.0.0.1:{local.flower_port}"

    # Without FLOWER_BASIC_AUTH the service refuses to start, naming the variable.
    bare = subprocess.run(argv, cwd=ROOT, env={**env, "FLOWER_BASIC_AUTH": ""},
                          capture_output=True, text=True, timeout=30)
    assert bare.returncode != 0 and "set FLOWER_BASIC_AUTH" in bare.stderr, bare

    log = tmp_path / "flower.log"
    with started(argv, env, log) as proc:
        wait_until(lambda: http_get(f"{base}/healthcheck")[0] == 200, proc, log, "flower",
                   timeout=20)
        assert http_get(f"{base}/api/workers")[0] == 401
        assert http_get(f"{base}/api/workers", auth="admin:wrong")[0] == 401
        assert http_get(f"{base}/api/workers", auth="admin:secret")[0] == 200
        assert "admin:secret" not in " ".join(argv), "the password stays out of argv"
        hc = run_healthcheck(svc, local, env)
        assert hc.returncode == 0, hc


def test_producer_services_run(compose: dict[str, Any], local: Local) -> None:
    services = compose["services"]
    svc = services["producer"]
    argv = local.argv(argv_of(svc["entrypoint"]) + argv_of(svc["command"]))
    out = subprocess.run(argv, cwd=ROOT, env=local.env(svc), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "submit" in out.stdout, out

    # The export one-shot takes a minute (torch): parse its arguments with the real CLI and
    # check it writes where the producer looks for the default model.
    exp = services["export"]
    args = argv_of(exp["command"])
    assert argv_of(exp["entrypoint"]) == ["producer"] and args[0] == "export"
    click_parse(local.argv(args))
    from storage.bundle import DEFAULT_MODEL

    home = environment_of(exp)["EMBED_HOME"]
    assert home == environment_of(svc)["EMBED_HOME"]
    assert args[1] == DEFAULT_MODEL
    # storage.bundle.resolve_model looks for the default bundle at EMBED_HOME/models/<name>.
    assert Path(args[args.index("--out") + 1]) == Path(home) / "models" / DEFAULT_MODEL


def test_fleet_doc_commands_parse(local: Local) -> None:
    """Every `docker compose run --rm producer ...` shown in docs/fleet.md parses."""
    if not FLEET_DOC.exists():
        pytest.skip("docs/fleet.md not written yet")
    text = FLEET_DOC.read_text(encoding="utf-8")
    shown = re.findall(r"docker compose run --rm producer ([^`\n#]*)", text)
    cmds = [shlex.split(m) for m in shown]
    assert cmds, "docs/fleet.md shows no producer command"
    for args in cmds:
        args = local.argv(args)
        for a in args:  # stand-ins for the user's corpus and earlier jobs (click checks paths)
            p = Path(a)
            if p.is_relative_to(local.tmp / "corpus") and p.suffix in (".jsonl", ".gz"):
                p.parent.mkdir(parents=True, exist_ok=True)
                p.touch()
            elif p.is_relative_to(local.tmp / "data" / "out") and p != local.tmp / "data" / "out":
                p.mkdir(parents=True, exist_ok=True)
        click_parse(args)
