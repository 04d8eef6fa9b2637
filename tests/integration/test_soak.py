"""The short soak: benchmarks/soak.py for 40 s with a kill, a partition and a Redis restart.

Three workers through relays, jobs submitted one after another, one fault of each kind at
seeded times; every job exactly once and all three workers consuming at the end. The
10-minute run is ``python benchmarks/soak.py`` (benchmarks/results/soak.json).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.integration


def test_short_soak_every_job_once_every_worker_consuming(tmp_path):
    out = tmp_path / "soak.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--minutes",
                        "0.67", "--partition-s", "10", "--docs", "40", "--consume-s", "60",
                        "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=540)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["kills"] >= 1 and r["partitions"] >= 1 and r["redis_restarts"] >= 1, r["faults"]
    assert r["jobs"] >= 1 and r["expected"] > 0
    assert r["lost"] == r["duplicated"] == r["unexpected"] == 0, r
    assert r["ok"] == r["expected"] and r["passed"], r
    assert r["consuming_at_end"] == r["workers"] == 3, r["consuming"]
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
