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
import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from storage.atomic import NO_SPACE, TMP_SUFFIX, tmp_name, writer_gone
from storage.bundle import CONFIG_NAME, TOKENIZER_NAME, VARIANT_FILES, BundleConfig
from storage.errors import DiskFull
from worker.errors import BundleError
from worker.export.gate import Embed, check_width, quality_gate, session_embed
from worker.export.m3 import find_heads, load_heads, with_m3_outputs
from worker.export.metric_gate import MetricGate, metric_gate
from worker.export.onnx import DEFAULT_OPSET, VERIFY_ATOL, export_onnx, onnx_bytes, remove_onnx
from worker.export.st_config import copy_tokenizer, read_model_config, resolve_source
from worker.export.variants import Gate, convert_fp16, int8_until_gate

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
            f"{onnx_bytes(fp32) / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s")
        gate: dict[str, Any] = {"fp32": {"max_abs_err_vs_torch": float(err), "passed": True}}

        gate_embed = _fp32_once(embed)

        def run_gate(root: Path, prec: str) -> dict[str, Any]:
            return quality_gate(root, [prec], log=log, thresholds=thresholds,
                                embed=gate_embed)[prec]

        for prec in wanted[1:]:
            gate[prec] = _variant(tmp, prec, log, run_gate)
        if eval_gate is not None:
            config = _apply_eval_gate(tmp, config, eval_gate, log)
        _write_config(tmp, config, opset, gate=gate)
        _move_into_place(tmp, out, log)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and no_space(exc):
            raise DiskFull(errno.ENOSPC, f"no space left on device writing the bundle {out}; "
                           f"nothing was written (it needs about {_needs(model_dir, wanted)} "
                           "free there: free space, or export to a larger disk with --out)",
                           str(out.parent)) from exc
        raise
    kept = [p for p, f in VARIANT_FILES.items() if (out / f).is_file()]
    log(f"bundle {out}: {', '.join(kept)} in {time.perf_counter() - t0:.1f}s")
    return out


def _variant(root: Path, prec: str, log: Log, run_gate: Gate) -> dict[str, Any]:
    """Build fp16 or int8 and gate it; a variant that fails to convert, to load or to pass is
    removed with one log line naming it and why, and the export goes on with the others.
    A full disk is no variant's fault: it stops the export (no_space), and so does any failure
    with less room left than the fp32 graph takes."""
    try:
        if prec == "fp16":
            log("converting fp16 ...")
            convert_fp16(root / VARIANT_FILES["fp32"], root / VARIANT_FILES["fp16"])
            res = run_gate(root, "fp16")
        else:
            res = int8_until_gate(root, log, run_gate)
    except Exception as exc:
        if no_space(exc):
            raise
        if shutil.disk_usage(root).free < onnx_bytes(root / VARIANT_FILES["fp32"]):
            # onnx's C++ writers can leave a truncated file without an error: the parse fails
            raise OSError(errno.ENOSPC, f"{prec} failed with the disk nearly full") from exc
        why = (str(exc).strip().splitlines() or [""])[0][:300]
        res = {"passed": False, "reason": f"conversion failed: {type(exc).__name__}: {why}"}
    if res.get("passed") is False:
        remove_onnx(root / VARIANT_FILES[prec])
        what = "" if res["reason"].startswith("conversion failed") else " the quality gate"
        log(f"{prec}: FAILED{what} ({res['reason']}); NOT written to the bundle")
    return res


def _fp32_once(embed: Embed) -> Embed:
    """``embed`` that computes the fp32 reference once for all gates of one export (each
    variant and int8 recipe compares with the same fp32 vectors of the same texts)."""
    refs: dict[tuple[str, ...], Any] = {}

    def cached(root: Path, prec: str, texts: Sequence[str]) -> Any:
        if prec != "fp32":
            return embed(root, prec, texts)
        key = tuple(texts)
        if key not in refs:
            refs[key] = embed(root, prec, texts)
        return refs[key]

    return cached


def no_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a full disk: ENOSPC/EDQUOT, or the words of one
    in an error from C++ code (onnx and ONNX Runtime report write errors as RuntimeError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(w in str(exc) for w in ("No space left on device", "Disk quota exceeded")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _needs(model_dir: Path, wanted: list[str]) -> str:
    """A rough free-space figure for the message: the weights' size per variant (fp32 1x,
    fp16 0.5x, int8 about 0.7x), plus their size again for the converters' temp files."""
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or \
        sum(p.stat().st_size for p in model_dir.glob("*.bin"))
    share = {"fp32": 1.0, "fp16": 0.5, "int8": 0.7}
    need = weights * (1 + sum(share[p] for p in wanted))
    return f"{need / 1e9:.1f} GB" if need >= 1e9 else f"{max(1, round(need / 1e6))} MB"


def _apply_eval_gate(root: Path, config: BundleConfig, eval_gate: MetricGate, log: Log
                     ) -> BundleConfig:
    """Score the variants still present on the user's data; remove those that lose too much."""
    present = [p for p, f in VARIANT_FILES.items() if p != "fp32" and (root / f).is_file()]
    figures = metric_gate(root, present, eval_gate, log)
    for prec, res in figures["variants"].items():
        if res.get("passed") is False:
            remove_onnx(root / VARIANT_FILES[prec])
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
    """``out`` resolved, and a new temp directory beside it to build the bundle in; those a
    killed export left there (its process gone) are removed first.

    Raises:
        BundleError: ``out`` exists and is something other than a bundle.
    """
    out = Path(out).expanduser().resolve()
    if out.exists() and not (out / CONFIG_NAME).is_file() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.*{TMP_SUFFIX}"):
        if old.is_dir() and writer_gone(old.name):  # a killed export's (GBs for a big model)
            shutil.rmtree(old, ignore_errors=True)
    tmp = tmp_name(out)  # .NAME.<host>.<pid>.<uuid>.tmp
    tmp.mkdir()
    tmp.chmod(0o755)  # workers may run as another user
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
