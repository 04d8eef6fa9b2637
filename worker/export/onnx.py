"""Export a transformer's last hidden state from torch to ONNX and check it against torch.

Part of export (worker/export/__init__.py). The transformer is exported with the dynamo ONNX
exporter (eager attention) and run on right-padded batches of real text through both torch and
ONNX Runtime; an export that differs by more than VERIFY_ATOL on real tokens is refused.
Models over 2 GB are saved with external data. Also holds the file helpers the variants share
(saving past protobuf's 2 GB limit, counting a model's bytes, silencing exporter chatter).

Not used, measured: ORT's offline transformer optimizer (``optimize_model(model_type="bert")``)
fuses no Attention node on the dynamo graph (only SkipLayerNorm/BiasGelu, which ORT already
fuses when it loads a session with ORT_ENABLE_ALL) and gave 1.01x on all-MiniLM-L6-v2.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.bundle import GRAPH_OUTPUTS, OUTPUTS, TOKENIZER_NAME
from worker.errors import BundleError
from worker.export.m3 import wrap as with_m3_heads
from worker.export.samples import SAMPLE_TEXTS

DEFAULT_OPSET = 18
VERIFY_ATOL = 1e-4
"""Largest |onnx - torch| allowed on real (unmasked) tokens of the fp32 export."""
TWO_GB = 2 * 1024**3


def export_onnx(model_dir: Path, path: Path, *, opset: int = DEFAULT_OPSET,
                window: int = 512, heads: Any = None) -> float:
    """Export the transformer's ``last_hidden_state`` to ``path`` and check it against torch.

    ``path``'s directory must hold the tokenizer.json: the example and check batches are real
    text, right-padded. Models over 2 GB are saved with external data (``model.onnx.data``).

    With ``heads`` (m3.M3Heads) the graph also returns the BGE-M3 ``sparse_weights`` and
    ``colbert_vectors`` (m3.py), and every output is checked.

    Returns:
        The largest absolute difference to torch on real tokens (texts cut at ``window``).

    Raises:
        BundleError: the ONNX model differs from torch by more than VERIFY_ATOL.
    """
    import torch

    model, inputs = _load_torch(model_dir)
    if heads is None:
        wrapper, outputs = _hidden_states(model), [GRAPH_OUTPUTS["dense"]]
    else:
        wrapper, outputs = with_m3_heads(model, heads), [GRAPH_OUTPUTS[o] for o in OUTPUTS]
    example = _example_batch(path.parent / TOKENIZER_NAME, inputs, SAMPLE_TEXTS[:4], 24)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*inputs, *outputs]}
    with quiet():
        program = torch.onnx.export(
            wrapper, tuple(torch.from_numpy(example[n]) for n in inputs), None, dynamo=True,
            opset_version=opset, input_names=list(inputs), output_names=outputs,
            dynamic_axes=axes, verbose=False,
        )
    try:
        program.save(str(path))  # inlined below 2 GB, else external data beside it
    finally:
        del program
        _forget_matched_graphs()
    err = _max_error(wrapper, path, [example, _example_batch(
        path.parent / TOKENIZER_NAME, inputs, [SAMPLE_TEXTS[10], SAMPLE_TEXTS[2]],
        min(160, window))])
    if not err <= VERIFY_ATOL:
        raise BundleError(f"{path}: ONNX export differs from torch by {err:.3g} "
                          f"(limit {VERIFY_ATOL:g}); this export cannot be trusted")
    return err



def _forget_matched_graphs() -> None:
    """Drop the exported graph that onnxscript's rewrite rules keep after an export.

    The rules are module globals (onnxscript 0.7) whose matchers keep the last graph they
    matched (``_graph``, ``_match``, ...); that graph holds the torch weights, which then stay
    mapped for the rest of the export: 2.15 GB of the 2.75 GB RSS after exporting a 2.25 GB
    model, through fp16, int8 and the gates (0.6 GB once dropped). Each match sets these
    again, so clearing them between exports is safe; a version without them is left alone.
    """
    import gc

    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:
        return
    for obj in gc.get_objects():
        if issubclass(type(obj), SimplePatternMatcher):  # (isinstance may warn via __class__)
            for attr in ("_graph", "_match", "_current_node", "_tracer"):
                if hasattr(obj, attr):
                    setattr(obj, attr, None)
    gc.collect()


def save_model(model: Any, path: Path) -> None:
    """Save ``model`` at ``path``: inlined below 2 GB, else its weights in ``<path>.data``."""
    import onnx

    # protobuf cannot serialise 2 GB; count the weights rather than calling ByteSize()
    big = sum(len(t.raw_data) for t in model.graph.initializer) > TWO_GB - (64 << 20)
    remove_onnx(path)  # onnx appends to an existing external data file
    onnx.save_model(model, str(path), save_as_external_data=big,
                    location=external_data(path).name if big else None)


def external_data(path: Path) -> Path:
    """Where a variant over 2 GB keeps its weights: ``model.onnx`` -> ``model.onnx.data`` (the
    name torch's exporter, save_model and quantize_dynamic all use; storage/bundle.py's
    fingerprint covers it)."""
    return path.with_name(path.name + ".data")


def onnx_bytes(path: Path) -> int:
    data = external_data(path)
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def remove_onnx(path: Path) -> None:
    """Remove an ONNX file and its external data (a variant that failed, or before a rewrite)."""
    path.unlink(missing_ok=True)
    external_data(path).unlink(missing_ok=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
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
            refs = wrapper(*(torch.from_numpy(v) for v in feeds.values()))
        refs = refs if isinstance(refs, tuple) else (refs,)
        real = feeds["attention_mask"].astype(bool)
        for ref, got in zip(refs, sess.run(None, feeds), strict=True):  # every output
            err = max(err, float(np.abs(ref.numpy()[real] - got[real]).max()))
    return err
