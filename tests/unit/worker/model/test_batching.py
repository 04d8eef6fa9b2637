"""worker/model/batching.py: plan_batches' budget, padding and ordering properties; pad_rows."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.fakes import word_tokenizer
from worker.model.batching import (
    DEFAULT_MAX_BATCH_ROWS,
    DEFAULT_MAX_PADDING,
    MIN_ROWS_BEFORE_PADDING_CUT,
    batch_budget,
    batches_by_tokens,
    encode,
    pad_rows,
    plan_batches,
)


def random_lengths(seed: int, n: int = 400) -> list[int]:
    rng = random.Random(seed)
    return [rng.choice([rng.randint(3, 40), rng.randint(40, 600), rng.randint(1, 5)])
            for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_plan_batches_properties(seed: int, budget: int) -> None:
    lengths = random_lengths(seed)
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every position exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)  # shortest first, across batches
    for b in batches:
        longest = max(lengths[i] for i in b)
        padded = longest * len(b)
        assert padded <= budget or len(b) == 1  # only a lone long chunk passes the budget
        assert len(b) <= DEFAULT_MAX_BATCH_ROWS
        if len(b) > MIN_ROWS_BEFORE_PADDING_CUT:
            assert 1 - sum(lengths[i] for i in b) / padded <= DEFAULT_MAX_PADDING + 1e-9


def test_plan_batches_cuts_at_max_rows_and_keeps_long_chunks_alone() -> None:
    assert [len(b) for b in plan_batches([10] * 10, 10_000, max_rows=4)] == [4, 4, 2]
    assert plan_batches([9000, 5], 4096) == [[1], [0]]
    assert plan_batches([], 100) == []


def test_padding_cut_only_after_a_few_rows() -> None:
    # Rows of 1 token then one of 10: with 4 rows already, the 10 would make padding 72%.
    assert plan_batches([1, 1, 1, 1, 10], 1000) == [[0, 1, 2, 3], [4]]
    # With fewer rows the padding rule does not apply yet.
    assert plan_batches([1, 1, 10], 1000) == [[0, 1, 2]]
    assert plan_batches([1, 1, 1, 1, 10], 1000, max_padding=0.9) == [[0, 1, 2, 3, 4]]


def test_pad_rows_right_pads_with_the_pad_id_and_masks_the_padding() -> None:
    b = pad_rows([[5, 6, 7], [8]], [9, 4], pad_id=1)
    assert b.positions == [9, 4]
    assert b.input_ids.dtype == np.int64 and b.input_ids.tolist() == [[5, 6, 7], [8, 1, 1]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b.token_type_ids.tolist() == [[0, 0, 0], [0, 0, 0]]
    assert (b.real_tokens, b.padded_tokens) == (4, 6)


def test_encode_adds_special_tokens_and_batches_cover_every_text() -> None:
    tok = word_tokenizer()
    texts = ["alpha", "beta gamma delta", "omega " * 30, "pi rho"]
    ids = encode(tok, texts)
    assert ids[0] == [2, tok.token_to_id("alpha"), 3]
    assert [len(x) for x in ids] == [3, 5, 32, 4]
    batches = list(batches_by_tokens(ids, pad_id=0, max_batch_tokens=16))
    assert sorted(p for b in batches for p in b.positions) == [0, 1, 2, 3]
    for b in batches:
        for k, p in enumerate(b.positions):
            assert b.input_ids[k, : len(ids[p])].tolist() == ids[p]
        assert b.padded_tokens <= 16 or len(b.positions) == 1


def test_an_8192_token_chunk_stays_alone_in_its_batch_on_cpu() -> None:
    budget = batch_budget("cpu")
    lengths = [8192, 30, 8192, 40, 8000, 512]
    groups = plan_batches(lengths, budget)
    for g in groups:
        if any(lengths[i] > budget // 2 for i in g):
            assert len(g) == 1, groups  # two long chunks, or a long one and short ones: never
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))


def test_gpu_budget_follows_the_memory_free_after_loading() -> None:
    from worker.model.batching import (GPU_MAX_BATCH_TOKENS, activation_bytes_per_token,
                                       gpu_batch_budget)

    per = activation_bytes_per_token(1024, 8192, 2)  # BGE-M3, fp16, rows of 8,192
    small, why = gpu_batch_budget(16 * 2**30, None, 2**30, 1024, 8192)
    assert small == int(0.8 * 16 * 2**30 // per) and "free after loading" in why
    big, _ = gpu_batch_budget(130 * 2**30, None, 2**30, 1024, 8192)  # an H200 after loading
    assert big > 6 * small and big <= GPU_MAX_BATCH_TOKENS
    # gpu_mem_limit caps it (the arena holds the weights too); the smaller room wins
    capped, why = gpu_batch_budget(130 * 2**30, 16 * 2**30, 2**30, 1024, 8192)
    assert capped == int(0.8 * 15 * 2**30 // per) > 8192 and "gpu_mem_limit" in why
    # a card too small for even one long row: one row per batch (OOM splits and reports)
    assert gpu_batch_budget(2**20, None, 0, 1024, 8192)[0] == 8192
    # fp32 rows cost twice fp16's; a 512-token window far less
    assert gpu_batch_budget(16 * 2**30, None, 2**30, 1024, 8192, 4)[0] < small
    assert gpu_batch_budget(16 * 2**30, None, 2**30, 384, 512)[0] > 8 * small
    assert gpu_batch_budget(None, None, 2**30, 1024, 8192) == (
        32768, "GPU memory unknown: the fixed default")


def test_gpu_free_memory_query_and_its_failure() -> None:
    from worker.model import gpumem

    calls = []

    def smi(cmd):
        calls.append(cmd)
        return "15000\n"

    assert gpumem.free_bytes(0, run=smi) == 15000 * 2**20
    assert calls[0][-2:] == ["-i", "0"]

    def missing(cmd):
        raise FileNotFoundError("nvidia-smi")

    assert gpumem.free_bytes(0, run=missing) is None
    tokens = gpumem.batch_tokens(0, None, 2**30, 1024, 8192, 2, free=lambda _: 16 * 2**30)
    assert tokens == gpu_tokens_16gb()


def gpu_tokens_16gb() -> int:
    from worker.model.batching import gpu_batch_budget

    return gpu_batch_budget(16 * 2**30, None, 2**30, 1024, 8192)[0]
