"""``producer bench``: every bundle variant × provider on a text sample, directly, no broker.

Not a stage of the job flow: a measuring tool. Each variant is loaded with
``worker.model.session.load_model`` and the sample goes through the worker's own stages 6-8 (tokenise,
length-sorted token-budget batches, run + pool + normalise), so the figures are what a worker's
inference loop does, without Redis, Celery or Parquet. Texts longer than the model window are
truncated by the tokenizer (no chunking). Cosine similarity is against fp32 on CPU. On the CPU
providers (CPU EP, OpenVINO EP) a provider × precision runs only where the worker's own rule
(``choose_cpu_runtime``) allows it, e.g. bf16 needs the OpenVINO EP and a CPU with bf16 math.

onnxruntime is imported only inside ``run_bench`` (through worker.model.session), so importing this
module keeps the producer free of it.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from producer.errors import UsageError
from producer.tools.table import text_table
from storage.metrics import rss_mb
from worker.contract import Device
from worker.model.pooling import cosine_rows

PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider",
             "cuda": "CUDAExecutionProvider"}
"""``--providers`` names (ONNX Runtime's providers) and the device each runs on."""
DEVICES = {"cpu": Device.CPU, "openvino": Device.CPU, "cuda": Device.GPU}
SAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sample.jsonl"
"""Default sample: the repository's examples (375 real documents)."""


@dataclass
class BenchRow:
    precision: str
    provider: str
    status: str = "ok"  # ok, skipped, error
    reason: str = ""
    docs: int = 0
    batches: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    tokens_per_s: float | None = None
    docs_per_s: float | None = None
    peak_rss_mb: float | None = None
    load_s: float | None = None
    cos_min: float | None = None
    cos_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_texts(corpus: str | Path | None, text_field: str = "text",
               limit: int | None = None) -> list[str]:
    """Texts of ``corpus`` (.jsonl, .jsonl.gz, .parquet; default: examples/sample.jsonl)."""
    from worker.staging.corpus import Record, iter_records

    if corpus is None and not SAMPLE.is_file():
        from worker.export.samples import SAMPLE_TEXTS

        return list(SAMPLE_TEXTS)[:limit]
    texts: list[str] = []
    for rec in iter_records(corpus or SAMPLE, text_field=text_field):
        if isinstance(rec, Record):
            texts.append(rec.text)
            if limit is not None and len(texts) >= limit:
                break
    return texts


def run_bench(bundle_path: str | Path, texts: Sequence[str], *, precisions: Sequence[str],
              providers: Sequence[str], threads: int | None = None,
              max_batch_tokens: int | None = None,
              log: Callable[[str], Any] = lambda _: None) -> list[BenchRow]:
    """Benchmark each precision × provider; unavailable ones come back as ``skipped`` rows.

    Raises:
        UsageError: an unknown provider or precision name (a ValueError).
    """
    import onnxruntime as ort

    from storage.bundle import load_bundle
    from worker.model.session import load_model

    check_names(providers, precisions)
    bundle = load_bundle(bundle_path)
    available = ort.get_available_providers()
    reference: np.ndarray | None = None
    rows: list[BenchRow] = []
    for row in runnable_rows(rows, BenchRow, providers, precisions, bundle.variants, available):
        prov, prec = row.provider, row.precision
        log(f"{prec} on {prov} ...")
        try:
            vecs = _measure(row, bundle, load_model, prov, prec, texts, threads,
                            max_batch_tokens)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is one bad row
            row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"[:300]
            continue
        if prec == "fp32" and prov == "cpu":
            reference = vecs
        elif reference is None:
            reference = _reference(bundle, load_model, texts, threads, max_batch_tokens)
        if reference is not None:
            cos = cosine_rows(vecs, reference)
            row.cos_min, row.cos_mean = round(float(cos.min()), 5), round(float(cos.mean()), 5)
        del vecs
        gc.collect()
    return rows


def check_names(providers: Sequence[str], precisions: Sequence[str],
                precision_option: str = "--precisions") -> None:
    """Raise UsageError (a ValueError) on an unknown provider or precision name."""
    from storage.bundle import RUNTIME_PRECISIONS, VARIANT_FILES

    for p in providers:
        if p not in PROVIDERS:
            raise UsageError(f"--providers: unknown provider {p!r}; valid: {', '.join(PROVIDERS)}")
    for p in precisions:
        if p not in VARIANT_FILES and p not in RUNTIME_PRECISIONS:
            raise UsageError(f"{precision_option}: unknown precision {p!r}; "
                             f"valid: {', '.join([*VARIANT_FILES, *RUNTIME_PRECISIONS])}")


def runnable_rows(rows: list[Any], make: Callable[[str, str], Any], providers: Sequence[str],
                  precisions: Sequence[str], variants: Sequence[str],
                  available: Sequence[str]) -> Iterator[Any]:
    """Append ``make(precision, provider)`` to ``rows`` for each pair, per provider with fp32
    first (the reference of bench's cosines and eval's deltas); a pair that cannot run gets
    status ``skipped`` and its reason, the others are yielded to be run."""
    for prov in providers:
        for prec in sorted(precisions, key=lambda p: p != "fp32"):
            row = make(prec, prov)
            rows.append(row)
            skip = skip_reason(prov, prec, variants, available)
            if skip:
                row.status, row.reason = "skipped", skip
            else:
                yield row


def skip_reason(provider: str, precision: str, variants: Sequence[str],
                available: Sequence[str]) -> str | None:
    """Why ``precision`` on ``provider`` is not run (None: run it); shared with ``producer eval``.

    >>> skip_reason("cuda", "fp32", ["fp32"], ["CPUExecutionProvider"])
    'CUDAExecutionProvider not available (have CPUExecutionProvider)'
    """
    from storage.bundle import RUNTIME_PRECISIONS

    if PROVIDERS[provider] not in available:
        return f"{PROVIDERS[provider]} not available (have {', '.join(available)})"
    if RUNTIME_PRECISIONS.get(precision, precision) not in variants:
        return f"bundle has no {precision} variant (has {', '.join(variants)})"
    if provider == "cuda" and precision == "int8":
        return "dynamic int8 is not run on CUDA"
    if provider == "cuda" and precision == "bf16":
        return "bf16 is not run on CUDA"
    return _cpu_refusal(provider, precision, available, variants) or None


def format_bench_table(rows: Sequence[BenchRow]) -> str:
    head = ("variant", "provider", "batches", "p50 ms", "p95 ms", "tokens/s", "docs/s",
            "peak RSS MB", "cos min", "cos mean")
    cells = []
    for r in rows:
        if r.status != "ok":
            cells.append([r.precision, r.provider, f"{r.status} ({r.reason})"])
            continue
        cells.append([r.precision, r.provider, f"{r.batches}", _f(r.p50_ms, 1), _f(r.p95_ms, 1),
                      _f(r.tokens_per_s, 0), _f(r.docs_per_s, 1), _f(r.peak_rss_mb, 0),
                      _f(r.cos_min, 4), _f(r.cos_mean, 4)])
    return "\n".join(text_table(head, cells, left=2))


# -- helpers ---------------------------------------------------------------------------------
def _measure(row: BenchRow, bundle: Any, load_model: Any, prov: str, prec: str,
             texts: Sequence[str], threads: int | None,
             max_batch_tokens: int | None) -> np.ndarray:
    from worker.model.batching import batch_budget, batches_by_tokens, encode

    from worker.model.providers import Choice

    t0 = time.perf_counter()
    choice = None if prov == "cuda" else Choice(PROVIDERS[prov], prec, "bench")
    model = load_model(bundle, device=DEVICES[prov], precision=prec, threads=threads,
                       strict=prov == "cuda", choice=choice)
    row.load_s = round(time.perf_counter() - t0, 3)
    active = model.provider
    if active != PROVIDERS[prov]:
        raise RuntimeError(f"asked for {PROVIDERS[prov]}, session runs on {active}")
    max_batch_tokens = batch_budget(DEVICES[prov], max_batch_tokens)
    peak = rss_mb()
    batches = list(batches_by_tokens(encode(model.tokenizer, texts[:8]), model.pad_id,
                                     max_batch_tokens))
    model.run(batches[0])  # warm-up: first-run allocations and kernel selection
    t_start = time.perf_counter()
    ids = encode(model.tokenizer, texts)
    out = np.zeros((len(texts), bundle.config.dim), dtype=np.float32)
    lat: list[float] = []
    for batch in batches_by_tokens(ids, model.pad_id, max_batch_tokens):
        t = time.perf_counter()
        out[batch.positions] = model.run(batch)
        lat.append((time.perf_counter() - t) * 1000)
        row.real_tokens += batch.real_tokens
        row.padded_tokens += batch.padded_tokens
        peak = max(peak, rss_mb())
    elapsed = time.perf_counter() - t_start
    row.docs, row.batches = len(texts), len(lat)
    row.p50_ms = round(float(np.percentile(lat, 50)), 2) if lat else None
    row.p95_ms = round(float(np.percentile(lat, 95)), 2) if lat else None
    row.tokens_per_s = round(row.real_tokens / elapsed, 1) if elapsed else None
    row.docs_per_s = round(len(texts) / elapsed, 2) if elapsed else None
    row.peak_rss_mb = round(peak, 1)
    del model
    return out


def _cpu_refusal(prov: str, prec: str, available: Sequence[str], variants: Sequence[str]) -> str:
    """Why the worker would refuse this CPU provider × precision ("" when it would run it)."""
    if prov == "cuda":
        return ""
    from worker.errors import ProviderUnavailable
    from worker.model.providers import choose_cpu_runtime
    from worker.model.session import cpu_flags

    try:
        c = choose_cpu_runtime(available, cpu_flags(), variants, override=prov, precision=prec)
    except ProviderUnavailable as exc:
        return str(exc)
    return "" if c.provider == PROVIDERS[prov] else f"{prec} runs on {c.provider}, not {prov}"


def _reference(bundle: Any, load_model: Any, texts: Sequence[str], threads: int | None,
               max_batch_tokens: int | None) -> np.ndarray | None:
    try:
        model = load_model(bundle, device="cpu", precision="fp32", threads=threads)
        return model.embed(texts, max_batch_tokens)
    except Exception:  # noqa: BLE001 - no reference only blanks the cosine columns
        return None


def _f(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"
