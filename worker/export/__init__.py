"""Export a Hugging Face / sentence-transformers model directory into an embedfleet bundle.

Not a stage of the job flow: it runs once per model (``producer export``, or on first use of
the built-in default, producer/models.py) and writes the bundle that storage/bundle.py
describes. The steps, one module each: read the configs (st_config.py), export and check the
fp32 graph (onnx.py; a BGE-M3 directory adds its sparse and ColBERT heads, m3.py), derive
fp16/int8 (variants.py), keep only the variants that pass the quality gate on every output
(gate.py, on samples.py). Everything is written to a temp directory next to ``out`` and
renamed into place at the end, so a failed export never leaves half a bundle.

Needs the ``export`` extra (torch, transformers, onnx, onnxscript); heavy imports happen inside
the functions that use them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from storage.bundle import CONFIG_NAME, TOKENIZER_NAME, VARIANT_FILES, BundleConfig
from worker.errors import BundleError
from worker.export.gate import Embed, check_width, quality_gate, session_embed
from worker.export.m3 import find_heads, load_heads, with_m3_outputs
from worker.export.metric_gate import MetricGate, metric_gate
from worker.export.onnx import DEFAULT_OPSET, VERIFY_ATOL, export_onnx
from worker.export.st_config import copy_tokenizer, read_model_config, resolve_source
from worker.export.variants import convert_fp16, int8_until_gate

__all__ = ["DEFAULT_OPSET", "DEFAULT_PRECISIONS", "MetricGate", "export_bundle"]

Log = Callable[[str], Any]

DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")


def export_bundle(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    precisions: Iterable[str] | str = DEFAULT_PRECISIONS,
    opset: int = DEFAULT_OPSET,
    pooling: str | None = None,
    max_length: int | None = None,
    log: Log = print,
    thresholds: dict[str, dict[str, float]] | None = None,
    embed: Embed = session_embed,
    eval_gate: MetricGate | None = None,
    matryoshka: bool = False,
) -> Path:
    """Export ``src`` (a model directory or ``all-MiniLM-L6-v2``) as a bundle at ``out``.

    Args:
        src: Hugging Face / sentence-transformers model directory, or the built-in name.
        out: bundle directory to create (an existing bundle there is replaced).
        precisions: variants to build (a list, or ``"fp32,int8"``); fp32 is always built.
            fp16/int8 are written only when they pass the quality gate (GATE_THRESHOLDS).
        opset: ONNX opset for the export.
        pooling: ``cls``, ``mean`` or ``last``; required when the model has no pooling config.
        max_length: token window, overriding what the model's configs say.
        log: progress sink, one line per call.
        thresholds: per precision ``{"mean": .., "min": ..}`` overriding GATE_THRESHOLDS.
        embed: how the gate and the width check embed texts (gate.session_embed).
        eval_gate: the user's labelled data as a second gate (metric_gate.py): a variant
            that loses more than ``eval_gate.max_drop`` of the metric vs fp32 is not written;
            the figures are stored as ``evaluation`` in the bundle config.
        matryoshka: declare the model Matryoshka-trained (``--dim`` allowed) when its model
            card does not say so (``producer export --matryoshka``).

    Returns:
        The bundle path.

    Raises:
        BundleError: the source is incomplete, its pooling is unknown, or the ONNX export does
            not reproduce torch.
    """
    wanted = _check_precisions(precisions)
    model_dir, source = resolve_source(src)
    config = read_model_config(model_dir, source, pooling=pooling, max_length=max_length)
    if matryoshka and config.matryoshka is None:
        config = dataclasses.replace(
            config, matryoshka={"dims": [], "from": "producer export --matryoshka"})
    head_files = find_heads(model_dir, source)
    out, tmp = _temp_bundle_dir(out)
    try:
        t0 = time.perf_counter()
        log(f"source {source} ({model_dir}): pooling={config.pooling.value} "
            f"normalize={config.normalize} max_length={config.max_length} dim={config.dim}")
        copy_tokenizer(model_dir, tmp / TOKENIZER_NAME)
        _write_config(tmp, config, opset, gate=None)
        fp32 = tmp / VARIANT_FILES["fp32"]
        heads = None
        if head_files:
            heads = load_heads(model_dir, config.dim)
            config = with_m3_outputs(config, heads, head_files[0].parent)
            _write_config(tmp, config, opset, gate=None)
            log(f"BGE-M3 heads: outputs {', '.join(config.outputs)}, "
                f"colbert_dim={heads.colbert_dim}, sparse skips ids {list(heads.skip_ids)}")
        log(f"exporting fp32 (dynamo, opset {opset}) ...")
        err = export_onnx(model_dir, fp32, opset=opset, window=config.max_length, heads=heads)
        check_width(tmp, config.dim, embed)
        log(f"fp32: |onnx - torch| max {err:.2e} on real tokens (limit {VERIFY_ATOL:g}), "
            f"{fp32.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s")
        gate: dict[str, Any] = {"fp32": {"max_abs_err_vs_torch": float(err), "passed": True}}
        if "fp16" in wanted:
            log("converting fp16 ...")
            convert_fp16(fp32, tmp / VARIANT_FILES["fp16"])
            gate.update(quality_gate(tmp, ["fp16"], log=log, thresholds=thresholds, embed=embed))
        if "int8" in wanted:
            gate["int8"] = int8_until_gate(tmp, log, lambda root, prec: quality_gate(
                root, [prec], log=log, thresholds=thresholds, embed=embed)[prec])
        for prec, res in gate.items():
            if res.get("passed") is False:
                (tmp / VARIANT_FILES[prec]).unlink(missing_ok=True)
                log(f"{prec}: FAILED the quality gate ({res['reason']}); NOT written to the bundle")
        if eval_gate is not None:
            config = _apply_eval_gate(tmp, config, eval_gate, log)
        _write_config(tmp, config, opset, gate=gate)
        _move_into_place(tmp, out, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = [p for p, f in VARIANT_FILES.items() if (out / f).is_file()]
    log(f"bundle {out}: {', '.join(kept)} in {time.perf_counter() - t0:.1f}s")
    return out


def _apply_eval_gate(root: Path, config: BundleConfig, eval_gate: MetricGate, log: Log
                     ) -> BundleConfig:
    """Score the variants still present on the user's data; remove those that lose too much."""
    present = [p for p, f in VARIANT_FILES.items() if p != "fp32" and (root / f).is_file()]
    figures = metric_gate(root, present, eval_gate, log)
    for prec, res in figures["variants"].items():
        if res.get("passed") is False:
            (root / VARIANT_FILES[prec]).unlink(missing_ok=True)
            log(f"{prec}: FAILED the eval gate on {eval_gate.data} ({res['reason']}); "
                "NOT written to the bundle")
    return dataclasses.replace(config, evaluation=figures)


def _write_config(root: Path, config: BundleConfig, opset: int, gate: dict[str, Any] | None
                  ) -> None:
    d = config.to_dict()
    d["opset"] = opset
    if gate is not None:
        d["quality_gate"] = gate
    (root / CONFIG_NAME).write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


def _temp_bundle_dir(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``out`` resolved, and a new temp directory beside it to build the bundle in.

    Raises:
        BundleError: ``out`` exists and is something other than a bundle.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not (out / CONFIG_NAME).is_file() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; workers may run as another user
    return out, tmp


def _move_into_place(tmp: Path, out: Path, log: Log) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / CONFIG_NAME).is_file():
            raise
        log(f"{out}: another export finished first; keeping it")
        shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_precisions(precisions: Iterable[str] | str) -> list[str]:
    if isinstance(precisions, str):  # "fp32,int8" straight from a command line
        precisions = precisions.split(",")
    wanted = [p.strip() for p in precisions if p.strip()]
    bad = [p for p in wanted if p not in VARIANT_FILES]
    if bad:
        raise BundleError(f"unknown precision {bad}; valid: {', '.join(VARIANT_FILES)}")
    return ["fp32", *[p for p in VARIANT_FILES if p in wanted and p != "fp32"]]
