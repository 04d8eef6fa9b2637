"""The CPU runtime probe's figures on disk: the key that says which bundle, CPU and runtime
they hold for (``EMBED_HOME/runtime/<key>.json``), and reading them back. Measuring is
``worker.model.probe``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from storage.bundle import Bundle
from worker.model.providers import Candidate, Measured

PROBE_VERSION = 3
"""Bump to re-measure everywhere when what is measured changes."""


def machine_key(bundle: Bundle, available: Sequence[str], flags: frozenset[str],
                threads: int | None) -> str:
    """What makes a measurement valid: the bundle and this machine's CPU and runtime."""
    ident = {"version": PROBE_VERSION, "bundle": bundle.fingerprint("fp32"),
             "variants": {v: bundle.fingerprint(v) for v in bundle.variants},
             "cpu": _cpu_model(), "flags": sorted(flags), "cores": os.cpu_count(),
             "threads": threads, "ort": _ort_version(), "providers": sorted(available)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def _ort_version() -> str:
    try:
        from importlib.metadata import version

        for dist in ("onnxruntime-openvino", "onnxruntime", "onnxruntime-gpu"):
            try:
                return f"{dist}=={version(dist)}"
            except Exception:  # noqa: BLE001 - not installed under this name
                continue
    except ImportError:  # pragma: no cover
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return "unknown"


def read_figures(path: Path) -> dict[Candidate, Measured] | None:
    """The measurements cached at ``path``; None when missing, unreadable or of another
    PROBE_VERSION (then the worker measures again)."""
    try:
        raw = json.loads(path.read_text())
        if raw.get("version") != PROBE_VERSION:
            return None
        return {Candidate(r["provider"], r["precision"]): Measured(
            Candidate(r["provider"], r["precision"]), float(r["tokens_per_s"]), r["cos_min"],
            r["error"]) for r in raw["rows"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
