"""The fault-suite table: each scenario module records rows, written to faults.json at its end.

``tests/integration/test_faults.py`` and the scenario modules that follow its pattern
(``test_paths.py``, ``test_redis_auth.py``, ``test_corrupt_state.py``) all feed
``benchmarks/results/faults.json`` (rows are merged by scenario name) through ``record`` and
``results_table``: a module imports ``module_results, record, results_table`` from here.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.checker import CheckResult
from tests.procs import ROOT

RESULTS_PATH = ROOT / "benchmarks" / "results" / "faults.json"
COLUMNS = ["scenario", "injected", "expected", "ok", "rejected", "failed", "lost",
           "duplicated", "unexpected", "evidence", "wall_s"]


@pytest.fixture(scope="module")
def module_results() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def record(request: pytest.FixtureRequest,
           module_results: list[dict[str, Any]]) -> Callable[..., None]:
    t0 = time.monotonic()

    def rec(injected: str, res: CheckResult, evidence: str = "", **extra: Any) -> None:
        module_results.append({
            "scenario": request.node.name.removeprefix("test_"), "injected": injected,
            **res.as_dict(), "evidence": evidence,
            "wall_s": round(time.monotonic() - t0, 1), **extra,
        })
    return rec


@pytest.fixture(scope="module", autouse=True)
def results_table(request: pytest.FixtureRequest,
                  module_results: list[dict[str, Any]]) -> Iterator[None]:
    """Print the scenario table when the module ends and merge it into faults.json."""
    yield
    if not module_results:
        return
    lines = ["", f"fault-injection scenarios ({request.module.__name__})",
             " | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    for r in module_results:
        lines.append(" | ".join(str(r.get(c, "")) for c in COLUMNS))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            for line in lines:
                reporter.write_line(line)
    try:
        RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(RESULTS_PATH.read_text()) if RESULTS_PATH.is_file() else {}
        rows = {r["scenario"]: r for r in old.get("scenarios", [])}
        rows.update({r["scenario"]: r for r in module_results})
        RESULTS_PATH.write_text(json.dumps({
            "generated_by": "tests/integration/test_faults.py (+ tests/fault_table.py users)",
            "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host_cores": os.cpu_count(),
            "scenarios": sorted(rows.values(), key=lambda r: r["scenario"]),
        }, indent=2) + "\n")
    except OSError:
        pass
