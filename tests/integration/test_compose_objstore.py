"""docker-compose.yml's object-store profile, checked without Docker as the rest of the file is
(tests/integration/test_compose.py): its services' commands run here for real, with moto's S3
server (an S3-compatible server, as MinIO is) standing in for the ``s3`` service, whose MinIO
binary is not on this machine. The bucket one-shot creates the bucket; the volume-less worker
starts, parses its bucket-prefix roots and passes its healthcheck; the producer one-shot dry-runs
a corpus and a bundle that live only in the bucket."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_compose import (PASSWORDS, ROOT, Local, argv_of,  # noqa: F401
                                            broker_server, cache_server, environment_of,
                                            healthcheck_argv, load_compose, local, started,
                                            tail, wait_until)
from tests.objstore import S3Server

pytestmark = pytest.mark.integration
KEYS = {"S3_ACCESS_KEY": "compose-key-id", "S3_SECRET_KEY": "compose-secret-0123"}
PROFILE = {"s3", "s3-bucket", "worker-s3", "producer-s3"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose({**PASSWORDS, **KEYS})


@pytest.fixture
def s3(tmp_path: Path):  # noqa: ANN201
    pytest.importorskip("moto.server")
    srv = S3Server(tmp_path / "s3").start()
    yield srv
    srv.stop()


def env_for(svc: dict[str, Any], local: Local, s3: S3Server) -> dict[str, str]:
    env = local.env(svc)
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000"  # the compose network's name
    env["AWS_ENDPOINT_URL"] = s3.endpoint
    return env


def test_the_profile_shares_no_volume_and_keeps_keys_out_of_the_file(compose) -> None:
    services = compose["services"]
    assert PROFILE <= set(services)
    raw = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for name in PROFILE:
        assert services[name]["profiles"] == ["objstore"], name
    for name in PROFILE - {"s3"}:
        svc = services[name]
        assert not svc.get("volumes"), f"{name} must not mount a shared volume"
        env = environment_of(svc)
        assert env["AWS_ACCESS_KEY_ID"] == KEYS["S3_ACCESS_KEY"]
        assert env["AWS_SECRET_ACCESS_KEY"] == KEYS["S3_SECRET_KEY"]
        assert env["EMBED_JOB_ROOTS"] == "s3://embedfleet/jobs/"
        assert env["EMBED_MODEL_ROOTS"] == "s3://embedfleet/models/"
        assert env["EMBED_INPUT_ROOTS"] == "s3://embedfleet/corpora/"
        assert not env["EMBED_HOME"].startswith("/data")
    assert KEYS["S3_SECRET_KEY"] not in raw and "${S3_SECRET_KEY:-}" in raw
    assert "ports" not in services["s3"]
    # `docker compose up` without the profile still needs only the two Redis passwords
    bare = load_compose(PASSWORDS)
    assert environment_of(bare["services"]["worker-s3"])["AWS_SECRET_ACCESS_KEY"] == ""


def test_the_profile_runs_against_an_s3_server(compose, local: Local, s3: S3Server,
                                               tmp_path: Path) -> None:
    services = compose["services"]
    # The server refuses to start without its secret (the check before `exec minio`).
    script = argv_of(services["s3"]["command"])
    bare = subprocess.run([*script[:2], script[2].split(";")[0]], capture_output=True,
                          text=True, env={"MINIO_ROOT_PASSWORD": ""}, timeout=30)
    assert bare.returncode != 0 and "set S3_SECRET_KEY in .env" in bare.stderr, bare

    # s3-bucket: the one-shot creates the bucket
    svc = services["s3-bucket"]
    argv = local.argv(argv_of(svc["entrypoint"]) + argv_of(svc["command"]))
    out = subprocess.run(argv, cwd=ROOT, env=env_for(svc, local, s3), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out
    assert "embedfleet" in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]

    # producer-s3: a dry run of a corpus and a bundle that are only in the bucket
    from worker.export.hashing import export_hashing_bundle

    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    for p in bundle.iterdir():
        s3.client().upload_file(str(p), "embedfleet", f"models/hashing/{p.name}")
    s3.client().upload_file(str(ROOT / "examples" / "sample.jsonl"), "embedfleet",
                            "corpora/sample.jsonl")
    svc = services["producer-s3"]
    env = env_for(svc, local, s3)
    entry = argv_of(svc["entrypoint"])
    assert subprocess.run(local.argv(entry + argv_of(svc["command"])), cwd=tmp_path, env=env,
                          capture_output=True, timeout=60).returncode == 0
    dry = subprocess.run(entry + ["submit", "s3://embedfleet/corpora/sample.jsonl", "--dry-run",
                                  "--model", "s3://embedfleet/models/hashing", "--cache-url",
                                  env["EMBED_CACHE_URL"], "--stage-procs", "1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "375 accepted, 0 rejected" in dry.stdout, dry
    assert KEYS["S3_SECRET_KEY"] not in dry.stdout + dry.stderr

    # worker-s3: starts without any volume, takes its roots as bucket prefixes, is healthy
    svc = services["worker-s3"]
    env = env_for(svc, local, s3)
    log = tmp_path / "worker-s3.log"
    with started(local.argv(argv_of(svc["command"])), env, log) as proc:
        wait_until(lambda: " ready." in tail(log, 10**6), proc, log, "worker-s3", timeout=60)
        text = tail(log, 10**6)
        assert ".> stage" in text and ".> cpu" in text
        hc = subprocess.run(local.argv(healthcheck_argv(svc)), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
        assert hc.returncode == 0 and "healthy:" in hc.stdout, hc
    from worker.settings import WorkerSettings

    s = WorkerSettings.from_env(env)
    assert s.model_roots == ("s3://embedfleet/models/",)
    assert s.corpus_roots == ("s3://embedfleet/corpora/",)
