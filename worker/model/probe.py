"""Stage 5a (edge): measure the CPU candidates once at worker start; cache the choice on disk.

CPU flags say whether bf16 can be fast, not which of CPU-EP int8, OpenVINO fp32 and OpenVINO
bf16 is fastest for this model on this machine (issue 14: on a Xeon with AMX, OpenVINO bf16 ran
2x the CPU EP's int8; the OpenVINO EP on the dynamic-int8 graph was slower than the CPU EP). So
the first worker process to load a bundle variant runs a probe set through each candidate (a
warm-up and a few seconds each), checks cosine against CPU-EP fp32, and writes the figures to
``EMBED_HOME/runtime/<key>.json``, keyed by the bundle's fingerprint and the machine (CPU
model, flags, core count, threads, ONNX Runtime version and providers).
Other processes wait on a file lock and read it. The pure decision (``choose_cpu_runtime``) is
re-applied to the cached figures, so ``EMBED_CPU_PROVIDER`` and ``--precision`` still override.

The probe set is the multilingual gate sample (short texts) plus chunk-sized texts of ~128, 256
and 512 tokens cut from it (capped at the window): real chunks are mostly that long, and the
short sample alone favoured int8 over bf16 (on an AVX-512 bf16 EPYC it measured int8 14.2k vs
bf16 13.9k tok/s where a 2,000-document corpus gave 15.0k vs 20.8k). Each candidate's figure is
its fastest repetition, so a burst of other work on the machine (``producer run`` stages while
its workers start) costs a repetition, not the choice.

The probe has a time budget (``EMBED_PROBE_SECONDS``, 4 s, loads included): one small batch
prices a token and the sample is the mixed-length prefix of the probe set that fits (a MiniLM
measures all of it; a BGE-M3-size model a short prefix, where the whole set took ~110 s).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.atomic import write_bytes_atomic
from storage.bundle import Bundle, load_bundle
from worker.model.probefigures import PROBE_VERSION, machine_key, read_figures
from worker.model.providers import (CPU, OPENVINO, Candidate, Choice, CpuProvider, Measured,
                                    choose_cpu_runtime, cpu_candidates)

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.5
"""At most this many timed seconds per candidate after its warm-up."""
PROBE_BUDGET_S = 4.0
"""Seconds for the whole probe (``EMBED_PROBE_SECONDS``): a first job's extra start-up. 10 s gave
the same choice and figures ±10% (MiniLM, 2-core Xeon: OpenVINO bf16 20.9k vs 20.4k tok/s)."""
CALIBRATION_TEXTS = 1
"""The batch that prices a token (the first text, 10-20 tokens), and the smallest sample. With
a second ~128-token text the real-size BGE-M3 spent 33 s of a 10 s budget on 2 busy cores
(benchmarks/m3_job.py's worker log, 2026-12-05)."""
PROBE_LENGTHS = (128, 256, 512)
"""Approximate token lengths of the chunk-sized probe texts (capped at the window)."""
PROBE_PER_LENGTH = 3


def cpu_choice(bundle: Bundle | str | os.PathLike[str], *, precision: str = "auto",
               override: CpuProvider | str = CpuProvider.AUTO, threads: int | None = None,
               home: Path, load: Callable[..., Any] | None = None,
               budget_s: float = PROBE_BUDGET_S) -> Choice:
    """The provider and precision for this bundle on this machine, measured once and cached.

    Measures only when it matters: ``precision`` auto and the OpenVINO EP is available.
    """
    from worker.model import session

    load = load or session.load_model
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    available, flags = session.available_providers(), session.cpu_flags()
    measure = (precision == "auto" and OPENVINO in available
               and CpuProvider(override) is not CpuProvider.CPU)
    measured: dict[Candidate, Measured] | None = None
    if measure:
        cands = cpu_candidates(available, flags, bundle.variants)
        path = home / "runtime" / f"{machine_key(bundle, available, flags, threads)}.json"
        measured = _cached_or_measured(path, bundle, cands, threads, load, budget_s)
    choice = choose_cpu_runtime(available, flags, bundle.variants, measured,
                                override=override, precision=precision)
    if measured is not None:
        failed = [m for m in measured.values() if m.error]
        for m in failed:
            log.warning("CPU RUNTIME PROBE: %s could not run (%s); not used", m.candidate.label,
                        m.error)
        log.warning("CPU RUNTIME CHOICE for %s: %s/%s (%s)", bundle.path.name, choice.provider,
                    choice.precision, choice.reason)
    return choice


def _cached_or_measured(path: Path, bundle: Bundle, cands: Sequence[Candidate],
                        threads: int | None, load: Callable[..., Any], budget_s: float
                        ) -> dict[Candidate, Measured]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process measures; the others read its figures
        cached = read_figures(path)
        if cached is not None and all(c in cached for c in cands):
            log.info("CPU runtime figures reused from %s (same graph, CPU, threads and ONNX "
                     "Runtime): %s", path, ", ".join(f"{m.candidate.label} "
                                                     f"{m.tokens_per_s:,.0f} tok/s"
                                                     for m in cached.values()))
            return cached
        t0 = time.perf_counter()
        measured = measure(bundle, cands, threads, load, budget_s)
        log.warning("CPU runtime probe took %.1f s (%d candidates, loads included; budget %.0f "
                    "s, EMBED_PROBE_SECONDS)", time.perf_counter() - t0, len(cands), budget_s)
        rows = [{"provider": m.candidate.provider, "precision": m.candidate.precision,
                 "tokens_per_s": m.tokens_per_s, "cos_min": m.cos_min, "error": m.error}
                for m in measured.values()]
        write_bytes_atomic(path, json.dumps({"version": PROBE_VERSION, "bundle": str(bundle.path),
                                             "measured_at": time.time(), "rows": rows},
                                            indent=1).encode())
        return measured


def measure(bundle: Bundle, cands: Sequence[Candidate], threads: int | None,
            load: Callable[..., Any], budget_s: float = PROBE_BUDGET_S
            ) -> dict[Candidate, Measured]:
    """Run the probe sample through each candidate: tokens/s and min cosine vs CPU-EP fp32.

    ``budget_s`` is the whole probe's, loads included: the first candidate to load sizes the
    sample (``fit_sample``) to its share of what the other loads (each as slow as the slowest
    so far) leave; each measures for its share (at least a warm-up and one pass: a budget
    smaller than the loads is overrun, never a candidate skipped)."""
    texts = mixed(probe_texts(bundle.config.max_length))
    sample: list[str] | None = None
    out: dict[Candidate, Measured] = {}
    reference: np.ndarray | None = None
    start, n, load_s = time.perf_counter(), len(cands), 0.0
    for k, c in enumerate(cands):
        try:
            t0 = time.perf_counter()
            model = load(bundle, device="cpu", threads=threads,
                         choice=Choice(c.provider, c.precision, "probe"))
            if model.provider != c.provider:
                raise RuntimeError(f"listed but failed to create: the session runs on "
                                   f"{model.provider}")
            t1 = time.perf_counter()
            load_s = max(load_s, t1 - t0)

            def share() -> float:  # this candidate's part of what is left after the loads
                left = budget_s - (time.perf_counter() - start) - (n - k - 1) * load_s
                return max(0.0, left / (n - k))

            warm = sample is None  # the calibration batch warms this candidate up
            if sample is None:
                sample = fit_sample(model, texts, share())
            warm = warm and sample == texts[:CALIBRATION_TEXTS]
            vecs, tps = _timed(model, sample, share(), warmed=warm)
            _kept.clear()  # one candidate's session in memory at a time; the last one is kept
            if k == n - 1:  # for the worker, if it is the choice (``take_kept``)
                _kept[(str(bundle.path), c, threads)] = model
            del model
        except Exception as exc:  # noqa: BLE001 - a candidate that fails is one bad row
            out[c] = Measured(c, error=f"{type(exc).__name__}: {exc}"[:300])
            continue
        if c == Candidate(CPU, "fp32"):
            reference = vecs
        cos = None if reference is None else float((vecs * reference).sum(axis=1).min())
        out[c] = Measured(c, tokens_per_s=round(tps, 1),
                          cos_min=None if cos is None else round(cos, 6))
        log.info("CPU runtime probe: %s %.0f tok/s on %d texts, min cosine vs fp32 %s (load "
                 "%.1f s, measure %.1f s)", c.label, tps, len(sample), cos, t1 - t0,
                 time.perf_counter() - t1)
    return out


_kept: dict[tuple[str, Candidate, int | None], Any] = {}
"""The session of the last candidate the probe in this process measured (at most one)."""


def take_kept(bundle: str | os.PathLike[str], choice: Choice, threads: int | None) -> Any:
    """The probe's session for ``choice`` when it was the last one measured (the worker then
    loads nothing again), else None; either way the probe keeps no session after this."""
    model = _kept.pop((str(load_bundle(bundle).path), choice.candidate, threads), None)
    _kept.clear()
    return model


def fit_sample(model: Any, texts: list[str], seconds: float) -> list[str]:
    """The prefix of ``texts`` whose warm-up and one timed pass fit ``seconds``, priced by one
    small batch (never fewer than ``CALIBRATION_TEXTS`` texts; its first-run costs make the
    estimate err on the short side); a model fast enough gets every text."""
    n_tokens = [len(e.ids) for e in model.tokenizer.encode_batch(texts)]
    t0 = time.perf_counter()
    model.embed(texts[:CALIBRATION_TEXTS])
    spent = time.perf_counter() - t0
    per_token = spent / max(1, sum(n_tokens[:CALIBRATION_TEXTS]))
    allowed = max(0.0, seconds - spent) / 2 / max(per_token, 1e-9)
    n, total = 0, 0
    for k in n_tokens:
        if total + k > allowed and n >= CALIBRATION_TEXTS:
            break
        n, total = n + 1, total + k
    return texts[:n]


def mixed(texts: list[str]) -> list[str]:
    """The probe texts with lengths interleaved (short, ~128, short, ~256, short, ~512, ...),
    so that any prefix of them mixes short texts and chunk-sized ones."""
    from worker.export.samples import SAMPLE_TEXTS

    short, chunks = texts[:len(SAMPLE_TEXTS)], texts[len(SAMPLE_TEXTS):]
    per = PROBE_PER_LENGTH
    chunks = [chunks[i] for i in sorted(range(len(chunks)), key=lambda i: (i % per, i // per))]
    out: list[str] = []
    for k, chunk in enumerate(chunks):
        out += short[k:k + 1] + [chunk]
    return out + short[len(chunks):]


def probe_texts(max_length: int) -> list[str]:
    """The gate sample plus chunk-sized texts cut from it (about 4 characters per token; the
    tokenizer truncates at the window anyway)."""
    from worker.export.samples import SAMPLE_TEXTS

    texts = list(SAMPLE_TEXTS)
    joined = " ".join(SAMPLE_TEXTS)
    for n, tokens in enumerate(sorted({min(t, max_length) for t in PROBE_LENGTHS})):
        size = 4 * tokens
        for k in range(PROBE_PER_LENGTH):
            start = (size * (k + PROBE_PER_LENGTH * n)) % max(1, len(joined) - size)
            texts.append(joined[start:start + size])
    return texts


def _timed(model: Any, texts: list[str], seconds: float | None = None, warmed: bool = False
           ) -> tuple[np.ndarray, float]:
    """Vectors and tokens/s of the fastest repetition after a warm-up (``warmed``: these texts
    just ran, none needed): as many as fit in ``seconds`` (counting the warm-up; at most
    ``PROBE_SECONDS`` of repetitions; at least one, so a large model on a small CPU pays two
    passes)."""
    t_start = time.perf_counter()
    vecs = None if warmed else model.embed(texts)  # OpenVINO compiles per input shape
    n_tokens = sum(len(e.ids) for e in model.tokenizer.encode_batch(texts))
    limit = PROBE_SECONDS if seconds is None else min(
        PROBE_SECONDS, seconds - (time.perf_counter() - t_start))
    t0, best, reps = time.perf_counter(), float("inf"), 0
    while reps < 1 or time.perf_counter() - t0 < limit:
        t1 = time.perf_counter()
        out = model.embed(texts)
        vecs = out if vecs is None else vecs
        best = min(best, time.perf_counter() - t1)
        reps += 1
        if reps >= 20:
            break
    return vecs, n_tokens / best
