"""worker/staging/faststarts.py: token starts from nanotoken's ids equal `tokenizers`' offsets,
on the benchmark corpus (real text, long documents) and on hostile text, and the chunks made
with them equal the reference chunker's (offsets from `tokenizers`, every chunk re-encoded)."""

from __future__ import annotations

import dataclasses
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.bundle import load_bundle
from worker.staging import faststarts, tokenwise
from worker.staging.chunking import chunk_document, chunk_with_ids, id_wrap
from worker.staging.fastcount import choose, encoder_for
from worker.staging.tokenwise import (additivity, pieces_of, token_starts, token_starts_batch,
                                      token_starts_ids)

from tests.unit.worker.staging.test_tokenwise import HOSTILE, document

ROOT = Path(__file__).resolve().parents[4]
MORE_HOSTILE = ["[CLS]", "a[SEP]b", "[MASK]", "[UNK]", "##ing", "x" * 101, "x" * 100, "─══│",
                "naïve café", "\x00\x7f", "İstanbul", "e\u0301", "tab\there", "a\r\nb", "😀x",
                "don't", "U.S.A.", "3.14159", "~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./", "  \t \n"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    """The benchmark corpus builder's real text (300 documents, long-tailed lengths)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from corpus import build_corpus  # benchmarks/corpus.py
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return [d["text"] for d in build_corpus(300, log=lambda _: None)]


@pytest.fixture(scope="module")
def tokenizers(minilm_bundle: Path, xlmr_bundle: Path) -> dict[str, Any]:
    out = {}
    for name, p in (("minilm", minilm_bundle), ("xlmr", xlmr_bundle)):
        out[name] = load_bundle(p).load_tokenizer(truncate=False)
        choose(out[name])
    return out


def hostile(seed: int, n: int = 600) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice([document(seed, 3), rng.choice(HOSTILE + MORE_HOSTILE)])
                   + rng.choice([" ", "\n", "", "\n\n", "\t"]) for _ in range(n))


def long_docs(corpus: list[str]) -> list[str]:
    docs = [t for t in corpus if len(t) > 4096]
    assert len(docs) >= 10 and sum(map(len, docs)) > 200_000  # the point: long documents
    return docs


def test_only_the_bert_wordpiece_pipeline_gets_the_fast_path(tokenizers: dict[str, Any]
                                                              ) -> None:
    assert faststarts.vocab_for(tokenizers["minilm"]) is not None
    assert faststarts.vocab_for(tokenizers["xlmr"]) is None  # Unigram: tokenizers' offsets


@pytest.mark.parametrize("name", ["minilm", "xlmr"])
def test_starts_equal_tokenizers_offsets(tokenizers: dict[str, Any], corpus: list[str],
                                         name: str) -> None:
    tok = tokenizers[name]
    splits = additivity(tok, "").splits
    texts = long_docs(corpus) + [hostile(s) for s in range(6)] + [document(s) for s in range(4)]
    for text in texts:
        fast, ref = token_starts(text, tok, splits), token_starts(text, tok, splits, fast=False)
        assert np.array_equal(fast[0], ref[0]) and np.array_equal(fast[1], ref[1])


def test_real_prose_takes_the_fast_path(tokenizers: dict[str, Any], corpus: list[str]) -> None:
    """Pieces fall back to tokenizers only around characters the fast path does not handle."""
    tok = tokenizers["minilm"]
    vocab = faststarts.vocab_for(tok)
    splits = additivity(tok, "").splits
    total = slow = 0
    for text in long_docs(corpus):
        pieces = faststarts.refine(list(pieces_of(text, splits)))
        found = faststarts.fast_starts(text, pieces, vocab)[0]
        for (_, piece), f in zip(pieces, found, strict=True):
            total += len(piece)
            if f is None:
                slow += len(piece)
                assert faststarts._UNSAFE.search(piece) or re.search(r"\[[A-Z]+\]|\S{101}",
                                                                     piece), piece[:200]
    assert slow < 0.05 * total, (slow, total)


def test_a_failed_check_falls_back_per_piece(tokenizers: dict[str, Any]) -> None:
    tok = tokenizers["minilm"]
    vocab = faststarts.vocab_for(tok)
    text = "plain words here. " * 300 + "then a literal [CLS] token " + "more words. " * 300
    pieces = list(pieces_of(text, additivity(tok, "").splits))
    found = faststarts.fast_starts(text, pieces, vocab)[0]
    assert [f is None for f in found] == ["[CLS]" in p for _, p in pieces]
    assert any(f is None for f in found) and any(f is not None for f in found)


@pytest.mark.parametrize("name", ["minilm", "xlmr"])
@pytest.mark.parametrize("max_tokens,overlap,prefix", [(256, 0, ""), (100, 12, "passage: ")])
def test_chunks_and_ids_equal_the_reference(tokenizers: dict[str, Any], corpus: list[str],
                                            name: str, max_tokens: int, overlap: int,
                                            prefix: str) -> None:
    tok = tokenizers[name]
    add = additivity(tok, prefix)
    ref_add = dataclasses.replace(add, verify_all=True)
    encode = encoder_for(tok)
    for text in long_docs(corpus)[:12] + [hostile(s, 300) for s in range(3)]:
        fast = chunk_document(text, tok, max_tokens=max_tokens, overlap=overlap, prefix=prefix,
                              add=add)
        assert fast == chunk_document(text, tok, max_tokens=max_tokens, overlap=overlap,
                                      prefix=prefix, add=ref_add)
        bodies = [prefix + text[s.char_start:s.char_end] for s in fast]
        ids = encode(bodies)
        assert ids == [e.ids for e in tok.encode_batch(bodies)]
        assert [len(x) for x in ids] == [s.n_tokens for s in fast]


@pytest.mark.parametrize("max_tokens,overlap,prefix", [(256, 0, ""), (100, 12, "passage: "),
                                                     (64, 0, "query: ")])
def test_chunk_ids_from_the_document_equal_encoding_each_chunk(
        tokenizers: dict[str, Any], corpus: list[str], max_tokens: int, overlap: int,
        prefix: str) -> None:
    """A cleanly cut chunk's ids are the document's ids over its range, wrapped in [CLS] +
    prefix and [SEP]: the same as `tokenizers` encoding the chunk (real and hostile text)."""
    tok = tokenizers["minilm"]
    add = additivity(tok, prefix)
    wrap = id_wrap(tok, prefix, add)
    assert wrap is not None and id_wrap(tokenizers["xlmr"], prefix, additivity(
        tokenizers["xlmr"], prefix)) is None  # Metaspace: a chunk's first word is encoded anew
    from_doc = 0
    for text in long_docs(corpus) + [hostile(s, 300) for s in range(4)]:
        spans, ids = chunk_with_ids(text, tok, wrap=wrap, max_tokens=max_tokens, overlap=overlap,
                                    prefix=prefix, add=add)
        assert spans == chunk_document(text, tok, max_tokens=max_tokens, overlap=overlap,
                                       prefix=prefix, add=add)
        bodies = [prefix + text[s.char_start:s.char_end] for s in spans]
        for got, enc, sp in zip(ids, tok.encode_batch(bodies), spans, strict=True):
            if got is not None:
                from_doc += 1
                assert got == enc.ids and len(got) == sp.n_tokens
    assert from_doc > 200  # most chunks of real text


@pytest.mark.parametrize("name", ["minilm", "xlmr"])
def test_starts_of_texts_together_equal_each_alone(tokenizers: dict[str, Any],
                                                   corpus: list[str], name: str) -> None:
    """Staging takes a group's texts together (one nanotoken call, one numpy pass): the same
    starts, cut points and ids as each text alone, and as `tokenizers`' offsets."""
    tok = tokenizers[name]
    splits = additivity(tok, "").splits
    texts = ([t for t in corpus if 300 < len(t) < 20_000][:60] + [hostile(s, 40) for s in range(8)]
             + ["x", "  \n ", "café " * 900, "a " * 40_000])  # the last: longer than a batch
    random.Random(3).shuffle(texts)
    together = token_starts_batch(texts, tok, splits)
    for text, got in zip(texts, together, strict=True):
        alone = token_starts_ids(text, tok, splits)
        ref = token_starts_ids(text, tok, splits, fast=False)
        for a, b, c in zip(got, alone, ref, strict=True):
            assert a.tolist() == b.tolist() == c.tolist()
        assert got[2].tolist() == tok.encode(text, add_special_tokens=False).ids


def _regex_last_run_start(splits: str, text: str, lo: int, hi: int) -> int | None:
    """The former ``pieces_of`` search for a split character run (a regex over the range)."""
    last = None
    for m in re.compile(f"[{re.escape(splits)}]+").finditer(text, lo, hi):
        last = m.start()
    return last if last is not None and last > lo else None


def test_split_run_search_equals_the_regex(tokenizers: dict[str, Any]) -> None:
    rng = random.Random(5)
    for name in ("minilm", "xlmr"):
        splits = additivity(tokenizers[name], "").splits
        for seed in range(3):
            text = hostile(seed, 200)
            for _ in range(300):
                lo = rng.randrange(len(text))
                hi = min(len(text), lo + rng.choice([1, 5, 50, 2048]))
                assert tokenwise._last_split_run(text, splits, lo, hi) == \
                    _regex_last_run_start(splits, text, lo, hi)
