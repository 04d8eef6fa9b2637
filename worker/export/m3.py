"""BGE-M3 heads: recognise a BGE-M3 directory and put its sparse and ColBERT heads in the graph.

Part of export (worker/export/__init__.py). BGE-M3 is an XLM-R encoder plus two linear layers
that FlagEmbedding saves beside the weights with ``torch.save(linear.state_dict())``:
``sparse_linear.pt`` (hidden -> 1) and ``colbert_linear.pt`` (hidden -> hidden). One forward
pass gives all three outputs from the same last hidden state ``h``:

- dense: ``h[:, 0]`` L2-normalised (the bundle's CLS pooling + Normalize, as for any model);
- sparse: ``relu(sparse_linear(h))`` per token (graph output ``sparse_weights``, [B, L, 1]);
- ColBERT: ``colbert_linear(h)`` per token (graph output ``colbert_vectors``, [B, L, D]).

The graph returns raw per-token values; masking, dropping CLS and special-token ids, the max
weight per id and the normalisation happen in worker/model/heads.py, where padding is known.
FlagEmbedding goes on with random heads (one log line) when a file is missing; here a directory
that has one head file, or is named bge-m3, without both files is an export error naming the
missing file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from storage.bundle import OUTPUTS, BundleConfig, Pooling
from worker.errors import BundleError

HEAD_FILES = ("colbert_linear.pt", "sparse_linear.pt")
_M3_NAME = re.compile(r"bge-m3", re.IGNORECASE)
_SPECIAL_TOKENS = ("cls_token", "eos_token", "pad_token", "unk_token")
"""The tokens FlagEmbedding leaves out of the lexical weights (``_process_token_weights``)."""


@dataclass(frozen=True)
class M3Heads:
    """The two head layers of a BGE-M3 directory (torch modules) and what the bundle records."""

    sparse: Any
    colbert: Any
    colbert_dim: int
    skip_ids: tuple[int, ...]


def find_heads(model_dir: Path, source: str) -> list[Path] | None:
    """The head files when ``model_dir`` is a BGE-M3 directory, ``None`` for any other model.

    Raises:
        BundleError: one head file present without the other, or a bge-m3 named model with
            neither: random heads would silently change every sparse and ColBERT output.
    """
    paths = [model_dir / name for name in HEAD_FILES]
    present = [p for p in paths if p.is_file()]
    named = bool(_M3_NAME.search(source) or _M3_NAME.search(model_dir.name))
    if not present and not named:
        return None
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BundleError(
            f"{missing[0]}: missing BGE-M3 head file (a BGE-M3 directory needs "
            f"{' and '.join(HEAD_FILES)}); copy it from the model repository: without it the "
            "sparse or ColBERT output would come from random weights")
    return paths


def load_heads(model_dir: Path, hidden: int) -> M3Heads:
    """Build the two ``torch.nn.Linear`` heads from their state dicts and the special ids."""
    sparse = _linear(model_dir / "sparse_linear.pt", hidden, out_features=1)
    colbert = _linear(model_dir / "colbert_linear.pt", hidden, out_features=None)
    return M3Heads(sparse=sparse, colbert=colbert, colbert_dim=int(colbert.out_features),
                   skip_ids=special_ids(model_dir))


def with_m3_outputs(config: BundleConfig, heads: M3Heads, model_dir: Path) -> BundleConfig:
    """The bundle config naming all three outputs; BGE-M3's dense vector is CLS + Normalize.

    Raises:
        BundleError: the directory's pooling config says otherwise.
    """
    if config.pooling is not Pooling.CLS or not config.normalize:
        raise BundleError(
            f"{model_dir}: BGE-M3's dense output is the normalised CLS vector, but the "
            f"sentence-transformers configs say pooling={config.pooling.value} "
            f"normalize={config.normalize}; pass --pooling cls or fix 1_Pooling/modules.json")
    return replace(config, outputs=OUTPUTS, colbert_dim=heads.colbert_dim,
                   sparse_skip_ids=heads.skip_ids)


def wrap(model: Any, heads: M3Heads) -> Any:
    """The transformer with both heads: (last_hidden_state, sparse_weights, colbert_vectors)."""
    import torch

    class M3Outputs(torch.nn.Module):
        def __init__(self, model: Any, heads: M3Heads) -> None:
            super().__init__()
            self.model, self.sparse, self.colbert = model, heads.sparse, heads.colbert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None
                    ) -> Any:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            h = self.model(**kw).last_hidden_state
            return h, torch.relu(self.sparse(h)), self.colbert(h)

    return M3Outputs(model, heads).eval()


def special_ids(model_dir: Path) -> tuple[int, ...]:
    """Ids of the CLS, EOS, PAD and UNK tokens, read the way FlagEmbedding reads them."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:  # transformers raises many types for a broken tokenizer
        raise BundleError(f"{model_dir}: the tokenizer does not load ({exc})") from exc
    ids = [getattr(tok, f"{name}_id", None) for name in _SPECIAL_TOKENS]
    if any(i is None for i in ids):
        names = [n for n, i in zip(_SPECIAL_TOKENS, ids) if i is None]
        raise BundleError(f"{model_dir}: the tokenizer defines no {', '.join(names)}; the "
                          "sparse output cannot leave special tokens out")
    return tuple(sorted({int(i) for i in ids if i is not None}))


def _linear(path: Path, hidden: int, out_features: int | None) -> Any:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        weight = state["weight"]
    except Exception as exc:  # pickle, zip and key errors all mean "not a head state dict"
        raise BundleError(f"{path}: not a torch Linear state dict ({exc})") from exc
    out_dim, in_dim = (int(d) for d in weight.shape)
    if in_dim != hidden or (out_features is not None and out_dim != out_features):
        want = f"[{out_features or 'n'}, {hidden}]"
        raise BundleError(f"{path}: weight shape {list(weight.shape)}, expected {want}")
    layer = torch.nn.Linear(in_dim, out_dim, bias="bias" in state)
    layer.load_state_dict({k: v.float() for k, v in state.items()})
    return layer.eval()
