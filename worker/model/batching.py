"""Stage 6: tokenise once, sort by length, cut padded batches under a token budget.

TEI's rule (``queue.rs``) plus sorting: a batch grows while ``longest × rows ≤ max_batch_tokens``,
so 8,192-token chunks never share a padded batch with 20-token ones and one long chunk cannot
blow the memory. Sorting by *token* length (not characters: CJK is about one token per
character) keeps padding near zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from worker.contract import Device
from worker.model.pooling import IntArray

DEFAULT_MAX_BATCH_TOKENS = {"cpu": 4096, "gpu": 32768}
"""Padded tokens per inference batch (rows × longest), per device. Measured on the CPU
(MiniLM int8, 2 threads): 4,096 runs as fast as 16,384 (8,939 vs 8,882 tokens/s) with 1.0 GB
instead of 2.6 GB peak RSS; a GPU wants bigger batches. A single chunk longer than the budget
(an 8,192-token BGE-M3 chunk) still gets a batch of its own."""
DEFAULT_MAX_BATCH_ROWS = 256
DEFAULT_MAX_PADDING = 0.10
"""A batch is also cut when padding would exceed this fraction of its padded tokens."""
MIN_ROWS_BEFORE_PADDING_CUT = 4


@dataclass(frozen=True)
class Batch:
    """Rows of one inference call; ``positions`` index into the caller's list of texts."""

    positions: list[int]
    input_ids: IntArray
    attention_mask: IntArray
    token_type_ids: IntArray

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return int(self.attention_mask.size)


def encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (special tokens added, truncated at the tokenizer's max length)."""
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=True)]


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_rows: int = DEFAULT_MAX_BATCH_ROWS,
    max_padding: float = DEFAULT_MAX_PADDING,
) -> list[list[int]]:
    """Group positions into batches by ascending length under the padded-token budget.

    A batch is cut when ``longest × rows`` would pass ``max_batch_tokens``, when it has
    ``max_rows`` rows, or (once it has a few rows) when padding would pass ``max_padding``.

    >>> plan_batches([5, 100, 6, 99], max_batch_tokens=200)
    [[0, 2], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in order:
        longest = lengths[i]  # ascending order: the newcomer is the longest
        padded = longest * (len(cur) + 1)
        if cur and (
            padded > max_batch_tokens
            or len(cur) >= max_rows
            or (len(cur) >= MIN_ROWS_BEFORE_PADDING_CUT
                and 1 - (real + longest) / padded > max_padding)
        ):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += longest
    if cur:
        batches.append(cur)
    return batches


def batch_budget(device: Device | str, override: int | None = None) -> int:
    """Padded tokens per batch: ``override`` when set, else the device's measured default
    (``auto`` gets the CPU one: it is the one that fits either).

    >>> batch_budget("gpu"), batch_budget(Device.AUTO), batch_budget("cpu", 512)
    (32768, 4096, 512)
    """
    gpu = Device(device) is Device.GPU
    return override or DEFAULT_MAX_BATCH_TOKENS[Device.GPU.value if gpu else Device.CPU.value]


def batches_by_tokens(
    ids: Sequence[Sequence[int]],
    pad_id: int,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS["cpu"],
    max_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> Iterator[Batch]:
    """Yield padded int64 batches, shortest first."""
    for positions in plan_batches([len(x) for x in ids], max_batch_tokens, max_rows):
        yield pad_rows([ids[i] for i in positions], positions, pad_id)


def pad_rows(rows: Sequence[Sequence[int]], positions: list[int], pad_id: int) -> Batch:
    """Right-pad rows to the longest one."""
    width = max(len(r) for r in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, r in enumerate(rows):
        input_ids[k, : len(r)] = r
        mask[k, : len(r)] = 1
    return Batch(positions, input_ids, mask, np.zeros_like(input_ids))


def aligned(batch: Batch, multiple: int, pad_id: int, cap: int) -> Batch:
    """``batch`` right-padded (masked out) to a length that is a multiple of ``multiple``, never
    past ``cap`` (the model's window) unless it already is. OpenVINO's bf16 kernels on AMX ran
    MiniLM 15% faster on lengths that are multiples of 16 than on the exact lengths, padding
    included; the CPU EP did not gain (``pad_multiple``).

    >>> b = aligned(pad_rows([[1, 2, 3]], [0], 0), 16, 0, 256)
    >>> b.input_ids.shape, int(b.attention_mask.sum())
    ((1, 16), 3)
    >>> aligned(pad_rows([[1] * 250], [0], 0), 16, 0, 252).input_ids.shape
    (1, 252)
    """
    width = batch.input_ids.shape[1]
    target = min(-(-width // multiple) * multiple, max(width, cap)) if multiple > 1 else width
    if target == width:
        return batch
    extra = ((0, 0), (0, target - width))
    return Batch(batch.positions, np.pad(batch.input_ids, extra, constant_values=pad_id),
                 np.pad(batch.attention_mask, extra), np.pad(batch.token_type_ids, extra))


def pad_multiple(provider: str, precision: str, flags: frozenset[str], setting: int = 0) -> int:
    """The length multiple batches are padded to: ``setting`` (``EMBED_PAD_MULTIPLE``) when
    given, else 16 for OpenVINO bf16 on a CPU with AMX (measured: 39.7k vs 34.6k tok/s, MiniLM,
    2-core Xeon), else 1 (CPU EP fp32 3% slower at 16, int8 and OpenVINO fp32 alike).

    >>> pad_multiple("OpenVINOExecutionProvider", "bf16", frozenset({"amx_bf16"}))
    16
    >>> pad_multiple("CPUExecutionProvider", "int8", frozenset({"amx_bf16"})), pad_multiple(
    ...     "CPUExecutionProvider", "fp32", frozenset(), 8)
    (1, 8)
    """
    if setting:
        return setting
    amx = provider == "OpenVINOExecutionProvider" and precision == "bf16" and "amx_bf16" in flags
    return 16 if amx else 1


GPU_MEMORY_FRACTION = 0.8
"""Share of the GPU memory left after the model loaded that batches may use (the rest: the
arena's rounding, cuBLAS/cuDNN workspaces, the outputs' copies)."""
GPU_MAX_BATCH_TOKENS = 262_144


def activation_bytes_per_token(hidden: int, longest: int, dtype_bytes: int = 2) -> int:
    """Peak activation memory per padded token of an encoder forward pass (one layer alive at a
    time): ~12 hidden-wide tensors (Q, K, V, context, residuals, the 4x FFN) plus four
    attention tensors of heads (hidden / 64) × ``longest`` (scores, scaled, masked, softmax: an
    unfused exported graph keeps them all; one 8,192-token BGE-M3 row on the CPU EP at fp32 took
    a worker to 14 GB RSS).

    >>> activation_bytes_per_token(1024, 8192)  # BGE-M3 fp16 at 8,192 tokens: ~1 MB
    1073152
    """
    heads = max(1, hidden // 64)
    return dtype_bytes * (12 * hidden + 4 * heads * longest)


def gpu_batch_budget(free_bytes: int | None, limit_bytes: int | None, weights_bytes: int,
                     hidden: int, max_length: int, dtype_bytes: int = 2) -> tuple[int, str]:
    """Padded tokens per GPU batch from the device's memory, and how it was worked out.

    ``free_bytes``: free on the device after the model loaded (None: unknown); ``limit_bytes``:
    the CUDA EP's ``gpu_mem_limit`` (its arena holds the weights too). The budget is sized for
    the worst case, batches of ``max_length``-long rows; never below one such row (a batch that
    still runs out of memory is split as before), never above ``GPU_MAX_BATCH_TOKENS``. Unknown
    memory gives the fixed default.

    >>> gpu_batch_budget(16 * 2**30, None, 2**30, 1024, 8192)[0]  # a 16 GB card, BGE-M3 fp16
    12807
    >>> gpu_batch_budget(None, None, 2**30, 1024, 8192)[0]
    32768
    """
    room = [b for b in (free_bytes, None if limit_bytes is None else limit_bytes - weights_bytes)
            if b is not None]
    if not room:
        return DEFAULT_MAX_BATCH_TOKENS["gpu"], "GPU memory unknown: the fixed default"
    usable = GPU_MEMORY_FRACTION * max(0, min(room))
    per_token = activation_bytes_per_token(hidden, max_length, dtype_bytes)
    tokens = int(min(GPU_MAX_BATCH_TOKENS, max(max_length, usable // per_token)))
    why = (f"{GPU_MEMORY_FRACTION:.0%} of {min(room) / 2**20:,.0f} MiB "
           f"({'free after loading' if min(room) == free_bytes else 'gpu_mem_limit - weights'})"
           f" / {per_token / 1024:,.0f} KiB per token at {max_length} tokens")
    return tokens, why
