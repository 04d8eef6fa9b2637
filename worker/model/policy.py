"""Which provider and precision a worker will run a bundle at, known without onnxruntime.

The dry run keys the cache on the fingerprint a real worker will use, and a CPU worker's
fingerprint depends on what its start-up probe chose (``worker/model/probe.py``: on a machine
with the OpenVINO EP, OpenVINO bf16 can beat CPU-EP int8). The probe stores its figures under
``EMBED_HOME/runtime/``; this module re-applies the same pure decision
(``choose_cpu_runtime``) to them, so the producer asks the worker's policy without importing
onnxruntime. No stored figures: the worker's default (CPU EP int8, else fp32; GPU fp16).

What the producer cannot see stays the worker's: ``EMBED_CPU_PROVIDER``, ``EMBED_TENSORRT``
and a worker-side ``EMBED_PRECISION`` override the plan, as they override the probe.
"""

from __future__ import annotations

import json
from pathlib import Path

from storage.bundle import Bundle
from worker.contract import Device, default_precision
from worker.model.probefigures import PROBE_VERSION, read_figures
from worker.model.providers import (
    BF16_FLAGS, CPU, CUDA, OPENVINO, Candidate, Choice, Measured, choose_cpu_runtime,
)


def planned_runtime(bundle: Bundle, device: Device | str, home: Path,
                    precision: str = "auto") -> Choice:
    """The provider and precision a worker on ``device`` will run ``bundle`` at.

    Args:
        bundle: the job's bundle.
        device: ``cpu`` or ``gpu`` (the queue's device).
        home: ``EMBED_HOME``, where the CPU probe stored its figures.
        precision: the job's ``--precision`` (``auto``: the policy decides).
    """
    if Device(device) is Device.GPU:
        return Choice(CUDA, default_precision(Device.GPU, bundle.variants, precision), "gpu")
    if precision != "auto":  # an explicit precision is never measured (bf16 = OpenVINO EP)
        return Choice(OPENVINO if precision == "bf16" else CPU, precision, "requested")
    measured = stored_figures(bundle, home)
    if measured is None:
        return choose_cpu_runtime([CPU], (), bundle.variants)
    # The figures list every candidate the probe measured, which follow from the providers
    # and CPU flags it saw: the same inputs give the worker's choice.
    available = sorted({CPU} | {c.provider for c in measured})
    flags = BF16_FLAGS if Candidate(OPENVINO, "bf16") in measured else frozenset()
    return choose_cpu_runtime(available, flags, bundle.variants, measured)


def stored_figures(bundle: Bundle, home: Path) -> dict[Candidate, Measured] | None:
    """The newest probe figures stored for ``bundle`` (by path) and measured after its files
    last changed; None when there are none (the worker has not measured this bundle yet)."""
    changed = max(p.stat().st_mtime for p in bundle.path.iterdir() if p.is_file())
    best: tuple[float, Path] | None = None
    for path in sorted((home / "runtime").glob("*.json")):
        try:
            raw = json.loads(path.read_text())
            at = float(raw["measured_at"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if (raw.get("version") == PROBE_VERSION and raw.get("bundle") == str(bundle.path)
                and at >= changed and (best is None or at > best[0])):
            best = (at, path)
    return None if best is None else read_figures(best[1])


def fingerprint(bundle: Bundle, choice: Choice) -> str:
    """The cache-key prefix a worker running ``choice`` uses (``LoadedModel.fingerprint``)."""
    return bundle.fingerprint(choice.precision, provider=choice.provider)
