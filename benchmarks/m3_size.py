"""BGE-M3 at its real size on this machine: tokens/s and peak RSS by provider x runtime precision
x output set x chunk length, through the worker's own session, against torch fp32.

    flock /work/m3/heavy.lock .venv/bin/python benchmarks/m3_size.py \\
        --model-dir /work/m3/src --bundle /work/m3/bundle-fp32          # ~15 min on 2 cores
    .venv/bin/python benchmarks/m3_size.py --from-json benchmarks/results/m3_size.json
    .venv/bin/python benchmarks/m3_size.py --smoke --json /tmp/m3.json  # tiny model, code paths

``--model-dir`` is the Hugging Face model directory (``benchmarks/m3_standin.py`` builds the
real-size random-weight stand-in), ``--bundle`` its export (``producer export``). Rows:

- ONNX Runtime through ``worker.model.session.load_model`` (what a worker runs), CPU EP and
  OpenVINO EP, at every runtime precision this machine can run: fp32; int8 when the bundle has
  it (CPU EP); bf16 (OpenVINO) only with amx_bf16/avx512_bf16, else "not on this CPU". Output
  sets: dense (``LoadedModel.embed``) and dense + sparse + ColBERT (``encode``), the worker's
  batching (length-sorted, CPU token budget: an 8,192-token chunk runs alone).
- torch fp32, the peer and the reference: the HF model itself (``AutoModel``), CLS pooling +
  L2 normalisation as BGE-M3, on the same token ids and batches. Every ONNX row's dense vectors
  are compared with it (min cosine; the 8,192-token check needs >= 0.999).
- the previous release: same session code, but its worker recycled the pool child after any
  task once the child's RSS passed ``worker_max_memory_per_child`` (4,000,000 KiB), so every
  32,768-token shard paid a model load: shown as tokens / (tokens / rate + load) for rows
  whose peak RSS passed that limit.
- CUDA EP fp16 rows come from ``benchmarks/results/gpu.json`` (``benchmarks/gpu.py`` on a CUDA
  machine); "not measured" until that file exists.

Each (provider, precision, chunk length) runs in a fresh process, so peak RSS (VmHWM) is
that row's: load, a short warm-up, the dense pass, then the dense + sparse + ColBERT pass (whose
peak includes the dense pass's, which is not larger). Load time is ``load_model`` (session
creation, OpenVINO's compile). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_m3 import OUTPUT_SETS, timed_pass  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "m3_size.json"
GPU_JSON = ROOT / "benchmarks" / "results" / "gpu.json"
CHUNKS = {128: 16, 512: 4, 8192: 1}
"""Chunks per length for the real-size run: ~2,000 tokens for each short row, one 8k chunk."""
SMOKE_CHUNKS = {16: 6, 64: 3, 1024: 1}
PREV_RELEASE = "7ed3459"
PREV_MAX_MEMORY_KIB = 4_000_000
"""``worker_max_memory_per_child`` in the previous release (worker/celery_app.py)."""
SHARD_TOKENS = 32768
"""``--shard-tokens`` default: real tokens per task, so per recycled child in that release."""
MIN_COSINE = 0.999
FLAG_NAMES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
PROVIDERS = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}
RUNTIME_PRECISIONS = {"cpu": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
"""What a CPU worker can run per provider (worker/model/providers.py ``cpu_candidates``)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="HF model directory (torch reference)")
    ap.add_argument("--bundle", type=Path, help="its bundle (producer export)")
    ap.add_argument("--providers", default="cpu,openvino")
    ap.add_argument("--chunks", default=",".join(f"{k}:{v}" for k, v in CHUNKS.items()),
                    help="LENGTH:COUNT,... chunk lengths in tokens and how many of each")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--budget-s", type=float, default=1800,
                    help="stop starting rows after this; what ran is written")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch rows")
    ap.add_argument("--json", type=Path, default=None, help=f"default {DEFAULT_JSON}")
    ap.add_argument("--gpu-json", type=Path, default=GPU_JSON)
    ap.add_argument("--from-json", type=Path, help="only print the tables of a results file")
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes (tests)")
    ap.add_argument("--workdir", type=Path, help="keep chunks, vectors and logs here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    if a.from_json:
        print(markdown(json.loads(a.from_json.read_text()), a.gpu_json))
        return 0
    if a.smoke and a.json is None:
        raise SystemExit("--smoke needs --json FILE (it never overwrites the committed results)")
    if not a.smoke and not (a.model_dir and a.bundle):
        raise SystemExit("give --model-dir and --bundle (or --smoke, or --from-json)")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="m3-size-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.smoke:
        a.model_dir, a.bundle = smoke_model(work)
        if a.chunks == parser_default(ap, "chunks"):
            a.chunks = ",".join(f"{k}:{v}" for k, v in SMOKE_CHUNKS.items())
    out = a.json or DEFAULT_JSON
    out.parent.mkdir(parents=True, exist_ok=True)
    res = run_all(a, work, save=lambda r: out.write_text(json.dumps(r, indent=2) + "\n"))
    print(markdown(res, a.gpu_json))
    print(f"\nresults: {out}")
    return 0


def parser_default(ap: argparse.ArgumentParser, dest: str) -> Any:
    return ap.get_default(dest)


def smoke_model(work: Path) -> tuple[Path, Path]:
    """The tiny BGE-M3 of the tests (tests/model_fixtures.py), exported fp32."""
    from tests.model_fixtures import make_tiny_m3
    from worker.export import export_bundle

    src = make_tiny_m3(work / "tiny-src")
    return src, export_bundle(src, work / "tiny-bundle", precisions="fp32", log=lambda s: None)


# --- the parent: plan, run each row in a fresh process, compare ------------------------------

def run_all(a: argparse.Namespace, work: Path,
            save: Callable[[dict[str, Any]], None] = lambda r: None) -> dict[str, Any]:
    """Every row; ``save`` gets the results so far after each process (a stopped run keeps
    what it measured)."""
    from storage.bundle import load_bundle
    from worker.model.providers import BF16_FLAGS
    from worker.model.session import available_providers, cpu_flags

    t_start = time.monotonic()
    bundle = load_bundle(a.bundle)
    counts = parse_chunks(a.chunks)
    chunk_files = write_chunks(bundle, counts, work, source="samples" if a.smoke else "corpus")
    flags, avail = cpu_flags(), available_providers()
    meta = machine(a.threads)
    meta.update(command=" ".join(["benchmarks/m3_size.py", *sys.argv[1:]]), bundle=str(a.bundle),
                model_dir=str(a.model_dir), variants=bundle.variants,
                bundle_gb=round(sum(p.stat().st_size for p in Path(a.bundle).iterdir()
                                    if p.is_file()) / 1e9, 2),
                chunks={str(k): v for k, v in counts.items()}, prev_release=PREV_RELEASE)
    jobs: list[dict[str, Any]] = []
    if not a.no_torch:
        jobs.append({"kind": "torch", "provider": "torch", "precision": "fp32"})
    for name in a.providers.split(","):
        prov = PROVIDERS.get(name)
        if prov is None:
            raise SystemExit(f"--providers: unknown provider {name!r} (cpu, openvino)")
        for prec in RUNTIME_PRECISIONS[name]:
            why = ("" if prov in avail else f"{prov} not installed") or unavailable(
                name, prec, bundle.variants, flags, BF16_FLAGS)
            jobs.append({"kind": "ort", "provider": name, "precision": prec, "skip": why})
    rows: list[dict[str, Any]] = []
    procs: list[dict[str, Any]] = []
    rows += [{"provider": j["provider"], "precision": j["precision"], "status": "skipped",
              "reason": j["skip"]} for j in jobs if j.get("skip")]
    # The longest chunks first: load time, peak RSS and the torch check come from them, so a
    # run that meets its budget early loses short rows, not those.
    for length, path in sorted(chunk_files.items(), reverse=True):
        for job in (j for j in jobs if not j.get("skip")):
            left = a.budget_s - (time.monotonic() - t_start)
            tag = f"{job['provider']}-{job['precision']}-{length}"
            if left < 5:
                rows.append({"provider": job["provider"], "precision": job["precision"],
                             "length": length, "status": "skipped",
                             "reason": f"time budget ({a.budget_s:.0f} s) spent"})
                continue
            say(f"{tag} ...")
            spec = {**job, "bundle": str(a.bundle), "model_dir": str(a.model_dir),
                    "threads": a.threads, "chunks_file": str(path), "length": length,
                    "device": "cpu", "vectors": str(work / f"{tag}.npy"),
                    "out": str(work / f"{tag}.json")}
            r = run_child(spec, work / f"{tag}.log", timeout=left)
            procs.append({k: r.get(k) for k in ("provider", "precision", "length", "status",
                                                "load_s", "rss_after_load_mb", "active",
                                                "runtime_precision", "wall_s", "reason")})
            rows.extend(r.pop("rows", []) or [{**r, "status": r["status"]}])
            save(finish(meta, rows, procs, work, t_start))
    res = finish(meta, rows, procs, work, t_start)
    save(res)
    return res


def finish(meta: dict[str, Any], rows: list[dict[str, Any]], procs: list[dict[str, Any]],
           work: Path, t_start: float) -> dict[str, Any]:
    add_cosines(rows, work)
    add_previous_release(rows, procs)
    meta["load_end"] = os.getloadavg()[0]
    meta["wall_s"] = round(time.monotonic() - t_start, 1)
    return {"meta": meta, "rows": rows, "processes": procs, "summary": summary(rows, procs)}


def unavailable(provider: str, prec: str, variants: list[str], flags: frozenset[str],
                bf16_flags: frozenset[str]) -> str:
    """Why ``provider`` cannot run ``prec`` here (the worker's own rules), or ''."""
    if prec == "bf16" and not bf16_flags & flags:
        return "not on this CPU (no " + "/".join(sorted(bf16_flags)) + ")"
    if prec == "int8" and "int8" not in variants:
        return "not in the bundle (no int8 variant)"
    return ""


def parse_chunks(spec: str) -> dict[int, int]:
    """``"128:48,8192:1"`` -> {128: 48, 8192: 1}."""
    try:
        out = {int(k): int(v) for k, v in (p.split(":") for p in spec.split(",") if p)}
    except ValueError:
        raise SystemExit(f"--chunks {spec!r}: give LENGTH:COUNT pairs, e.g. 128:48,8192:1")
    if not out or min(out) < 4 or min(out.values()) < 1:
        raise SystemExit(f"--chunks {spec!r}: lengths >= 4 tokens, counts >= 1")
    return out


def write_chunks(bundle: Any, counts: dict[int, int], work: Path, source: str
                 ) -> dict[int, Path]:
    """Distinct chunks of about LENGTH tokens (special tokens included), cut from real text at
    token boundaries with the bundle's tokenizer; one JSON list per length."""
    texts = iter_text(source)
    tok = bundle.load_tokenizer(truncate=False)
    window = bundle.config.max_length
    files: dict[int, Path] = {}
    text, enc, pos = "", None, 0
    for length, count in counts.items():
        if length > window:
            raise SystemExit(f"--chunks: {length} tokens is over the bundle's window ({window})")
        want, chunks = length - 2, []
        while len(chunks) < count:
            if enc is None or pos + want > len(enc.offsets):
                text = "\n\n".join(next(texts) for _ in range(20))
                enc, pos = tok.encode(text, add_special_tokens=False), 0
                continue
            a, b = enc.offsets[pos][0], enc.offsets[pos + want - 1][1]
            chunks.append(text[a:b])
            pos += want
        files[length] = work / f"chunks-{length}.json"
        files[length].write_text(json.dumps(chunks))
    return files


def iter_text(source: str):  # type: ignore[no-untyped-def]
    """Real text paragraphs, endlessly: ``corpus`` (benchmarks/corpus.py, the real-text corpus
    of the other benchmarks) or ``samples`` (worker/export/samples.py, instant, for --smoke)."""
    if source == "corpus":
        from benchmarks.corpus import build_corpus

        docs = [d["text"] for d in build_corpus(200, seed=24, log=say)]
    else:
        from worker.export.samples import SAMPLE_TEXTS

        docs = list(SAMPLE_TEXTS)
    n = 0
    while True:
        yield docs[n % len(docs)]
        n += 1


def run_child(spec: dict[str, Any], log: Path, timeout: float,
              poll: Callable[[int], None] | None = None, python: str = sys.executable
              ) -> dict[str, Any]:
    """Run ``spec`` in a fresh ``--child`` process; its result JSON, or a failed row."""
    cmd = [python, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TOKENIZERS_PARALLELISM="false")
    base = {k: spec[k] for k in ("provider", "precision", "length") if k in spec}
    t0 = time.monotonic()
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
        while p.poll() is None:
            if time.monotonic() - t0 > timeout:
                p.kill()
                p.wait()
                return {**base, "status": "timed out", "reason": f"over {timeout:.0f} s",
                        "wall_s": round(time.monotonic() - t0, 1)}
            if poll is not None:
                poll(p.pid)
            time.sleep(0.2)
    wall = round(time.monotonic() - t0, 1)
    out = Path(spec["out"])
    if p.returncode != 0 or not out.is_file():
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return {**base, "status": "failed", "reason": f"exit {p.returncode}: {tail[0][:300]}",
                "wall_s": wall}
    return {**base, "status": "ok", "wall_s": wall, **json.loads(out.read_text())}


# --- the child: one provider/precision/length in a fresh process -----------------------------

def child(spec: dict[str, Any]) -> int:
    texts: list[str] = json.loads(Path(spec["chunks_file"]).read_text())
    run = child_torch if spec["kind"] == "torch" else child_ort
    res = run(spec, texts)
    Path(spec["out"]).write_text(json.dumps(res))
    return 0


def child_ort(spec: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    import numpy as np

    from worker.model.session import load_model

    gpu = spec["device"] == "gpu"
    t0 = time.perf_counter()
    model = load_model(spec["bundle"], device=spec["device"], precision=spec["precision"],
                       threads=spec["threads"], strict=gpu,
                       cpu_provider="auto" if gpu else spec["provider"])
    load_s = time.perf_counter() - t0
    loaded = rss_now_mb()
    count = count_batches(model)
    m3 = "colbert" in model.bundle.config.outputs
    model.embed(["a short warm-up text.", "and another one, a little longer than it."])
    if m3:
        model.encode(["a short warm-up text."], OUTPUT_SETS["all"])
    rows = []
    for name in spec.get("outputs", ("dense", "all")):
        if name == "all" and not m3:
            continue
        count.clear()
        secs, out = timed_pass(model, texts, OUTPUT_SETS[name])
        rows.append({"provider": spec["provider"], "precision": spec["precision"],
                     "outputs": name, "length": spec["length"], "status": "ok",
                     "chunks": len(texts), "real_tokens": count["real"],
                     "padded_tokens": count["padded"], "batches": count["batches"],
                     "seconds": round(secs, 3), "tokens_per_s": round(count["real"] / secs, 1),
                     "peak_rss_mb": peak_rss_mb()})
        np.save(spec["vectors"].replace(".npy", f"-{name}.npy"), out["dense"])
    return {"load_s": round(load_s, 2), "rss_after_load_mb": loaded, "rows": rows,
            "active": model.provider, "runtime_precision": model.precision,
            "fallback": model.fallback}


class BatchCount(dict):
    """Real and padded tokens and batches the session ran; ``clear`` zeroes them."""

    def __init__(self) -> None:
        super().__init__(real=0, padded=0, batches=0)

    def clear(self) -> None:
        self.update(real=0, padded=0, batches=0)


def count_batches(model: Any) -> BatchCount:
    """Count every batch the session runs (wraps ``_infer``, which both ``run`` and
    ``run_outputs`` call), so the figures follow the worker's own batching."""
    count, infer = BatchCount(), model._infer

    def counted(batch: Any, names: list[str]) -> Any:
        count["real"] += batch.real_tokens
        count["padded"] += batch.padded_tokens
        count["batches"] += 1
        return infer(batch, names)

    model._infer = counted
    return count


def child_torch(spec: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """The HF model in torch fp32: CLS of the last hidden state, L2-normalised (BGE-M3's
    dense vector), on the worker's token ids and batches."""
    import numpy as np
    import torch
    from transformers import AutoModel

    from storage.bundle import load_bundle
    from worker.model.batching import batch_budget, pad_rows, plan_batches
    from worker.model.session import pad_token_id

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(spec["model_dir"], torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    loaded = rss_now_mb()
    tok = load_bundle(spec["bundle"]).load_tokenizer(truncate=True)
    pad = pad_token_id(tok)
    ids = [e.ids for e in tok.encode_batch(texts)]

    def dense(rows: list[list[int]]) -> np.ndarray:
        out = np.zeros((len(rows), model.config.hidden_size), dtype=np.float32)
        for pos in plan_batches([len(r) for r in rows], batch_budget("cpu")):
            b = pad_rows([rows[i] for i in pos], pos, pad)
            with torch.inference_mode():
                h = model(input_ids=torch.from_numpy(b.input_ids),
                          attention_mask=torch.from_numpy(b.attention_mask)).last_hidden_state
            cls = torch.nn.functional.normalize(h[:, 0].float(), dim=-1)
            out[pos] = cls.numpy()
        return out

    dense([ids[0][:16]])  # warm-up
    t0 = time.perf_counter()
    vecs = dense(ids)
    secs = time.perf_counter() - t0
    np.save(spec["vectors"].replace(".npy", "-dense.npy"), vecs)
    real = sum(len(r) for r in ids)
    padded = sum(max(len(ids[i]) for i in p) * len(p)
                 for p in plan_batches([len(r) for r in ids], batch_budget("cpu")))
    row = {"provider": "torch", "precision": "fp32", "outputs": "dense", "length": spec["length"],
           "status": "ok", "chunks": len(texts), "real_tokens": real, "padded_tokens": padded,
           "seconds": round(secs, 3), "tokens_per_s": round(real / secs, 1),
           "peak_rss_mb": peak_rss_mb()}
    return {"load_s": round(load_s, 2), "rss_after_load_mb": loaded, "rows": [row],
            "active": f"torch {torch.__version__}", "runtime_precision": "fp32"}


def peak_rss_mb() -> float | None:
    """This process's peak RSS (VmHWM). Not ``ru_maxrss``: Linux keeps that across execve, so
    a child started by a big parent would report the parent's peak."""
    return _status_mb("VmHWM:")


def rss_now_mb() -> float | None:
    return _status_mb("VmRSS:")


def _status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --- comparing and reporting ------------------------------------------------------------------

def add_cosines(rows: list[dict[str, Any]], work: Path) -> None:
    """min/mean cosine of each row's dense vectors against torch fp32's for the same chunks."""
    import numpy as np

    for r in rows:
        if r.get("status") != "ok" or r["provider"] == "torch":
            continue
        ref = work / f"torch-fp32-{r['length']}-dense.npy"
        mine = work / f"{r['provider']}-{r['precision']}-{r['length']}-{r['outputs']}.npy"
        if ref.is_file() and mine.is_file():
            a, b = np.load(mine), np.load(ref)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1)
                                              * np.linalg.norm(b, axis=1), 1e-12)
            r["cos_min"], r["cos_mean"] = round(float(cos.min()), 6), round(float(cos.mean()), 6)


def add_previous_release(rows: list[dict[str, Any]], procs: list[dict[str, Any]]) -> None:
    """The previous release's rate for each row: the same, unless the row's process passed
    ``worker_max_memory_per_child``, in which case every shard paid one model load."""
    loads = {(p["provider"], p["precision"], p["length"]): p.get("load_s") for p in procs}
    for r in rows:
        if r.get("status") != "ok" or r["provider"] == "torch":
            continue
        load = loads.get((r["provider"], r["precision"], r["length"]))
        recycled = r["peak_rss_mb"] * 1024 > PREV_MAX_MEMORY_KIB
        rate = r["tokens_per_s"]
        r["prev_recycled"] = recycled
        r["prev_tokens_per_s"] = (round(SHARD_TOKENS / (SHARD_TOKENS / rate + load), 1)
                                  if recycled and load is not None else rate)


def summary(rows: list[dict[str, Any]], procs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per provider/precision: load time, RSS after load, peak RSS of the longest chunk's dense
    row, its min cosine vs torch; and the 8,192-token check."""
    out: dict[str, Any] = {}
    ok = [r for r in rows if r.get("status") == "ok"]
    longest = max((r["length"] for r in ok), default=None)
    for p in procs:
        if p.get("status") != "ok":
            continue
        key = f"{p['provider']}/{p['precision']}"
        s = out.setdefault(key, {"load_s": [], "rss_after_load_mb": []})
        s["load_s"].append(p["load_s"])
        s["rss_after_load_mb"].append(p["rss_after_load_mb"])
        if p["length"] == longest:
            r = next((r for r in ok if (r["provider"], r["precision"], r["length"], r["outputs"])
                      == (p["provider"], p["precision"], longest, "dense")), None)
            if r:
                s.update(longest=longest, longest_peak_rss_mb=r["peak_rss_mb"],
                         longest_cos_min=r.get("cos_min"))
    mins = [r["cos_min"] for r in ok if r["length"] == longest and "cos_min" in r
            and r["outputs"] == "dense"]
    check = {"length": longest, "cos_min": min(mins) if mins else None, "goal": MIN_COSINE}
    check["met"] = bool(mins) and min(mins) >= MIN_COSINE
    return {"by_runtime": out, "check": check}


def machine(threads: int) -> dict[str, Any]:
    """CPU model and flags, ONNX Runtime and its providers, torch, the commit, load average."""
    from worker.model.session import available_providers, cpu_flags

    flags = cpu_flags()
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = None
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
            "flags": {f: f in flags for f in FLAG_NAMES}, "onnxruntime": ort,
            "providers": available_providers() if ort else [], "torch": torch_v,
            "python": platform.python_version(), "commit": rev,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LABEL = {"cpu": "CPU EP", "openvino": "OpenVINO EP", "torch": "torch (peer, reference)",
         "cuda": "CUDA EP"}


def markdown(res: dict[str, Any], gpu_json: Path | None = GPU_JSON) -> str:
    m = res["meta"]
    lines = ["| provider | precision | outputs | chunk tokens | chunks | tok/s | peak RSS MB | "
             f"previous release ({m['prev_release']}) tok/s | min cos vs torch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(res["rows"], key=row_order):
        lab, prec = LABEL.get(r["provider"], r["provider"]), r["precision"]
        if r["status"] != "ok":
            length = r.get("length", "all")
            lines.append(f"| {lab} | {prec} | - | {length} | - | {r['status']}: {r['reason']} "
                         "| | | |")
            continue
        outs = "dense" if r["outputs"] == "dense" else "dense+sparse+ColBERT"
        prev = "-" if "prev_tokens_per_s" not in r else (
            f"{r['prev_tokens_per_s']:,.0f}" + (" (recycled)" if r["prev_recycled"] else ""))
        cos = f"{r['cos_min']:.5f}" if "cos_min" in r else "-"
        lines.append(f"| {lab} | {prec} | {outs} | ~{r['length']:,} | {r['chunks']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | {prev} | {cos} |")
    lines += gpu_rows(gpu_json)
    c = res["summary"]["check"]
    lines += ["", "| runtime | load s (session creation, compile) | RSS after load MB | "
              f"peak RSS, one ~{c['length'] or 0:,}-token chunk MB | its min cos vs torch |",
              "|---|---|---|---|---|"]
    for key, s in res["summary"]["by_runtime"].items():
        prov, prec = key.split("/")
        lo, hi = f"{min(s['load_s']):.1f}", f"{max(s['load_s']):.1f}"
        load = lo if lo == hi else f"{lo}-{hi}"
        cos = s.get("longest_cos_min")
        lines.append(f"| {LABEL.get(prov, prov)} {prec} | {load} | "
                     f"{max(x for x in s['rss_after_load_mb'] if x):,.0f} | "
                     f"{fmt(s.get('longest_peak_rss_mb'))} | "
                     f"{'-' if cos is None else f'{cos:.5f}'} |")
    verdict = "met" if c["met"] else "**MISSED**"
    cmin = "-" if c["cos_min"] is None else f"{c['cos_min']:.5f}"
    fl = ", ".join(f for f, on in m["flags"].items() if on) or "none"
    lines += ["", f"- dense vectors of ~{c['length']:,}-token chunks vs torch fp32: min cosine "
              f"{cmin} (goal >= {c['goal']}): {verdict}",
              f"- machine: {m['cpu']}, {m['cores']} cores ({fl}), {m['memory_gb']} GiB, "
              f"{m['threads']} threads; onnxruntime {m['onnxruntime']} "
              f"({', '.join(p.removesuffix('ExecutionProvider') for p in m['providers'])}), "
              f"torch {m['torch']}; load average {m['load_start']:.1f} at the start, "
              f"{m['load_end']:.1f} at the end; {m['wall_s']:.0f} s in all",
              f"- bundle {m['bundle_gb']} GB ({', '.join(m['variants'])}); chunks per length "
              + ", ".join(f"{k}: {v}" for k, v in m["chunks"].items())
              + f"; command: `{m['command']}` at {m['commit']}"]
    return "\n".join(lines)


def row_order(r: dict[str, Any]) -> tuple[int, int, int, bool]:
    """Table order: torch, CPU EP, OpenVINO EP; fp32, int8, bf16; short to long; dense first."""
    return ({"torch": 0, "cpu": 1, "openvino": 2}.get(r["provider"], 9),
            {"fp32": 0, "int8": 1, "bf16": 2}.get(r["precision"], 9),
            r.get("length") or 10**9, r.get("outputs") != "dense")


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def gpu_rows(path: Path | None) -> list[str]:
    """CUDA rows from benchmarks/gpu.py's JSON, or one 'not measured' row."""
    data = json.loads(path.read_text()) if path and path.is_file() else None
    rows = [r for r in (data or {}).get("m3", {}).get("rows", []) if r.get("status") == "ok"]
    if data is None or data.get("meta", {}).get("smoke") or not rows:
        return ["| CUDA EP (IO binding) | fp16 | both | all | - | not measured "
                "(run benchmarks/gpu.py on a CUDA machine) | | | |"]
    gpu = data["meta"].get("gpu", "GPU")
    out = []
    for r in rows:
        outs = "dense" if r["outputs"] == "dense" else "dense+sparse+ColBERT"
        mem = r.get("gpu_mem_peak_mb")
        out.append(f"| CUDA EP (IO binding, {gpu}) | {r['precision']} | {outs} | "
                   f"~{r['length']:,} | {r['chunks']} | {r['tokens_per_s']:,.0f} | "
                   f"GPU {'-' if mem is None else f'{mem:,.0f}'} | - | - |")
    return out


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
