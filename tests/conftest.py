"""Shared fixtures: real redis-server on a free port, real celery workers, real model bundles."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, RedisServer, Worker

try:  # the model fixtures live with the export code's tests
    from tests.model_fixtures import m3_bundle, minilm_bundle, xlmr_bundle  # noqa: F401
except ImportError:  # pragma: no cover
    pass

SAMPLE = ROOT / "examples" / "sample.jsonl"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean broker database (db 0) and cache database (db 1) for each test."""
    redis_server.client().flushall()
    yield redis_server.url(0)
    try:
        redis_server.client().flushall()
    except Exception:
        pass


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer, redis_url: str) -> Iterator[Callable[..., Worker]]:
    """Start real ``celery -A worker worker`` processes; all are stopped after the test."""
    started: list[Worker] = []

    def start(*, queue: str = "cpu", env: dict[str, str] | None = None, name: str | None = None,
              concurrency: int = 1, broker: str | None = None, cache: str | None = None) -> Worker:
        e = {
            "EMBED_BROKER_URL": broker or redis_url,
            "EMBED_CACHE_URL": cache or redis_server.url(1),
            "EMBED_THREADS": "1",
            "EMBED_HOME": str(tmp_path / "home"),
            "EMBED_LOG_LEVEL": "INFO",
        }
        e.update(env or {})
        n = name or f"w{len(started) + 1}-{uuid.uuid4().hex[:6]}"
        w = Worker(e, tmp_path / f"{n}.log", queue=queue, name=n, concurrency=concurrency)
        started.append(w)
        return w.start()

    yield start
    for w in started:
        w.stop()


def sample_records() -> list[dict[str, str]]:
    return [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A real S3-protocol server (moto server mode) on 127.0.0.1; this process's AWS_* point at it."""
    pytest.importorskip("moto.server")
    from tests.objstore import S3Server

    srv = S3Server(tmp_path / "s3").start()
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    yield srv
    srv.stop()
