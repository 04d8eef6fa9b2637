"""Stages 5 and 7: build an ONNX Runtime session for a bundle variant and run batches through it.

This is the only module that imports onnxruntime. Sessions are created lazily in the process
that uses them (never before a Celery prefork), and what the session really runs on is read
back from ``get_providers()``: a CUDA request that fell back to CPU is logged as a warning and
kept in ``LoadedModel.fallback`` so metrics can show it. The OpenVINO EP is the same: a provider
ONNX Runtime lists but cannot create (bad options, missing plugin) is dropped with only a log
line from ORT, so the loader compares what it asked for with what it got.

bf16 is a runtime precision of the fp32 graph: the OpenVINO EP's ``precision`` option accepts
only FP32/ACCURACY on CPU, so the hint goes through ``load_config``, a JSON *string* of
per-device OpenVINO properties (a file path is rejected with a JSON parse error).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from worker.model.batching import (DEFAULT_MAX_BATCH_TOKENS, Batch, aligned, batches_by_tokens,
                                   encode, pad_multiple)
from storage.bundle import GRAPH_OUTPUTS, OUTPUTS, RUNTIME_PRECISIONS, Bundle, load_bundle
from worker.errors import BundleError, InferenceError, load_error
from worker.model.heads import colbert_rows, sparse_rows
from worker.model.pooling import FloatArray, l2_normalize, pool
from worker.contract import Device, default_precision
from worker.model.providers import (
    CPU, CUDA, OPENVINO, Choice, CpuProvider, choose_cpu_runtime, parse_cpu_flags,
    provider_names, select_providers,
)

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A bundle variant with its tokenizer and live session."""

    bundle: Bundle
    precision: str
    session: Any
    tokenizer: Any
    pad_id: int
    device: str
    requested_providers: list[str]
    active_providers: list[str]
    input_names: list[str] = field(default_factory=list)
    output_name: str = ""
    pooled_output: bool = False
    fingerprint: str = ""
    batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS["cpu"]
    """Padded tokens per batch unless the job or EMBED_MAX_BATCH_TOKENS says otherwise: the
    CPU default, or on CUDA what the GPU's memory holds (``worker/model/gpumem.py``)."""
    pad_multiple: int = 1
    """Batches run padded to a length that is a multiple of this (``batching.pad_multiple``)."""

    @property
    def provider(self) -> str:
        """The provider doing the work (first active one)."""
        return self.active_providers[0] if self.active_providers else "none"

    @property
    def fallback(self) -> bool:
        """True when CUDA or OpenVINO was asked for and the session runs on the CPU EP."""
        return any(p in self.requested_providers and p not in self.active_providers
                   for p in (CUDA, OPENVINO))

    def run(self, batch: Batch) -> FloatArray:
        """Embed one padded batch: session, pool, normalise. Rows follow ``batch.positions``."""
        batch = aligned(batch, self.pad_multiple, self.pad_id, self.bundle.config.max_length)
        out = self._infer(batch, [self.output_name])[0]
        if self.pooled_output:
            vecs = out.astype(np.float32)
            return l2_normalize(vecs) if self.bundle.config.normalize else vecs
        return pool(self.bundle.config.pooling.value, out, batch.attention_mask,
                    self.bundle.config.normalize)

    def embed(self, texts: Sequence[str], max_batch_tokens: int | None = None) -> FloatArray:
        """Embed texts in length-sorted batches; rows come back in input order."""
        ids = encode(self.tokenizer, texts)
        out = np.zeros((len(texts), self.bundle.config.dim), dtype=np.float32)
        budget = max_batch_tokens or self.batch_tokens
        for batch in batches_by_tokens(ids, self.pad_id, budget):
            out[batch.positions] = self.run(batch)
        return out

    def run_outputs(self, batch: Batch, outputs: Sequence[str]) -> dict[str, Any]:
        """Dense vectors plus the requested BGE-M3 outputs of one batch, from one session run.

        Returns ``{"dense": matrix, "sparse": [(ids, weights)], "colbert": [matrix]}`` (only
        the outputs asked for), rows following ``batch.positions``.
        """
        cfg = self.bundle.config
        missing = [o for o in outputs if o not in cfg.outputs]
        if missing:
            raise BundleError(f"{self.bundle.path}: the bundle cannot produce {missing} "
                              f"(outputs: {', '.join(cfg.outputs)})")
        wanted = [o for o in OUTPUTS if o in outputs or o == "dense"]
        batch = aligned(batch, self.pad_multiple, self.pad_id, cfg.max_length)
        got = dict(zip(wanted, self._infer(batch, [GRAPH_OUTPUTS[o] for o in wanted])))
        res: dict[str, Any] = {"dense": pool(cfg.pooling.value, got["dense"],
                                             batch.attention_mask, cfg.normalize)}
        if "sparse" in got:
            res["sparse"] = sparse_rows(got["sparse"], batch.input_ids, batch.attention_mask,
                                        cfg.sparse_skip_ids)
        if "colbert" in got:
            res["colbert"] = colbert_rows(got["colbert"], batch.attention_mask)
        return res

    def encode(self, texts: Sequence[str], outputs: Sequence[str],
               max_batch_tokens: int | None = None) -> dict[str, Any]:
        """``run_outputs`` over texts in length-sorted batches; rows come back in input order."""
        ids = encode(self.tokenizer, texts)
        res: dict[str, Any] = {"dense": np.zeros((len(texts), self.bundle.config.dim),
                                                 dtype=np.float32)}
        res.update({o: [None] * len(texts) for o in outputs if o != "dense"})
        budget = max_batch_tokens or self.batch_tokens
        for batch in batches_by_tokens(ids, self.pad_id, budget):
            got = self.run_outputs(batch, outputs)
            res["dense"][batch.positions] = got.pop("dense")
            for name, rows in got.items():
                for pos, row in zip(batch.positions, rows):
                    res[name][pos] = row
        return res

    def _infer(self, batch: Batch, names: list[str]) -> list[np.ndarray]:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                 "token_type_ids": batch.token_type_ids}
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        try:
            if CUDA in self.active_providers:
                return self._run_io_binding(feeds, names)
            return list(self.session.run(names, feeds))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InferenceError(f"{type(exc).__name__}: {exc}") from exc

    def _run_io_binding(self, feeds: dict[str, np.ndarray], names: list[str]
                        ) -> list[np.ndarray]:
        # IO binding keeps the output on the device until one copy at the end; inputs are tiny
        # int64 arrays, so binding them from host memory is enough.
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


@lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """This machine's CPU flags, read once (empty where there is no /proc/cpuinfo)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return frozenset()


def load_model(
    bundle: Bundle | str | os.PathLike[str],
    *,
    device: Device | str = Device.CPU,
    precision: str = "auto",
    threads: int | None = None,
    device_id: int = 0,
    tensorrt: bool = False,
    strict: bool = False,
    cpu_provider: CpuProvider | str = CpuProvider.AUTO,
    choice: Choice | None = None,
    gpu_mem_limit_mb: int | None = None,
    pad_to: int = 0,
) -> LoadedModel:
    """Build a session for the bundle on ``device`` (``cpu``, ``gpu``, ``auto``).

    On CPU, ``choice`` (from ``worker.model.probe``, which measures) names the provider and
    precision; without it they follow ``choose_cpu_runtime`` with no measurements (an explicit
    precision, else the CPU EP default).

    Raises:
        BundleError: a missing variant or an ONNX file that does not load.
        ProviderUnavailable: ``strict`` and no CUDA; bf16 or openvino asked for and impossible.
    """
    import onnxruntime as ort

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    available = ort.get_available_providers()
    providers = select_providers(device, available, device_id=device_id, tensorrt=tensorrt,
                                 strict=strict, gpu_mem_limit_mb=gpu_mem_limit_mb)
    # Precision follows the device that will really run: a GPU request on a machine without
    # CUDA gets the CPU default (recorded as a fallback), not an fp16 graph on the CPU.
    on_gpu = CUDA in provider_names(providers) and CUDA in available
    if on_gpu:
        prec = default_precision(Device.GPU, bundle.variants, precision)
    else:
        if choice is None:
            choice = choose_cpu_runtime(available, cpu_flags(), bundle.variants,
                                        override=cpu_provider, precision=precision)
        prec = choice.precision
        if choice.provider == OPENVINO:
            providers = [_openvino(prec, threads)] + [p for p in providers if p == CPU]
    path = bundle.graph_path(prec)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    requested = provider_names(providers)
    try:
        if CUDA in requested and CUDA not in available:
            # Asking ORT for a provider it does not have only prints a warning; skip the noise
            # and record the fallback ourselves.
            session = ort.InferenceSession(str(path), opts, providers=[CPU])
        else:
            session = ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:
        raise BundleError(load_error(path, exc)) from exc
    active = session.get_providers()
    if OPENVINO in requested and OPENVINO not in active:
        log.warning("OPENVINO EP LISTED BUT FAILED TO CREATE: %s runs on %s at fp32 instead of "
                    "%s (ONNX Runtime's log above says why).", path.name, ", ".join(active), prec)
        prec = RUNTIME_PRECISIONS.get(prec, prec)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if "input_ids" not in inputs:
        raise BundleError(f"{path}: graph has no 'input_ids' input (inputs: {inputs})")
    pooled = "sentence_embedding" in outputs
    tok = bundle.load_tokenizer(truncate=True)
    model = LoadedModel(
        bundle=bundle, precision=prec, session=session, tokenizer=tok,
        pad_id=pad_token_id(tok), device=Device(device).value, requested_providers=requested,
        active_providers=list(active), input_names=inputs,
        output_name="sentence_embedding" if pooled else outputs[0], pooled_output=pooled,
        fingerprint=bundle.fingerprint(prec, provider=active[0] if active else None),
    )
    model.pad_multiple = pad_multiple(model.provider, prec, cpu_flags(), pad_to)
    if CUDA in active:
        from worker.model import gpumem

        model.batch_tokens = gpumem.batch_tokens(
            device_id, gpu_mem_limit_mb, sum(f.stat().st_size for f in path.parent.glob(
                f"{path.name}*")), bundle.config.dim, bundle.config.max_length,
            2 if prec == "fp16" else 4)
    if CUDA in requested and CUDA not in active:
        log.warning(
            "CUDA REQUESTED BUT NOT AVAILABLE: %s runs on %s (available providers: %s). "
            "Embeddings are correct but slow; install onnxruntime-gpu and CUDA to use the GPU.",
            path.name, ", ".join(active), ", ".join(available),
        )
    log.info("loaded %s (%s) on %s, %d threads", path, prec, ", ".join(active), threads or 0)
    return model


def _openvino(precision: str, threads: int | None) -> tuple[str, dict[str, str]]:
    """OpenVINO EP options: the precision hint as a load_config JSON string, CPU threads."""
    hint = "bf16" if precision == "bf16" else "f32"
    opts = {"device_type": "CPU",
            "load_config": json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}})}
    if threads:
        opts["num_of_threads"] = str(int(threads))
    return (OPENVINO, opts)


def pad_token_id(tokenizer: Any) -> int:
    """The pad id the tokenizer declares, else [PAD]/<pad>, else 0."""
    for name in ("[PAD]", "<pad>", "<|endoftext|>"):
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return int(tid)
    return 0
