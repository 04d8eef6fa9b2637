"""Fault injection: the job's output filesystem fills up mid-job (a real tmpfs, a real worker).

Part of the fault suite: it records through tests/fault_table.py, so its row lands in
``benchmarks/results/faults.json`` with the others. Needs permission to mount a tmpfs (root or
CAP_SYS_ADMIN); skipped with the reason otherwise. The model is the hashing bundle: the disk,
not the model, is under test.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.job import submit
from storage.shards import shard_is_valid
from tests.checker import check_job
from tests.fault_table import module_results, record, results_table  # noqa: F401  (fixtures)
from tests.integration.test_faults import assert_clean, make_corpus, wait_until, wenv
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
    with open(path, "wb") as f:
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
    shards = [s["shard"] for s in job.dir.manifest["shards"]]
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
