"""Streaming, resumable staging end to end: a producer SIGKILLed while staging, then resumed.

Real redis-server, real ``celery worker``, real MiniLM bundle, the real CLI in a subprocess;
the kill points are the producer's failpoints (``worker/staging/faults.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.checker import check_job
from tests.conftest import sample_records
from tests.procs import ROOT

pytestmark = pytest.mark.integration

BAD = {7: "{not json", 31: '{"id": "e", "text": "   "}', 60: '["a list"]'}
"""Line number -> a bad line the corpus carries there (each must be one reject, that line)."""


def make_corpus(path: Path, n_docs: int = 260) -> Path:
    texts = [p.strip() for r in sample_records() for p in r["text"].split("\n") if len(p) > 40]
    lines, k = [], 0
    while len(lines) < n_docs:
        no = len(lines) + 1
        if no in BAD:
            lines.append(BAD[no])
        elif no % 50 == 0:
            lines.append("")  # blank lines count in line numbers
        else:
            lines.append(json.dumps({"id": f"d{no}", "text": texts[k % len(texts)] + f" #{no}"}))
            k += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def producer(*args: str, env: dict[str, str] | None = None, timeout: float = 600
             ) -> subprocess.CompletedProcess[str]:
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "producer", *args], env=e, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def contents(job: Path) -> dict[str, object]:
    """Everything a user gets: input and output shards by file, vectors, rejects."""
    out: dict[str, object] = {}
    for d in ("input", "embeddings"):
        for p in sorted((job / d).glob("part-*.parquet")):
            t = pq.read_table(p)
            cols = [c for c in t.column_names if c not in ("embedding", "cached")]
            out[f"{d}/{p.name}"] = t.select(cols).to_pylist()
            if d == "embeddings":
                out[f"vec/{p.name}"] = np.asarray(t["embedding"].to_pylist(), dtype=np.float32)
    out["rejects"] = (job / "rejects.jsonl").read_text()
    return out


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        if k.startswith("vec/"):
            assert np.allclose(a[k], b[k], atol=1e-5), k
        else:
            assert a[k] == b[k], k


def submit_args(corpus: Path, out: Path, job_id: str, model: Path, broker: str) -> list[str]:
    return ["submit", str(corpus), "--out", str(out), "--job-id", job_id, "--model", str(model),
            "--precision", "fp32", "--broker", broker, "--shard-tokens", "600",
            "--stage-procs", "1"]


def test_killed_producer_resumes_to_the_uninterrupted_output(
        tmp_path, fleet, redis_url, redis_server, minilm_bundle):
    corpus = make_corpus(tmp_path / "corpus.jsonl")
    out = tmp_path / "out"
    fleet()
    r = producer(*submit_args(corpus, out, "ref", minilm_bundle, redis_url), "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    ref = contents(out / "ref")
    assert sum(k.startswith("input/") for k in ref) >= 6  # several shards to kill between
    res = check_job(out / "ref")
    assert res.clean and res.ok == res.expected, res.describe()
    rejects = [json.loads(x) for x in str(ref["rejects"]).splitlines()]
    assert sorted(x["line"] for x in rejects) == sorted(BAD)  # true line numbers

    for fault in ("after_send=2", "mid_shard_write=3", "after_record=4"):
        redis_server.client(1).flushdb()  # no cache hits: same `cached` column as the ref
        job_id = "kill-" + fault.split("=")[0]
        r = producer(*submit_args(corpus, out, job_id, minilm_bundle, redis_url),
                     env={"EMBED_STAGE_FAULTS": fault})
        assert r.returncode == -9, (fault, r.stdout + r.stderr)
        st = json.loads(producer("status", str(out / job_id), "--json").stdout)
        assert st["status"] == "staging" and 1 <= st["staging"]["shards"] <= 4, st
        again = producer(*submit_args(corpus, out, job_id, minilm_bundle, redis_url))
        assert again.returncode != 0 and "resume" in again.stderr
        r = producer("resume", str(out / job_id), "--broker", redis_url, "--wait",
                     "--stage-procs", "1")
        assert r.returncode == 0, (fault, r.stdout + r.stderr)
        res = check_job(out / job_id)
        assert res.clean and res.ok == res.expected, (fault, res.describe())
        assert_same(contents(out / job_id), ref)
        m = json.loads((out / job_id / "manifest.json").read_text())
        assert m["input"]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()
        assert m["splits"] == json.loads((out / "ref" / "manifest.json").read_text())["splits"]


def test_status_shows_staging_progress_and_workers_start_before_staging_ends(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n_docs=600)
    out = tmp_path / "out"
    fleet()
    args = submit_args(corpus, out, "stream", minilm_bundle, redis_url)
    p = subprocess.Popen([sys.executable, "-m", "producer", *args], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "EMBED_STAGE_FAULTS": "slow_shard=0.3"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen_done_while_staging = False
        deadline = time.monotonic() + 300
        while p.poll() is None and time.monotonic() < deadline:
            if (out / "stream" / "manifest.json").exists():
                r = producer("status", str(out / "stream"), "--json")
                if r.returncode == 0:
                    st = json.loads(r.stdout)
                    if st["status"] == "staging" and st["done"] >= 1:
                        assert 0 < st["staging"]["bytes"] < st["staging"]["bytes_total"]
                        assert st["staging"]["records"] > 0 and st["shards"] >= st["done"]
                        assert not (out / "stream" / "_SUCCESS").exists()
                        seen_done_while_staging = True
                        break
            time.sleep(0.5)
        assert seen_done_while_staging, "no shard was embedded while staging went on"
    finally:
        p.wait(timeout=300)
    r = producer("resume", str(out / "stream"), "--broker", redis_url, "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "stream" / "_SUCCESS").exists()


def test_stage_on_fleet_with_a_worker_killed_mid_split_completes_exactly_once(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = make_corpus(tmp_path / "corpus.jsonl", n_docs=400)
    out = tmp_path / "out"
    split = ["--split-bytes", "8000"]
    r = producer("submit", "--dry-run", str(corpus), "--model", str(minilm_bundle), *split,
                 "--cache-url", redis_url, "--shard-tokens", "600")
    m = re.search(r"(\d+) split\(s\)", r.stdout)
    assert m and int(m.group(1)) >= 3, r.stdout + r.stderr
    # The worker doing a split's second shard dies (SIGKILL of its pool process) each time.
    w1 = fleet(queue="cpu,stage", env={"EMBED_STAGE_FAULTS": "after_record=2"})
    fleet(queue="cpu,stage")
    r = producer(*submit_args(corpus, out, "fleet", minilm_bundle, redis_url), *split,
                 "--stage-on", "fleet", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    res = check_job(out / "fleet")
    assert res.clean and res.ok == res.expected, res.describe()
    assert "signal 9" in w1.text(), "the faulty worker was never killed mid-split"
    rejects = [json.loads(x) for x in (out / "fleet" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(x["line"] for x in rejects) == sorted(BAD)
    # the same shards as staging on the producer with the same splits
    r = producer(*submit_args(corpus, out, "local", minilm_bundle, redis_url), *split,
                 "--wait")
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = contents(out / "fleet"), contents(out / "local")
    assert sorted(k for k in a if k.startswith("input/")) == sorted(
        k for k in b if k.startswith("input/"))
    for k in a:
        if k.startswith("input/"):
            assert a[k] == b[k], k
    assert a["rejects"] == b["rejects"]
