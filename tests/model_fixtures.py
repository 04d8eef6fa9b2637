"""Real model bundles for tests, exported once and cached on disk.

``minilm_bundle``: the built-in all-MiniLM-L6-v2 with all three variants (about 20 s once,
then reused). ``xlmr_bundle``: a tiny random-weight XLM-RoBERTa with an 8,192-token window,
CLS pooling and Normalize, to test long inputs without a large model. ``m3_bundle``: the same
XLM-R with random BGE-M3 heads (``colbert_linear.pt``, ``sparse_linear.pt``). All live under
``$EMBED_TEST_CACHE`` (default ``<repo>/.embedfleet/test-models``) and are re-exported when
the export code changes (a key over worker/export/*.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

try:
    import pytest

    _session_fixture = pytest.fixture(scope="session")
except ImportError:  # the builders also serve benchmarks/gpu.py on a host without pytest
    def _session_fixture(f):  # type: ignore[no-untyped-def]
        return f

ROOT = Path(__file__).resolve().parent.parent
XLMR_WINDOW = 8192
XLMR_DIM = 32


@_session_fixture
def minilm_bundle() -> Path:
    """all-MiniLM-L6-v2 exported with fp32, fp16 and int8 (the variants that pass the gate)."""
    from worker.export import export_bundle

    return _cached("all-MiniLM-L6-v2", lambda out: export_bundle("all-MiniLM-L6-v2", out))


@_session_fixture
def xlmr_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random XLM-RoBERTa bundle (fp32 only) with an 8,192-token window."""
    from worker.export import export_bundle

    def build(out: Path) -> Path:
        src = make_tiny_xlmr(tmp_path_factory.mktemp("tiny-xlmr-src"))
        return export_bundle(src, out, precisions=("fp32",))

    return _cached("tiny-xlm-roberta", build)


@_session_fixture
def m3_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny XLM-R with random BGE-M3 heads, exported with all three outputs (fp32 only)."""
    from worker.export import export_bundle

    def build(out: Path) -> Path:
        src = make_tiny_m3(tmp_path_factory.mktemp("tiny-m3-src"))
        return export_bundle(src, out, precisions=("fp32",))

    return _cached("tiny-bge-m3", build)


def make_tiny_m3(root: Path) -> Path:
    """make_tiny_xlmr plus random heads saved the way FlagEmbedding saves them
    (``torch.save(linear.state_dict())``): colbert hidden -> hidden, sparse hidden -> 1."""
    return make_m3(root, XlmrShape())


def make_m3(root: Path, shape: XlmrShape, texts: Sequence[str] | None = None) -> Path:
    """make_xlmr plus BGE-M3's two random heads (colbert hidden -> hidden, sparse hidden -> 1)."""
    import torch

    make_xlmr(root, shape, texts)
    torch.manual_seed(1)
    colbert = torch.nn.Linear(shape.hidden, shape.hidden)
    sparse = torch.nn.Linear(shape.hidden, 1)
    with torch.no_grad():
        sparse.bias.fill_(0.05)  # about half the random token weights come out above zero
    torch.save(colbert.state_dict(), root / "colbert_linear.pt")
    torch.save(sparse.state_dict(), root / "sparse_linear.pt")
    return root


@dataclasses.dataclass(frozen=True)
class XlmrShape:
    """An XLM-RoBERTa's size; the defaults are the tiny test model. ``vocab`` 0: the trained
    tokenizer's own size; a larger one adds zero rows for the ids above the tokenizer's, never
    used (a stand-in for a real vocabulary of that size: same weight bytes)."""

    hidden: int = XLMR_DIM
    layers: int = 2
    heads: int = 2
    ffn: int = 64
    vocab: int = 0
    window: int = XLMR_WINDOW
    tokenizer_vocab: int = 2000


BGE_M3_SHAPE = XlmrShape(hidden=1024, layers=24, heads=16, ffn=4096, vocab=250002,
                         window=8192, tokenizer_vocab=8000)
"""BAAI/bge-m3's size (XLM-R large): 568M parameters, 2.27 GB in fp32."""


def make_tiny_xlmr(root: Path) -> Path:
    """Save a tiny XLM-R model directory the way sentence-transformers lays one out."""
    return make_xlmr(root, XlmrShape())


def make_xlmr(root: Path, shape: XlmrShape, texts: Sequence[str] | None = None) -> Path:
    """Save a random-weight XLM-R model directory the way sentence-transformers lays one out.

    Tokenizer: a Unigram model trained on ``texts`` (default worker/export/samples.py) with
    XLM-R's special tokens ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3 and the
    ``<s> $A </s>`` template. Pooling CLS, then Normalize (as BGE-M3).
    """
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    root.mkdir(parents=True, exist_ok=True)
    n_tokens = _save_tokenizer(root, shape, texts)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=n_tokens, hidden_size=shape.hidden,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        intermediate_size=shape.ffn, max_position_embeddings=shape.window + 2,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
    )
    model = XLMRobertaModel(config).eval()
    if shape.vocab > n_tokens:
        _pad_vocab(model, shape.vocab)
    model.save_pretrained(str(root))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": shape.hidden, "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling",
         "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize",
         "type": "sentence_transformers.models.Normalize"},
    ]))
    return root


def _pad_vocab(model, rows: int) -> None:  # type: ignore[no-untyped-def]
    """Grow the word-embedding table to ``rows`` with zero rows past the tokenizer's ids (never
    read, so their values do not matter; zeros from calloc cost no time and no memory until
    saved, where random ones took most of a minute for a 2.25 GB table)."""
    import torch

    old = model.embeddings.word_embeddings.weight.data
    table = torch.zeros(rows, old.shape[1])
    table[: old.shape[0]] = old
    model.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(
        table, freeze=False, padding_idx=model.config.pad_token_id)
    model.config.vocab_size = rows


def _save_tokenizer(root: Path, shape: XlmrShape, texts: Sequence[str] | None) -> int:
    """Train and save tokenizer.json and tokenizer_config.json; returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer

    from worker.export.samples import SAMPLE_TEXTS

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(vocab_size=shape.tokenizer_vocab, special_tokens=specials,
                             unk_token="<unk>", shrinking_factor=0.75, max_piece_length=8)
    tok.train_from_iterator(list(texts or SAMPLE_TEXTS) * 4, trainer=trainer)
    assert [tok.token_to_id(t) for t in specials] == [0, 1, 2, 3], "special ids; this is a bug"
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    tok.save(str(root / "tokenizer.json"))
    (root / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": shape.window,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
    }))
    return tok.get_vocab_size()


def cache_root() -> Path:
    """``$EMBED_TEST_CACHE``, else ``<repo>/.embedfleet/test-models`` (git-ignored)."""
    return Path(os.environ.get("EMBED_TEST_CACHE") or ROOT / ".embedfleet" / "test-models")


def _cached(name: str, build) -> Path:  # type: ignore[no-untyped-def]
    """Reuse ``<cache>/<name>`` when it holds a bundle made by the current export code."""
    out = cache_root() / name
    key = _export_key()
    stamp = out / ".export-key"
    if (out / "embedfleet.json").is_file() and stamp.is_file() and stamp.read_text() == key:
        return out
    build(out)
    stamp.write_text(key)
    return out


def _export_key() -> str:
    h = hashlib.sha256()
    for path in sorted((ROOT / "worker" / "export").glob("*.py")):
        if path.name != "hashing.py":  # the hashing bundle is built apart, never cached here
            h.update(path.read_bytes())
    return h.hexdigest()[:16]
