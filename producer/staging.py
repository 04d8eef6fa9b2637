"""Stage 3: group chunks into shards under a token budget and write ``input/part-NNNNN.parquet``.

Streams: records come in one at a time, chunks are buffered only until a shard is full, rejects
are appended to a file as they happen. Memory does not grow with the corpus (a set of 8-byte
id digests is the only thing that does, to report duplicate ids).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from producer.chunking import chunk_document
from producer.corpus import Record, Reject
from storage.atomic import tmp_name
from storage.hashing import text_sha256
from storage.jobdir import JobDir
from storage.shards import input_table, write_table

DEFAULT_SHARD_TOKENS = 32768
"""Real tokens per task: small enough to finish in well under a minute on one CPU worker."""
DEFAULT_SHARD_MAX_CHUNKS = 2048
DUPLICATE_EXAMPLES = 5


@dataclass
class StageStats:
    records: int = 0
    accepted: int = 0
    rejected: int = 0
    chunks: int = 0
    tokens: int = 0
    chars: int = 0
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    shards: list[dict[str, int]] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "shards"}
        return d


class ShardBuilder:
    """Collects chunk rows and flushes a shard when its token or chunk budget is reached."""

    def __init__(self, write: Callable[[int, list[dict[str, Any]]], None], shard_tokens: int,
                 max_chunks: int) -> None:
        self.write = write
        self.shard_tokens = shard_tokens
        self.max_chunks = max_chunks
        self.rows: list[dict[str, Any]] = []
        self.tokens = 0
        self.shards: list[dict[str, int]] = []

    def add(self, row: dict[str, Any]) -> None:
        if self.rows and (self.tokens + row["n_tokens"] > self.shard_tokens
                          or len(self.rows) >= self.max_chunks):
            self.flush()
        self.rows.append(row)
        self.tokens += row["n_tokens"]

    def flush(self) -> None:
        if not self.rows:
            return
        n = len(self.shards)
        # Sorted by length inside a shard: the worker's batches then need almost no padding.
        self.rows.sort(key=lambda r: r["n_tokens"])
        self.write(n, self.rows)
        self.shards.append({"shard": n, "chunks": len(self.rows), "tokens": self.tokens})
        self.rows, self.tokens = [], 0


def stage_corpus(
    records: Iterable[Record | Reject],
    tokenizer: Any,
    *,
    job: JobDir | None,
    max_tokens: int,
    overlap: int = 0,
    prefix: str = "",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    shard_max_chunks: int = DEFAULT_SHARD_MAX_CHUNKS,
    on_record: Callable[[StageStats], None] | None = None,
    on_chunk: Callable[[str], None] | None = None,
) -> StageStats:
    """Chunk every record and write shards into ``job`` (``job=None``: count only, dry run).

    ``on_chunk`` sees the exact text of every chunk (the dry run uses it to ask the cache).
    """
    stats = StageStats()
    seen: set[bytes] = set()
    rejects_file = None
    if job is not None:
        final_rejects = job.ingest_rejects_path
        final_rejects.parent.mkdir(parents=True, exist_ok=True)
        tmp_rejects = tmp_name(final_rejects)
        rejects_file = open(tmp_rejects, "wb")

    def write(n: int, rows: list[dict[str, Any]]) -> None:
        if job is not None:
            write_table(job.input_path(n), input_table(rows))

    builder = ShardBuilder(write, shard_tokens, shard_max_chunks)
    try:
        for rec in records:
            stats.records += 1
            if isinstance(rec, Record):
                try:
                    spans = chunk_document(rec.text, tokenizer, max_tokens=max_tokens,
                                           overlap=overlap, prefix=prefix)
                except ValueError as exc:  # e.g. one character that encodes past the window
                    rec = Reject(rec.line, rec.doc_id, f"cannot chunk: {exc}")
            if isinstance(rec, Reject):
                stats.rejected += 1
                if rejects_file is not None:
                    rejects_file.write(json.dumps(
                        {"line": rec.line, "doc_id": rec.doc_id, "reason": rec.reason},
                        ensure_ascii=False).encode() + b"\n")
                continue
            stats.accepted += 1
            stats.chars += len(rec.text)
            digest = hashlib.blake2b(rec.doc_id.encode("utf-8", "surrogatepass"),
                                     digest_size=8).digest()
            if digest in seen:
                stats.duplicate_ids += 1
                if len(stats.duplicate_examples) < DUPLICATE_EXAMPLES:
                    stats.duplicate_examples.append(rec.doc_id)
            seen.add(digest)
            for sp in spans:
                text = prefix + rec.text[sp.char_start:sp.char_end]
                if on_chunk is not None:
                    on_chunk(text)
                builder.add({
                    "line": rec.line, "doc_id": rec.doc_id, "chunk_index": sp.index,
                    "chunk_count": len(spans), "char_start": sp.char_start,
                    "char_end": sp.char_end, "n_tokens": sp.n_tokens, "text": text,
                    "text_sha256": text_sha256(text),
                })
                stats.chunks += 1
                stats.tokens += sp.n_tokens
            if on_record is not None:
                on_record(stats)
        builder.flush()
    finally:
        if rejects_file is not None:
            rejects_file.flush()
            os.fsync(rejects_file.fileno())
            rejects_file.close()
            os.replace(tmp_rejects, final_rejects)
    stats.shards = builder.shards
    return stats
