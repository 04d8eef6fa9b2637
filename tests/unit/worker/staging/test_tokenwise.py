"""Chunk once: counts from the document's tokens must equal re-encoding, on the real
all-MiniLM-L6-v2 WordPiece tokenizer and the test XLM-R Unigram (Metaspace) tokenizer."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from worker.staging.chunking import chunk_budget, chunk_document
from worker.staging.fastcount import encoder_for
from worker.staging.tokenwise import _split_chars, additivity, pieces_of
from storage.bundle import load_bundle
from worker.export.samples import SAMPLE_TEXTS


HOSTILE = ["\n\n", "\n", "\t", "\r\n", "  ", "\u00a0", "\u3000", "\x1c", "\u200b", "e\u0301",
           "日本語の文。", "中文没有空格", "한국어 문장. ", "😀👩‍👧", "supercalifragilisticexpialidocious",
           "U.S.A. ", "(see: [1]) ", "a" * 300]


@pytest.fixture(scope="module")
def tokenizers(minilm_bundle: Path, xlmr_bundle: Path) -> dict[str, Tokenizer]:
    return {name: load_bundle(p).load_tokenizer(truncate=False)
            for name, p in (("minilm", minilm_bundle), ("xlmr", xlmr_bundle))}


def document(seed: int, n: int = 400) -> str:
    """Real sentences with hostile pieces between them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        out.append(rng.choice(SAMPLE_TEXTS) if rng.random() < 0.7 else rng.choice(HOSTILE))
        out.append(rng.choice([" ", " ", "\n", "\n\n", "", "  "]))
    return "".join(out)


class Counting:
    """The tokenizer, counting the texts it is asked to encode for counts."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.encoded = tok, 0
        self.truncation, self.padding = tok.truncation, tok.padding

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tok, name)

    def encode_batch_fast(self, texts: list[str], **kw: Any) -> Any:
        self.encoded += len(texts)
        return self.tok.encode_batch_fast(texts, **kw)


@pytest.mark.parametrize("name", ["minilm", "xlmr"])
@pytest.mark.parametrize("prefix", ["", "passage: "])
@pytest.mark.parametrize("max_tokens,overlap", [(64, 0), (256, 0), (100, 12)])
def test_chunk_once_equals_reencoding(tokenizers: dict[str, Tokenizer], name: str, prefix: str,
                                      max_tokens: int, overlap: int) -> None:
    tok = tokenizers[name]
    add = additivity(tok, prefix)
    assert add.trusted
    for seed in range(4):
        text = document(seed)
        counting = Counting(tok)
        encoder_for(counting)  # its one-off agreement check is not chunk counting
        counting.encoded = 0
        fast = chunk_document(text, counting, max_tokens=max_tokens, overlap=overlap,
                              prefix=prefix, add=add)
        slow = chunk_document(text, tok, max_tokens=max_tokens, overlap=overlap, prefix=prefix,
                              add=dataclasses.replace(add, verify_all=True))
        assert fast == slow
        for s in fast:
            body = prefix + text[s.char_start:s.char_end]
            assert len(tok.encode(body, add_special_tokens=True).ids) == s.n_tokens <= max_tokens
        if name == "minilm":  # the point of it: most chunks were not encoded again (for
            # Metaspace a newline is inside a word: cuts at line breaks are re-encoded)
            assert counting.encoded < len(fast) / 2, (counting.encoded, len(fast))


def test_prose_between_spaces_is_never_reencoded(tokenizers: dict[str, Tokenizer]) -> None:
    text = " ".join([t for t in SAMPLE_TEXTS if t.isascii()] * 30)
    for tok in tokenizers.values():
        counting = Counting(tok)
        encoder_for(counting)
        counting.encoded = 0
        spans = chunk_document(text, counting, max_tokens=128)
        assert len(spans) > 10 and counting.encoded == 0


def test_prefix_not_ending_in_a_split_is_not_trusted(tokenizers: dict[str, Tokenizer]) -> None:
    for tok in tokenizers.values():
        assert not additivity(tok, "search_query:").trusted
        text = document(7)
        budget = chunk_budget(tok, 64, None, "search_query:")
        spans = chunk_document(text, tok, max_tokens=64, prefix="search_query:", budget=budget)
        for s in spans:
            n = len(tok.encode("search_query:" + text[s.char_start:s.char_end]).ids)
            assert n == s.n_tokens <= 64


@pytest.mark.parametrize("spec,splits", [
    ({"normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"}},
     " \t\n\r"),
    ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}},
     " "),
    ({"normalizer": {"type": "Sequence", "normalizers": [{"type": "Precompiled"}]},
      "pre_tokenizer": {"type": "Metaspace", "split": True}}, " "),
    ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never"}}, ""),
    ({"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "split": False}}, ""),
    ({"normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}}, ""),
    ({"normalizer": None, "pre_tokenizer": None}, ""),
    ({"normalizer": {"type": "Replace"}, "pre_tokenizer": {"type": "BertPreTokenizer"}}, ""),
])
def test_only_known_pipelines_are_trusted(spec: dict[str, Any], splits: str) -> None:
    assert _split_chars(spec) == splits


def test_pieces_cut_at_split_characters() -> None:
    text = ("word\nword " * 2000)
    pieces = list(pieces_of(text, " "))
    assert "".join(p for _, p in pieces) == text
    assert all(text[b] == " " for b, _ in pieces[1:])
    assert len(pieces) > 2
