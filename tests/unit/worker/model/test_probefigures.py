"""worker/model/probefigures.py: the figures' key changes with what makes them valid, and
figures of another probe version are not read back."""

from __future__ import annotations

import json
from pathlib import Path

from storage.bundle import load_bundle
from worker.model.probefigures import PROBE_VERSION, machine_key, read_figures
from worker.model.providers import Candidate


def test_the_key_depends_on_threads_and_providers(minilm_bundle: Path) -> None:
    b = load_bundle(minilm_bundle)
    flags = frozenset({"avx2"})
    key = machine_key(b, ["CPUExecutionProvider"], flags, 2)
    assert key == machine_key(b, ["CPUExecutionProvider"], flags, 2)
    assert key != machine_key(b, ["CPUExecutionProvider"], flags, 1)
    assert key != machine_key(b, ["CPUExecutionProvider", "OpenVINOExecutionProvider"], flags, 2)


def test_figures_read_back_unless_another_version_or_damaged(tmp_path: Path) -> None:
    row = {"provider": "CPUExecutionProvider", "precision": "fp32", "tokens_per_s": 5000.0,
           "cos_min": 1.0, "error": None}
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"version": PROBE_VERSION, "rows": [row]}))
    got = read_figures(path)
    assert got is not None and got[Candidate("CPUExecutionProvider", "fp32")].tokens_per_s == 5000
    path.write_text(json.dumps({"version": PROBE_VERSION - 1, "rows": [row]}))
    assert read_figures(path) is None
    path.write_text("{not json")
    assert read_figures(path) is None
    assert read_figures(tmp_path / "missing.json") is None
