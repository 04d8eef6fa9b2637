"""worker/staging/fastcount.py: nanotoken only where it gives exactly the tokenizer's ids."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from worker.staging import fastcount
from storage.bundle import load_bundle

ALPHABET = [*"abcdefgh  \n\n\t.!?,", *"日本語。！？한국어😀\u00e9\u0301\x00\u200b\u3000\r\x1c\ufeff",
            "👩‍👧", "\r\n", "Ñandú", "ﬁ", "İstanbul", "[CLS]", "[SEP] [MASK]", "##ing", "x" * 150]


def hf_ids(tok, texts: list[str]) -> list[list[int]]:  # type: ignore[no-untyped-def]
    return [e.ids for e in tok.encode_batch(texts)]


def texts(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = ["".join(rng.choice(ALPHABET) for _ in range(rng.choice([3, 40, 400])))
           for _ in range(2000)]
    corpus = Path(__file__).resolve().parents[4] / "examples" / "sample.jsonl"
    out += [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()]
    return out


def test_wordpiece_gets_nanotoken_with_identical_ids(minilm_bundle: Path) -> None:
    tok = load_bundle(minilm_bundle).load_tokenizer(truncate=False)
    enc = fastcount.encoder_for(tok)
    assert enc is fastcount.encoder_for(tok)  # cached per tokenizer
    assert enc.__qualname__.startswith("_fast")  # the fast one was chosen
    sample = texts()
    assert enc(sample) == hf_ids(tok, sample)


def test_unigram_keeps_tokenizers(xlmr_bundle: Path) -> None:
    tok = load_bundle(xlmr_bundle).load_tokenizer(truncate=False)
    enc = fastcount.encoder_for(tok)
    assert enc.__qualname__.startswith("_reference")
    sample = texts(1)[:300]
    assert enc(sample) == hf_ids(tok, sample)


def test_disagreement_falls_back_with_a_warning(minilm_bundle: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    import nanotoken

    real = nanotoken.Tokenizer.encode_batch_list

    def off_by_one(self, texts, **kw):  # type: ignore[no-untyped-def]
        return [ids + [0] if "İ" in t else ids for ids, t in zip(real(self, texts, **kw), texts)]

    monkeypatch.setattr(nanotoken.Tokenizer, "encode_batch_list", off_by_one)
    tok = load_bundle(minilm_bundle).load_tokenizer(truncate=False)
    with caplog.at_level(logging.WARNING):
        enc = fastcount.encoder_for(tok)
    assert enc.__qualname__.startswith("_reference")
    assert "nanotoken's ids differ" in caplog.text


def test_switched_off(minilm_bundle: Path) -> None:
    """EMBED_FAST_TOKENIZER=0 reaches staging as StageConfig.fast_tokenizer=False."""
    from worker.staging.pool import staging_tokenizer
    from worker.staging.shards import StageConfig

    tok = staging_tokenizer(StageConfig(bundle_path=str(minilm_bundle), max_tokens=256,
                                        fast_tokenizer=False))
    assert fastcount.encoder_for(tok).__qualname__.startswith("_reference")
    assert not fastcount.is_fast(tok)
    tok = load_bundle(minilm_bundle).load_tokenizer(truncate=False)
    fastcount.choose(tok, fast=False)
    assert fastcount.encoder_for(tok).__qualname__.startswith("_reference")
