"""The real-size BGE-M3 stand-in's export, checked: variant sizes, gate figures, and fp16 vs
fp32 dense vectors on short chunks and on chunks of the full 8,192-token window.

The export gate (worker/export/gate.py) checks one long text of 2,048 tokens; this checks the
whole window, one chunk at a time through the worker's own session (CPU EP), because a CPU run
of the fp32 graph at 8,192 tokens needs about 14 GB (eager attention). Writes
``benchmarks/results/m3_export.json``. Export time and peak RSS come from the export command
itself (``/usr/bin/time -v``); pass them in to keep them with the rest:

    python benchmarks/m3_standin.py --out /work/m3/src                 # the stand-in
    /usr/bin/time -v producer export /work/m3/src --out /work/m3/bundle  # default precisions
    python benchmarks/m3_export.py /work/m3/bundle --export-log LOG      # LOG: export + time -v
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.bundle import VARIANT_FILES, load_bundle  # noqa: E402
from worker.export.samples import SAMPLE_TEXTS, long_sample  # noqa: E402


def sizes(bundle: Path) -> dict[str, int]:
    out = {}
    for prec, name in VARIANT_FILES.items():
        files = [bundle / name, bundle / f"{name}.data"]
        if files[0].is_file():
            out[prec] = sum(f.stat().st_size for f in files if f.is_file())
    return out


def dense(bundle: Path, precision: str, texts: list[str]) -> tuple[np.ndarray, float]:
    """Embed one text per call (each long one alone in its batch, as on a CPU worker)."""
    from worker.model.session import load_model

    model = load_model(bundle, device="cpu", precision=precision)
    t0 = time.perf_counter()
    vecs = np.concatenate([model.embed([t]) for t in texts])
    took = time.perf_counter() - t0
    del model
    gc.collect()
    return vecs, took


def export_figures(log: Path | None) -> dict[str, object]:
    """Wall time, peak RSS and the variant lines of a `producer export` run under time -v."""
    if log is None:
        return {}
    text = log.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    secs = sum(float(p) * 60**i for i, p in enumerate(reversed(wall.group(1).split(":")))) \
        if wall else None
    return {"export_wall_s": secs, "export_peak_rss_gb": int(rss.group(1)) / 1e6 if rss else None,
            "export_lines": [ln for ln in text.splitlines() if re.match(
                r"(fp32|fp16|int8|gate|bundle|quantizing|converting)\b", ln)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--long", default="8190", help="comma-separated token counts of the long "
                    "chunks (8,190 + 2 special tokens: the full window)")
    ap.add_argument("--export-log", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "m3_export.json")
    a = ap.parse_args(argv)
    tok = load_bundle(a.bundle).load_tokenizer(truncate=False)
    longs = [long_sample(tok, int(n)) for n in a.long.split(",")]
    shorts = list(SAMPLE_TEXTS)
    n_tokens = [len(tok.encode(t).ids) for t in longs]
    ref_s, t32s = dense(a.bundle, "fp32", shorts)
    ref_l, t32l = dense(a.bundle, "fp32", longs)
    got_s, t16s = dense(a.bundle, "fp16", shorts)
    got_l, t16l = dense(a.bundle, "fp16", longs)
    cos_s, cos_l = (ref_s * got_s).sum(axis=1), (ref_l * got_l).sum(axis=1)
    cfg = json.loads((a.bundle / "embedfleet.json").read_text())
    res = {
        "command": "python benchmarks/m3_export.py " + " ".join(argv or sys.argv[1:]),
        "bundle": str(a.bundle), "variant_bytes": sizes(a.bundle),
        "quality_gate": {p: {k: v for k, v in g.items() if k in (
            "passed", "mean", "min", "reason", "max_abs_err_vs_torch")}
            for p, g in cfg["quality_gate"].items()},
        "fp16_vs_fp32_dense": {
            "short": {"texts": len(shorts), "min_cos": float(cos_s.min()),
                      "mean_cos": float(cos_s.mean())},
            "long": {"texts": len(longs), "tokens": n_tokens, "min_cos": float(cos_l.min())}},
        "cpu_ep_seconds": {"fp32_short": t32s, "fp32_long": t32l, "fp16_short": t16s,
                           "fp16_long": t16l},
        **export_figures(a.export_log),
        "cpu": _cpu(), "loadavg": os.getloadavg(),
    }
    a.json.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
