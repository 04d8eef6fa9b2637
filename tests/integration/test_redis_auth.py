"""Redis with an ACL user's password, and with TLS: a whole job through ``rediss://user:pass@``
(and through plain ``redis://:pass@`` with ``requirepass``).

The broker and the cache both go through the TLS port with the ACL user (the default user has
another password); a throwaway CA and server certificate are made with ``openssl`` in the test.
The password must not appear in the worker log (DEBUG), ``producer status`` (text and JSON),
the manifest, ``producer report``, or Flower's task list and worker pages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from tests.checker import check_job
from tests.conftest import sample_records, write_jsonl
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.procs import RedisServer, flower_process, http_get

pytestmark = pytest.mark.integration

USER, SECRET, DEFAULT_PW = "embed", "Tls-ACL-s3cr3t-9f2c", "default-user-other-pw"
AUTH = "admin:flowerpw"


def make_certs(d: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 (one day), with the openssl CLI."""
    d.mkdir(parents=True, exist_ok=True)

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=embedfleet-test-ca")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "ext.cnf")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class SecureRedis(RedisServer):
    """TLS only (plain port off), ``requirepass`` for the default user, an ACL user."""

    def __init__(self, workdir: Path, certs: dict[str, Path]) -> None:
        super().__init__(workdir)
        self.certs = certs
        self.extra = ["--port", "0", "--tls-port", str(self.port),
                      "--tls-cert-file", str(certs["cert"]), "--tls-key-file", str(certs["key"]),
                      "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "no",
                      "--requirepass", DEFAULT_PW,
                      "--user", USER, "on", f">{SECRET}", "~*", "&*", "+@all"]

    def url(self, db: int = 0) -> str:
        return (f"rediss://{USER}:{SECRET}@127.0.0.1:{self.port}/{db}"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.certs['ca']}")

    def client(self, db: int = 0) -> redis.Redis:  # type: ignore[override]
        return redis.Redis.from_url(self.url(db), socket_timeout=5)


class PasswordRedis(SecureRedis):
    """Plain TCP, ``requirepass`` only: ``redis://:password@`` (the default user)."""

    def __init__(self, workdir: Path) -> None:
        RedisServer.__init__(self, workdir, extra=["--requirepass", SECRET])

    def url(self, db: int = 0) -> str:
        return f"redis://:{SECRET}@127.0.0.1:{self.port}/{db}"


@pytest.fixture
def secure_redis(tmp_path: Path):
    yield from _tls_server(tmp_path)


@pytest.fixture(params=["tls+acl", "requirepass"])
def auth_redis(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "requirepass":
        srv = PasswordRedis(tmp_path / "pw-redis").start()
        yield srv
        srv.stop()
    else:
        yield from _tls_server(tmp_path)


def _tls_server(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make the test certificates")
    srv = SecureRedis(tmp_path / "tls-redis", make_certs(tmp_path / "certs"))
    try:
        srv.start()
    except RuntimeError:  # a redis-server built without BUILD_TLS=yes refuses --tls-port
        log = (srv.workdir / "redis.log").read_text(errors="replace")
        if "tls" in log.lower():
            pytest.skip(f"redis-server cannot serve TLS: {log.strip().splitlines()[-1]}")
        raise
    yield srv
    srv.stop()


def test_server_refuses_plain_and_wrong_credentials(secure_redis):
    ca = secure_redis.certs["ca"]
    with pytest.raises(redis.RedisError):  # plain TCP to the TLS port
        redis.Redis(port=secure_redis.port, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(f"rediss://{USER}:wrong@127.0.0.1:{secure_redis.port}/0"
                             f"?ssl_cert_reqs=required&ssl_ca_certs={ca}").ping()
    assert secure_redis.client().ping()


def test_job_through_authenticated_redis_never_shows_the_password(
        tmp_path, auth_redis, fleet, minilm_bundle, monkeypatch, record):
    monkeypatch.setenv("EMBED_EVENTS", "1")
    broker, cache = auth_redis.url(0), auth_redis.url(1)
    masked = broker.split("@")[0].rsplit(":", 1)[0] + ":***@127.0.0.1:"
    with flower_process(broker, tmp_path / "flower.log", AUTH) as flower:
        w = fleet(broker=broker, cache=cache, env={"EMBED_LOG_LEVEL": "DEBUG"})
        corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:8])
        said: list[str] = []
        job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), broker=broker,
                     job_id="tls", log=said.append)
        st = job.wait(timeout_s=300, poll_s=0.5)
        assert st.status == "succeeded", st
        res = check_job(job.path)
        assert res.clean and res.ok == res.expected > 0, res.describe()
        assert auth_redis.client(1).dbsize() > 0  # the cache went through TLS + ACL too
        runner = CliRunner()
        outputs = {name: runner.invoke(main, args) for name, args in {
            "status": ["status", str(job.path)],
            "status --json": ["status", "--json", str(job.path)],
            "report": ["report", str(job.path)],
        }.items()}
        for name, out in outputs.items():
            assert out.exit_code == 0, (name, out.output)
        flower_pages = {p: http_get(flower + p, auth=AUTH)[1].decode(errors="replace")
                        for p in ("/api/tasks", "/api/workers?refresh=1", "/workers")}
        assert "embedfleet.embed_shard" in flower_pages["/api/tasks"]
    manifest = job.dir.manifest_path.read_text()
    assert json.loads(manifest)["broker_hint"].startswith(masked)
    texts = {"worker log": w.text(), "manifest": manifest, "submit log": "\n".join(said),
             "flower log": (tmp_path / "flower.log").read_text(errors="replace"),
             **{n: o.output for n, o in outputs.items()}, **flower_pages}
    for path in job.path.rglob("*.json*"):
        texts[str(path.relative_to(job.path))] = path.read_text(errors="replace")
    leaks = [name for name, text in texts.items() if SECRET in text]
    assert not leaks, f"password shown in: {leaks}"
    assert masked.replace("***", "**") in w.text()  # the banner shows the masked URL
    how = "TLS (rediss://) with an ACL user" if "rediss" in broker else "requirepass (redis://)"
    record(f"broker + cache over {how}", res,
           f"password in 0 of {len(texts)} outputs (worker log, status, manifest, report, "
           "Flower tasks/workers)")
