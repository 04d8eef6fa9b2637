"""``producer eval``: a bundle's quality on the user's labelled data, per variant × provider.

Not a stage of the job flow: a measuring tool, like ``producer bench``. Each variant is loaded
with ``worker.model.session.load_model`` and the texts go through the worker's own stages 6-8,
so a figure is what a job's vectors would score. The model inputs are the ones a job and
sentence-transformers' evaluators build:

- triplets: ``query_prefix + query``, ``passage_prefix + positive/negative`` (the evaluator's
  ``encode_query``/``encode_document``); pairs: the texts as they are (``encode``); both cut at
  the model window by the tokenizer, as sentence-transformers does;
- retrieval: queries with the query prefix; every corpus document chunked exactly as a job
  chunks it (``worker.staging.chunking.chunk_document``, the bundle's window, passage prefix, no
  overlap) and scored by its best chunk (max-sim, ``evalmetrics.retrieval_metrics``). A
  document that fits the window is one chunk, so the figures equal the evaluator's.

Each distinct input is embedded once per row; tokens/s counts real tokens over the timed loop
after one warm-up batch. Deltas are against fp32 on the same provider (else fp32 on CPU).
onnxruntime is imported only inside ``run_eval`` (through worker.model.session).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.staging.chunking import chunk_document
from producer.tools import evalmetrics as em
from producer.tools.bench import DEVICES, PROVIDERS, check_names, runnable_rows
from producer.tools.evalcompact import RESCORE, combinations, compact_rows, rescorer
from producer.tools.evaldata import DataReject, EvalData
from producer.tools.table import text_table

Log = Callable[[str], Any]


@dataclass
class EvalRow:
    variant: str
    provider: str
    runtime: str = ""  # the precision the session computes in (bf16 where a provider casts)
    status: str = "ok"  # ok, skipped, error
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    texts: int = 0
    tokens: int = 0
    seconds: float | None = None
    tokens_per_s: float | None = None
    dim: int | None = None
    """``--dim`` (evalcompact.py); None: the model's, float32 (the reference row)."""
    dtype: str = "float32"
    bytes_per_vector: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalInputs:
    """Distinct model inputs of a data set and where each role finds its rows."""

    texts: list[str]
    roles: dict[str, list[int]]
    chunk_doc: list[int] = field(default_factory=list)
    doc_ids: list[str] = field(default_factory=list)
    relevant: list[set[str]] = field(default_factory=list)


def build_inputs(data: EvalData, bundle: Any) -> EvalInputs:
    """The texts to embed for ``data``, prefixed and chunked as a job does for ``bundle``.

    A corpus document the chunker cannot cut (one character over the window) is added to
    ``data.rejects``; its qrels then point nowhere and those judgements are dropped.
    """
    cfg = bundle.config
    texts: dict[str, int] = {}

    def ids(items: Sequence[str], prefix: str = "") -> list[int]:
        return [texts.setdefault(prefix + t, len(texts)) for t in items]

    if data.task == "triplets":
        q, p, n = zip(*data.rows, strict=True)
        roles = {"query": ids(q, cfg.query_prefix), "positive": ids(p, cfg.passage_prefix),
                 "negative": ids(n, cfg.passage_prefix)}
        return EvalInputs(list(texts), roles)
    if data.task == "pairs":
        a, b, _ = zip(*data.rows, strict=True)
        roles = {"text1": ids(a), "text2": ids(b)}
        return EvalInputs(list(texts), roles)
    tok = bundle.load_tokenizer(truncate=False)
    chunks, chunk_doc, doc_ids = [], [], []
    for doc_id, text in data.corpus.items():
        try:
            spans = chunk_document(text, tok, max_tokens=cfg.max_length, prefix=cfg.passage_prefix)
        except ValueError as exc:  # line 0: the corpus id names it; once per data set
            reject = DataReject(data.source, 0, f"corpus id {doc_id!r}: {exc}")
            data.rejects += [] if reject in data.rejects else [reject]
            continue
        chunks += [text[s.char_start:s.char_end] for s in spans]
        chunk_doc += [len(doc_ids)] * len(spans)
        doc_ids.append(doc_id)
    known = set(doc_ids)
    judged = [(qid, rel & known) for qid, rel in _judged(data)]
    judged = [(qid, rel) for qid, rel in judged if rel]
    roles = {"query": ids([data.queries[qid] for qid, _ in judged], cfg.query_prefix),
             "chunk": ids(chunks, cfg.passage_prefix)}
    return EvalInputs(list(texts), roles, chunk_doc, doc_ids, [rel for _, rel in judged])


def score(data: EvalData, inputs: EvalInputs, vecs: np.ndarray) -> dict[str, float]:
    """The task's metrics from the embedded inputs."""
    r = {k: vecs[v] for k, v in inputs.roles.items()}
    if data.task == "triplets":
        return {"accuracy": em.triplet_accuracy(r["query"], r["positive"], r["negative"])}
    if data.task == "pairs":
        return em.pair_correlations(r["text1"], r["text2"], [row[2] for row in data.rows])
    return em.retrieval_metrics(r["query"], r["chunk"], inputs.chunk_doc, inputs.doc_ids,
                                inputs.relevant)


def run_eval(bundle_path: str | Path, data: EvalData, *, variants: Sequence[str],
             providers: Sequence[str], threads: int | None = None,
             max_batch_tokens: int | None = None, log: Log = lambda _: None,
             dims: Sequence[int] = (), dtypes: Sequence[str] = ()) -> list[EvalRow]:
    """Evaluate each variant × provider; unusable ones come back as ``skipped`` rows.

    ``dims``/``dtypes``: after each variant's row, one row per compact combination of its
    vectors (producer/tools/evalcompact.py), its delta taken against that variant's row.

    Raises:
        ValueError: an unknown provider or variant name, a bad dim or dtype.
    """

    import onnxruntime as ort

    from storage.bundle import load_bundle
    from worker.model.session import load_model

    check_names(providers, variants, "--variants")
    bundle = load_bundle(bundle_path)
    inputs = build_inputs(data, bundle)
    combos = combinations(dims, dtypes, bundle.config.dim)
    rescore = rescorer(inputs, em.RECALL_AT[-1] * RESCORE) if data.task == "retrieval" else None
    available = ort.get_available_providers()
    rows: list[EvalRow] = []
    extra: dict[int, list[EvalRow]] = {}
    for row in runnable_rows(rows, EvalRow, providers, variants, bundle.variants, available):
        prov, prec = row.provider, row.variant
        log(f"{prec} on {prov}: {len(inputs.texts)} texts ...")
        try:
            model = load_model(bundle, device=DEVICES[prov], precision=prec,
                               threads=threads, strict=prov == "cuda")
            if model.provider != PROVIDERS[prov]:
                raise RuntimeError(f"asked for {PROVIDERS[prov]}, runs on {model.provider}")
            row.runtime = str(getattr(model, "runtime_precision", model.precision))
            vecs = embed_timed(model, inputs.texts, max_batch_tokens, row)
            row.metrics = score(data, inputs, vecs)
            row.bytes_per_vector = 4 * vecs.shape[1]
            extra[id(row)] = compact_rows(row, vecs, combos,
                                          lambda v: score(data, inputs, v), rescore)
            for r in extra[id(row)]:
                r.delta = em.metric_deltas(r.metrics, row.metrics)
        except Exception as exc:  # noqa: BLE001 - a variant that fails is one bad row
            row.status, row.reason = "error", f"{type(exc).__name__}: {exc}"[:300]
    _fill_deltas(rows)
    return [r for row in rows for r in (row, *extra.get(id(row), []))]


def variant_metrics(data: EvalData) -> Callable[[Path, str], dict[str, float]]:
    """``evaluate(bundle_dir, precision)`` for the export gate: that variant on the CPU.

    Raises (from the returned function):
        BundleError: the variant could not be scored; the message carries the row's reason.
    """
    from storage.errors import BundleError

    def evaluate(root: Path, precision: str) -> dict[str, float]:
        (row,) = run_eval(root, data, variants=[precision], providers=["cpu"])
        if row.status != "ok":
            raise BundleError(f"{root}: {precision} cannot be evaluated ({row.reason})")
        return row.metrics

    return evaluate


def evaluation_lines(evaluation: dict[str, Any] | None) -> list[str]:
    """The export gate's figures stored in a bundle, one line per variant (bench, report).

    >>> ev = {"data": "dev.jsonl", "task": "triplets", "metric": "accuracy", "max_drop": 0.01,
    ...       "variants": {"fp32": {"metrics": {"accuracy": 0.9}},
    ...                    "int8": {"metrics": {"accuracy": 0.85}, "drop": 0.05, "passed": False}}}
    >>> print("\\n".join(evaluation_lines(ev)))
    eval gate  triplets on dev.jsonl, accuracy, allowed drop 0.01
      fp32  accuracy 0.9000
      int8  accuracy 0.8500  drop 0.0500  refused
    """
    if not evaluation:
        return []
    metric = evaluation.get("metric", "")
    lines = [f"eval gate  {evaluation.get('task')} on {evaluation.get('data')}, {metric}, "
             f"allowed drop {evaluation.get('max_drop')}"]
    for prec, res in (evaluation.get("variants") or {}).items():
        value = (res.get("metrics") or {}).get(metric)
        line = f"  {prec:4}  " + (f"{metric} {value:.4f}" if value is not None else
                                  f"not checked ({res.get('skipped', '')})")
        if "drop" in res:
            line += f"  drop {res['drop']:.4f}  {'kept' if res.get('passed') else 'refused'}"
        lines.append(line)
    return lines


def embed_timed(model: Any, texts: Sequence[str], max_batch_tokens: int | None,
                row: EvalRow) -> np.ndarray:
    """Embed ``texts`` in the worker's batches; fill the row's token and speed figures."""
    from worker.model.batching import batch_budget, batches_by_tokens, encode

    budget = batch_budget("gpu" if model.provider == PROVIDERS["cuda"] else "cpu",
                          max_batch_tokens)
    ids = encode(model.tokenizer, texts)
    model.run(next(batches_by_tokens(ids[:8], model.pad_id, budget)))  # warm-up, not timed
    out = np.zeros((len(texts), model.bundle.config.dim), dtype=np.float32)
    t0 = time.perf_counter()
    for batch in batches_by_tokens(ids, model.pad_id, budget):
        out[batch.positions] = model.run(batch)
        row.tokens += batch.real_tokens
    row.seconds = round(time.perf_counter() - t0, 3)
    row.texts = len(texts)
    row.tokens_per_s = round(row.tokens / row.seconds, 1) if row.seconds else None
    return out


def format_eval_table(rows: Sequence[EvalRow], task: str) -> str:
    """One line per row: the primary metric and its delta first, then the others; with
    compact rows (``--dim``/``--dtype``) also dim, dtype and bytes per vector."""
    main = em.primary_metric(task)
    names = [main] + sorted({k for r in rows for k in r.metrics} - {main}, key=_metric_order)
    compact = any(r.dim is not None for r in rows)
    form = ["dim", "dtype", "bytes"] if compact else []
    head = ["variant", "provider", "runtime", *form, main, "vs ref" if compact else "vs fp32",
            *names[1:], "tokens/s"]
    cells = []
    for r in rows:
        if r.status != "ok":
            cells.append([r.variant, r.provider, f"{r.status}: {r.reason}"])
            continue
        d = r.delta.get(main)
        shape = [str(r.dim or "full"), r.dtype, str(r.bytes_per_vector)] if compact else []
        cells.append([r.variant, r.provider, r.runtime, *shape, f"{r.metrics[main]:.4f}",
                      "-" if d is None else f"{d:+.4f}",
                      *(f"{r.metrics.get(k, float('nan')):.4f}" for k in names[1:]),
                      "-" if r.tokens_per_s is None else f"{r.tokens_per_s:,.0f}"])
    lines = text_table(head, cells, left=5 if compact else 3)
    if compact:
        lines.append("vs ref: a variant against fp32; a dim/dtype row against its variant at "
                     "float32, full dim")
    return "\n".join(lines)


def _fill_deltas(rows: list[EvalRow]) -> None:
    ok = [r for r in rows if r.status == "ok" and r.dim is None]
    refs = {r.provider: r for r in ok if r.variant == "fp32"}
    for r in ok:
        ref = refs.get(r.provider) or refs.get("cpu")
        if ref is not None:
            r.delta = em.metric_deltas(r.metrics, ref.metrics)


def _judged(data: EvalData) -> list[tuple[str, set[str]]]:
    """Queries with relevant documents, in queries-file order (the evaluator's order)."""
    return [(qid, data.relevant[qid]) for qid in data.queries if data.relevant.get(qid)]


def _metric_order(name: str) -> tuple[str, int]:
    base, _, k = name.partition("@")
    return base, int(k) if k.isdigit() else 0
