"""Fault injection: the job's filesystem fills up mid-job (a real tmpfs, a real worker).

Two moments: while workers write their output shards, and while the producer stages the corpus
(``producer submit`` in a subprocess, one staging process or a pool): the producer exits 1 with
a message naming the file and the resume command, the ledger keeps only whole lines and valid
shards, and ``producer resume --wait`` then embeds or rejects every corpus line exactly once.

Part of the fault suite: it records through tests/fault_table.py, so its row lands in
``benchmarks/results/faults.json`` with the others. Needs permission to mount a tmpfs (root or
CAP_SYS_ADMIN); skipped with the reason otherwise. The model is the hashing bundle: the disk,
not the model, is under test.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from storage import ledger
from storage.shards import shard_is_valid, shard_name
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import assert_clean, make_corpus, wait_until, wenv
from tests.integration.test_staging import BAD as STAGING_BAD
from tests.integration.test_staging import make_corpus as staging_corpus
from tests.procs import ROOT
from worker.export.hashing import export_hashing_bundle

pytestmark = pytest.mark.integration
DISK_BYTES = 8 * 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted for this test (skip when mounting is not permitted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0755", "tmpfs",
                        str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                    f"{(r.stderr or r.stdout).strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> Path:
    """Write zeros to ``path`` until the filesystem has no space left."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return path


def visible_parquet(job_dir: Path) -> list[Path]:
    return sorted(p for d in ("embeddings", "metrics") for p in (job_dir / d).glob("*.parquet"))


def test_output_disk_full_mid_job_then_resume(tmp_path, small_disk, fleet, redis_url, record):
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    corpus = make_corpus(tmp_path / "c.jsonl")
    job = submit(corpus, small_disk / "out", model=str(bundle), precision="fp32",
                 broker=redis_url, job_id="full-disk", shard_tokens=600, max_batch_tokens=256,
                 max_attempts=1)
    shards = [s.shard for s in job.dir.manifest.shards]
    assert len(shards) >= 8, shards
    w = fleet(env=wenv(EMBED_FAULTS="sleep=0.3"))
    wait_until(lambda: (job.dir.embeddings_dir / "part-00000.parquet").exists(), 120,
               "the first shard to land")
    filler = fill(small_disk / "filler.bin")
    t_full = time.monotonic()
    # The next shard's attempt fails: un-counted (max_attempts=1 would otherwise fail the shard
    # on resume), the task ends, the shard is left pending.
    wait_until(lambda: "left pending" in w.text(), 120, "a shard left pending on a full disk")
    line = next(x for x in w.text().splitlines() if "left pending" in x)
    assert "no space left" in line.lower() and str(small_disk) in line, line
    time.sleep(1)
    st = job.status()
    assert not st.finished and st.failed == 0 and st.done < st.shards, st
    assert not list(job.dir.failed_path(0).parent.glob("*.json"))
    # Nothing partial is visible: every Parquet file validates, no temporary file is left.
    for p in visible_parquet(job.path):
        if p.parent.name == "embeddings":
            assert shard_is_valid(p, job.dir.expected_chunks(int(p.stem.split("-")[1]))), p
    assert not list(job.path.rglob("*.tmp")), list(job.path.rglob("*.tmp"))
    done_before = st.done

    filler.unlink()  # space again
    res_cli = CliRunner().invoke(main, ["resume", str(job.path), "--broker", redis_url,
                                        "--wait"])
    assert res_cli.exit_code == 0, res_cli.output
    st = job.status()
    assert st.status == "succeeded" and st.done == len(shards), st
    res = check_job(job.path)
    assert_clean(res, w)
    assert res.ok == res.expected and res.duplicated == 0
    hit = w.text().count("left pending")
    record("output tmpfs (8 MB) filled mid-job, then space freed + resume", res,
           f"{hit} attempts hit ENOSPC (left pending, uncounted); {len(shards) - done_before} "
           f"of {len(shards)} shards resumed; disk full {time.monotonic() - t_full:.0f}s")
    assert os.path.ismount(small_disk)


def test_a_shard_write_that_finds_no_space_leaves_nothing_and_names_the_file(small_disk):
    import numpy as np
    import pyarrow as pa

    from storage.errors import DiskFull
    from storage.shards import write_table

    final = small_disk / "embeddings" / "part-00007.parquet"
    table = pa.table({"x": np.random.default_rng(0).random(2 * DISK_BYTES // 8)})  # 2× the disk
    with pytest.raises(DiskFull) as exc:
        write_table(final, table)
    assert "no space left" in str(exc.value) and str(final) in str(exc.value)
    assert exc.value.errno == errno.ENOSPC and isinstance(exc.value, OSError)
    assert list(final.parent.iterdir()) == []  # neither the shard nor its temporary file
    write_table(final, table.slice(0, 1000))  # the space came back: the same call works
    assert final.is_file()


def test_a_ledger_append_that_finds_no_space_names_the_ledger_and_tears_nothing(small_disk):
    from storage.errors import DiskFull

    path = ledger.ledger_path(small_disk, 0)
    path.parent.mkdir(parents=True)
    first = ledger.Checkpoint(split=0, seq=0, shard=0, pos=0, line=1, skip=0, done=False)
    raw = json.dumps(asdict(first)).encode()
    page = os.sysconf("SC_PAGE_SIZE")
    path.write_bytes(raw + b" " * (page - 6 - len(raw) - 1) + b"\n")  # 6 bytes short of a page
    before = path.read_bytes()
    fill(small_disk / "filler.bin")
    nxt = ledger.Checkpoint(split=0, seq=1, shard=1, pos=50, line=2, skip=0, done=False)
    with pytest.raises(DiskFull) as exc:  # the line's first bytes fit, the rest needs a page
        ledger.append(small_disk, nxt, [])
    assert "no space left" in str(exc.value) and str(path) in str(exc.value)
    assert path.read_bytes() == before  # no torn line
    (small_disk / "filler.bin").unlink()
    ledger.append(small_disk, nxt, [])
    assert ledger.read_split(small_disk, 0) == [first, nxt]

# -- the producer's staging finds the disk full ------------------------------------------------

def recorded_shards(job_dir: Path) -> int:
    return sum(cp.shard is not None for cps in ledger.read_all(job_dir).values() for cp in cps)


def lines_once(job_dir: Path, corpus: Path) -> tuple[int, int]:
    """Every non-blank corpus line is staged (all its chunks, each once) or rejected, once;
    returns (lines staged, lines rejected)."""
    want = {i for i, ln in enumerate(corpus.read_text().splitlines(), 1) if ln.strip()}
    chunks: Counter[tuple[int, int]] = Counter()
    count: dict[int, int] = {}
    for p in sorted((job_dir / "input").glob("part-*.parquet")):
        t = pq.read_table(p, columns=["line", "chunk_index", "chunk_count"]).to_pydict()
        for line, ci, cc in zip(t["line"], t["chunk_index"], t["chunk_count"], strict=True):
            chunks[(line, ci)] += 1
            count[line] = cc
    assert all(n == 1 for n in chunks.values()), [k for k, n in chunks.items() if n > 1][:5]
    assert len(chunks) == sum(count.values())  # no record staged with a chunk missing
    rejects = [json.loads(x) for x in (job_dir / "rejects.jsonl").read_text().splitlines() if x]
    rejected = Counter(r["line"] for r in rejects if r.get("chunk_index") is None)
    assert all(n == 1 for n in rejected.values()), rejected
    assert set(count).isdisjoint(rejected) and set(count) | set(rejected) == want
    return len(count), len(rejected)


def ledger_is_whole(job_dir: Path) -> int:
    """Every ledger file ends in a complete line and each line parses; every shard it records
    is on disk and valid. Returns the shards recorded."""
    n = 0
    for p in sorted(ledger.split_dir(job_dir).glob("split-*.jsonl")):
        data = p.read_bytes()
        assert data.endswith(b"\n"), (p, data[-80:])
        for raw in data.splitlines():
            cp = ledger.Checkpoint(**json.loads(raw))
            if cp.shard is not None:
                assert shard_is_valid(job_dir / "input" / shard_name(cp.shard), cp.chunks), cp
                n += 1
    return n


@pytest.mark.parametrize("procs", [1, 2])
def test_disk_full_while_staging_then_resume(tmp_path, small_disk, fleet, redis_url, record,
                                             procs):
    bundle = export_hashing_bundle(tmp_path / "hashing-32", 32, log=lambda _: None)
    corpus = staging_corpus(tmp_path / "c.jsonl", n_docs=260)
    job = small_disk / "out" / "stage-full"
    w = fleet(env=wenv())  # embeds the shards as they land (its writes find the disk full too)
    split = ["--split-bytes", "8000"] if procs > 1 else []  # several splits, a staging pool
    p = subprocess.Popen(
        [sys.executable, "-m", "producer", "submit", str(corpus), "--out", str(job.parent),
         "--job-id", job.name, "--model", str(bundle), "--precision", "fp32", "--broker",
         redis_url, "--shard-tokens", "600", "--max-attempts", "1", "--stage-procs",
         str(procs), *split], cwd=ROOT, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT),
                                     "EMBED_STAGE_FAULTS": "slow_shard=0.3"})
    try:
        wait_until(lambda: p.poll() is not None or (job / "_state").is_dir()
                   and recorded_shards(job) >= 2, 120, "two shards staged")
        filler = fill(small_disk / "filler.bin")
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 1, (p.returncode, out, err)
    line = next((x for x in err.splitlines() if x.startswith("Error:")), err)
    assert "no space left" in line.lower() and f"`producer resume {job}`" in line, err
    named = re.search(re.escape(f"'{job}/") + r"((input|_state/staging)/[^']+)'$", line)
    assert named, line
    assert "Traceback" not in err, err
    m = json.loads((job / "manifest.json").read_text())
    assert m["status"] == "staging" and not m["staged"], m
    # Nothing partial is visible: the ledger's lines are whole, each recorded shard is valid,
    # any other input shard validates, no temporary file is left.
    staged_before = ledger_is_whole(job)
    for shard_file in sorted((job / "input").glob("*.parquet")):
        assert pq.read_metadata(shard_file).num_rows > 0, shard_file
    assert not list(job.rglob("*.tmp")), list(job.rglob("*.tmp"))

    filler.unlink()  # space again
    r = subprocess.run([sys.executable, "-m", "producer", "resume", str(job), "--broker",
                        redis_url, "--wait", "--stage-procs", str(procs)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    res = check_job(job)
    assert_clean(res, w)
    assert res.ok == res.expected > 0 and res.duplicated == 0 and res.failed == 0
    n_lines, n_rejected = lines_once(job, corpus)
    assert n_rejected == len(STAGING_BAD)
    total = ledger_is_whole(job)
    assert staged_before < total, (staged_before, total)
    how = "1 staging process" if procs == 1 else f"a pool of {procs}"
    record(f"job tmpfs (8 MB) filled while staging ({how}), then space freed + resume", res,
           f"producer exit 1, 'no space left' naming {named.group(1)} and the resume command; "
           f"{staged_before} of {total} shards staged before; {w.text().count('left pending')} "
           f"worker attempts left pending; {n_lines} lines embedded, {n_rejected} rejected, "
           "each once")
