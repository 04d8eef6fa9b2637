"""An interrupted ``producer run`` continues where it stopped; ``producer resume`` never sends
work into the void (issue 19). Real processes: ``producer run`` with its private redis-server
and celery workers, Ctrl-C sent as SIGINT to its process group as a terminal does."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from producer.priority import queue_depth
from producer.cli import main
from tests.checker import check_job
from tests.conftest import write_jsonl
from tests.procs import ROOT

pytestmark = pytest.mark.integration
WORDS = ("river stone lamp orchard violet engine harbor ladder quiet summer copper window "
         "garden thunder basket marble").split()


def corpus(path: Path, n: int = 12, words: int = 40) -> Path:
    """``n`` documents of ``words`` words: with --shard-tokens 64, about one shard each."""
    docs = [{"id": f"d{i}", "text": " ".join(WORDS[(i * 7 + j) % len(WORDS)]
                                            for j in range(words))} for i in range(n)]
    return write_jsonl(path, docs)


def producer(args: list[str], home: Path, log: Path, faults: str = "") -> subprocess.Popen:
    env = dict(os.environ, EMBED_HOME=str(home), EMBED_THREADS="1", EMBED_FAULTS=faults)
    with open(log, "wb") as f:  # its own process group, like a job started from a terminal
        return subprocess.Popen([sys.executable, "-m", "producer", *map(str, args)], cwd=ROOT,
                                env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(p: subprocess.Popen, log: Path, timeout: float = 400) -> tuple[int, str]:
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise AssertionError(log.read_text(errors="replace")[-3000:]) from None
    return rc, log.read_text(errors="replace")


def snapshot(job: Path) -> dict[str, tuple[str, int, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns,
                     p.stat().st_ino) for p in sorted((job / "embeddings").glob("part-*.parquet"))}


def rows(job: Path) -> list[tuple]:
    t = pq.read_table(job / "embeddings").select(["doc_id", "chunk_index", "text_sha256",
                                                  "embedding"]).to_pylist()
    return sorted((r["doc_id"], r["chunk_index"], r["text_sha256"],
                   tuple(np.round(r["embedding"], 6))) for r in t)


def assert_same_rows(a: Path, b: Path) -> None:
    """Same chunks, same texts; vectors equal up to the cache's float16 rounding. Both jobs run
    ``--precision fp32`` (CPU EP): under ``auto`` each home's start-up probe picks by measured
    speed, and two homes on one machine may pick int8 and OpenVINO (CI saw min cosine 0.9967)."""
    ra, rb = rows(a), rows(b)
    assert [r[:3] for r in ra] == [r[:3] for r in rb]
    va, vb = np.array([r[3] for r in ra]), np.array([r[3] for r in rb])
    cos = (va * vb).sum(1) / np.linalg.norm(va, axis=1) / np.linalg.norm(vb, axis=1)
    assert cos.min() >= 0.9999, cos.min()


def test_interrupted_run_resumes_with_done_shards_untouched(
        tmp_path: Path, minilm_bundle: Path, redis_server, redis_url: str) -> None:
    src = corpus(tmp_path / "c.jsonl")
    out, job, home = tmp_path / "out", tmp_path / "out" / "j", tmp_path / "home"
    common = ["--model", minilm_bundle, "--precision", "fp32", "--shard-tokens", "64",
              "--workers", "1"]
    log1 = tmp_path / "run1.log"
    p = producer(["run", src, "--out", out, "--job-id", "j", *common], home, log1,
                 faults="sleep=1.5")
    deadline = time.monotonic() + 300
    while len(list((job / "embeddings").glob("part-*.parquet"))) < 2:
        assert p.poll() is None, log1.read_text()
        assert time.monotonic() < deadline, log1.read_text()
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    rc, text = finish(p, log1, timeout=120)
    assert rc == 130, text
    assert f"`producer run --resume {job}`" in text
    n = len(json.loads((job / "manifest.json").read_text())["shards"])
    done = snapshot(job)
    assert 2 <= len(done) < n, (len(done), n)

    # `producer resume` of a `producer run` job refuses and sends nothing.
    res = CliRunner().invoke(main, ["resume", str(job), "--broker", redis_url])
    assert res.exit_code == 4 and f"producer run --resume {job}" in res.output, res.output
    assert queue_depth(redis_server.client(), "cpu") == 0

    log2 = tmp_path / "run2.log"
    rc, text = finish(producer(["run", "--resume", job, "--workers", "1"], home, log2), log2)
    assert rc == 0, text
    assert f"{len(done)} of {n} shard(s) done and kept" in text
    assert f"sent {n - len(done)} pending shard(s)" in text
    res = check_job(job)
    assert res.clean and res.ok == res.expected, res.describe()
    after = snapshot(job)
    assert {k: after[k] for k in done} == done  # same bytes, same files, never rewritten
    for name in done:
        assert set(pq.read_table(job / "metrics" / name)["attempt"].to_pylist()) == {1}

    log3 = tmp_path / "ref.log"
    rc, text = finish(producer(["run", src, "--out", tmp_path / "ref", "--job-id", "r",
                                *common], tmp_path / "home-ref", log3), log3)
    assert rc == 0, text
    assert_same_rows(job, tmp_path / "ref" / "r")

    # The same command again onto the finished job says it is resuming and sends nothing.
    log4 = tmp_path / "run4.log"
    rc, text = finish(producer(["run", src, "--out", out, "--job-id", "j", *common], home,
                               log4), log4)
    assert rc == 0 and f"resuming {job}: {n} of {n} shard(s) done" in text, text
    assert "local fleet" not in text  # nothing to send: no fleet started
    assert snapshot(job) == after


def test_run_interrupted_during_staging_continues_from_the_ledger(tmp_path: Path,
                                                                 minilm_bundle: Path) -> None:
    """SIGINT while staging: `producer run --resume` keeps the shards staged so far (same
    files) and stages on from the ledger. The corpus is mostly cheap rejects (empty texts) with
    a real document every 20,000 lines, one shard each, so staging takes seconds and shards
    land before the interrupt."""
    src = tmp_path / "c.jsonl"
    with open(src, "w") as f:
        for i in range(300_000):
            f.write(f'{{"id": "e{i}", "text": ""}}\n')
            if i % 20_000 == 0:
                f.write(json.dumps({"id": f"d{i}", "text": " ".join(WORDS[i % 7:])}) + "\n")
    expected = 300_000 // 20_000
    job, home, log = tmp_path / "out" / "j", tmp_path / "home", tmp_path / "run1.log"
    p = producer(["run", src, "--out", tmp_path / "out", "--job-id", "j", "--model",
                  minilm_bundle, "--workers", "1", "--stage-procs", "1", "--shard-tokens", "64"],
                 home, log)
    deadline = time.monotonic() + 120
    from storage import ledger
    from storage.shards import shard_name

    def recorded() -> set[str]:  # shards the ledger holds (one written, not recorded, is redone)
        try:
            return {shard_name(cp.shard) for cps in ledger.read_all(job).values() for cp in cps
                    if cp.shard is not None}
        except OSError:
            return set()

    while not recorded():
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    rc, text = finish(p, log, timeout=120)
    assert rc == 130 and f"`producer run --resume {job}`" in text, text
    m = json.loads((job / "manifest.json").read_text())
    done = recorded()
    before = {q.name: (q.stat().st_ino, q.stat().st_mtime_ns)
              for q in (job / "input").glob("part-*.parquet") if q.name in done}
    if m["staged"] or not before:
        pytest.skip("the interrupt did not land between two recorded shards of the staging")
    log2 = tmp_path / "run2.log"
    rc, text = finish(producer(["run", "--resume", job], home, log2), log2)
    assert rc == 0 and "staging continues from its last durable point" in text, text
    after = {q.name: (q.stat().st_ino, q.stat().st_mtime_ns)
             for q in (job / "input").glob("part-*.parquet")}
    assert all(after[k] == v for k, v in before.items()), "a staged shard was rewritten"
    res = check_job(job)
    assert res.clean and res.ok == res.expected == expected, res.describe()
    assert res.ingest_rejects == 300_000


def test_fleet_resume_uses_the_job_broker_and_warns_without_a_worker(
        tmp_path: Path, minilm_bundle: Path, redis_server, redis_url: str) -> None:
    src = corpus(tmp_path / "c.jsonl", n=3)
    warning = (f"warning: no worker consumes queue 'cpu' on {redis_url}: the shards will wait "
               "until one starts")
    res = CliRunner().invoke(main, ["submit", str(src), "--out", str(tmp_path), "--job-id", "f",
                                    "--broker", redis_url, "--model", str(minilm_bundle),
                                    "--shard-tokens", "64"])
    assert res.exit_code == 0 and warning in res.output, res.output
    sent = queue_depth(redis_server.client(), "cpu")
    assert sent == 3
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["made_by"] == "producer submit" and manifest["broker_hint"] == redis_url

    env = {k: v for k, v in os.environ.items() if k not in ("EMBED_BROKER_URL",
                                                            "CELERY_BROKER_URL")}
    res = CliRunner(env=env).invoke(main, ["resume", str(tmp_path / "f")])  # no --broker
    assert res.exit_code == 0 and warning in res.output and "re-sent 3 shard(s)" in res.output
    # to the job's broker, not the default
    assert queue_depth(redis_server.client(), "cpu") == 2 * sent


def test_wait_without_a_worker_says_waiting(tmp_path: Path, minilm_bundle: Path,
                                            redis_url: str) -> None:
    src = corpus(tmp_path / "c.jsonl", n=2)
    log = tmp_path / "submit.log"
    p = producer(["submit", src, "--out", tmp_path, "--broker", redis_url, "--model",
                  minilm_bundle, "--shard-tokens", "64", "--wait"], tmp_path / "home", log)
    deadline = time.monotonic() + 120
    while "waiting for a worker" not in log.read_text(errors="replace"):
        assert p.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    assert "0 tok/s" not in log.read_text()
    os.killpg(p.pid, signal.SIGINT)
    rc, _ = finish(p, log, timeout=60)
    assert rc == 130


def test_other_corpus_or_chunking_for_an_existing_job_names_both(
        tmp_path: Path, minilm_bundle: Path, redis_url: str) -> None:
    src = corpus(tmp_path / "c.jsonl", n=2)
    res = CliRunner().invoke(main, ["submit", str(src), "--out", str(tmp_path), "--job-id", "x",
                                    "--broker", redis_url, "--model", str(minilm_bundle)])
    assert res.exit_code == 0, res.output
    job = tmp_path / "x"
    before = (job / "manifest.json").read_bytes()
    other = corpus(tmp_path / "other.jsonl", n=3)
    base = ["run", "--out", str(tmp_path), "--job-id", "x", "--model", str(minilm_bundle)]
    res = CliRunner().invoke(main, [*base[:1], str(other), *base[1:]])
    m = json.loads(before)
    assert res.exit_code == 4, res.output
    assert m["input"]["sha256"][:16] in res.output and str(other) in res.output
    res = CliRunner().invoke(main, [*base[:1], str(src), *base[1:], "--overlap", "8"])
    assert res.exit_code == 4, res.output
    assert "--overlap: the job has 0, this command asks for 8" in res.output
    res = CliRunner().invoke(main, ["run", "--resume", str(job), "--shard-tokens", "64"])
    assert res.exit_code == 4 and "--shard-tokens: the job has 32768" in res.output
    assert (job / "manifest.json").read_bytes() == before
