"""Stage 3: chunk one split's records into shards under a token budget, each durably recorded.

Streams: records come in one at a time, chunks are buffered only until a shard is full, so
memory does not grow with the corpus or the split. Each flushed shard is written
(``input/part-NNNNN.parquet``), then its segment is appended to the ledger
(``storage.ledger``), then ``on_shard`` is told (the caller sends the shard's task). A staging
process killed at any instant is continued from the last checkpoint with the same result:
shard contents depend only on the records and the settings (rows sorted by length, stable).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.staging import faults
from worker.staging.chunking import chunk_budget, chunk_with_ids, id_wrap, is_short
from worker.staging.fastcount import is_fast
from worker.staging.tokenwise import BATCH_CHARS, additivity, encode_ids, token_starts_batch
from worker.staging.corpus import DEFAULT_MAX_LINE_BYTES, Record, Reject
from storage import docindex, ledger
from storage.docindex import doc_sha256
from storage.hashing import text_sha256
from storage.ledger import Checkpoint
from storage.jobdir import JobDir
from storage.shards import input_table, write_table

DEFAULT_SHARD_TOKENS = 32768
"""Real tokens per task: small enough to finish in well under a minute on one CPU worker."""
DEFAULT_SHARD_MAX_CHUNKS = 2048
COUNT_BATCH = 64
"""Short records counted per ``encode_batch`` call."""


@dataclass(frozen=True)
class StageConfig:
    """Everything a staging process needs (plain data: it crosses process boundaries)."""

    bundle_path: str
    max_tokens: int
    overlap: int = 0
    prefix: str = ""
    text_field: str = "text"
    id_field: str = "id"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    shard_tokens: int = DEFAULT_SHARD_TOKENS
    shard_max_chunks: int = DEFAULT_SHARD_MAX_CHUNKS
    fast_tokenizer: bool = True
    """Count short documents with nanotoken where it matches (EMBED_FAST_TOKENIZER; a setting
    of the process that stages, not of the job: never recorded in the manifest)."""
    since: str = ""
    """A finished job's directory (``--since``): records whose id and text hash its document
    index holds are carried over, not chunked (empty: none)."""


DOCS_PER_SEGMENT = 50_000
"""A segment of carried-over records is cut here (their list is held until the checkpoint)."""


@dataclass(frozen=True)
class Carried:
    """A record whose id and text hash match the ``--since`` job: its rows are copied."""

    line: int
    doc_id: str
    sha: str
    chars: int


class _Segment:
    """Counts and rejects of the records finished since the last checkpoint."""

    def __init__(self, pos: int) -> None:
        self.start = pos
        self.records = self.accepted = self.rejected = self.chars = 0
        self.rejects: list[bytes] = []
        self.docs: list[tuple[int, str, str, bool]] = []  # line, id, text hash, carried

    def accept(self, line: int, doc_id: str, sha: str, chars: int, carried: bool) -> None:
        self.records += 1
        self.accepted += 1
        self.chars += chars
        self.docs.append((line, doc_id, sha, carried))

    def reject(self, rec: Reject) -> None:
        self.records += 1
        self.rejected += 1
        self.rejects.append(json.dumps({"line": rec.line, "doc_id": rec.doc_id,
                                        "reason": rec.reason}, ensure_ascii=False).encode()
                            + b"\n")


def stage_split(
    records: Iterable[tuple[int, Record | Reject]],
    tokenizer: Any,
    cfg: StageConfig,
    *,
    split: int,
    end: int,
    root: Path | None,
    resume: Checkpoint | None = None,
    start: int = 0,
    on_shard: Callable[[Checkpoint], None] | None = None,
    on_chunk: Callable[[str], None] | None = None,
    on_record: Callable[[Record], None] | None = None,
) -> list[Checkpoint]:
    """Stage ``records`` (``(position, record)`` from the split's resume point to ``end``).

    ``root=None`` counts only (the dry run). ``resume`` is the split's last durable checkpoint:
    its record's first ``skip`` chunks are already staged. Returns the new checkpoints; the
    last one has ``done=True``.
    """
    seq = resume.seq + 1 if resume else 0
    k = resume_shards(root, split) if resume else 0
    skip = resume.skip if resume else 0
    seg = _Segment(resume.pos if resume else start)
    rows: list[dict[str, Any]] = []
    tokens = 0
    out: list[Checkpoint] = []

    def flush(pos: int, line: int, skip_at: int, done: bool) -> None:
        nonlocal seq, k, rows, tokens, seg
        shard = None
        if rows:
            shard = ledger.shard_number(split, k)
            rows.sort(key=lambda r: r["n_tokens"])  # the worker's batches then barely pad
            if root is not None:
                faults.hit("mid_shard_write", lambda: _partial_write(root, shard))
                write_table(JobDir(root).input_path(shard), input_table(rows))
            k += 1
        if root is not None:
            docindex.write_segment_docs(root, split, seq, seg.docs)
        cp = Checkpoint(split, seq, shard, pos, line, skip_at, done, seg.records, seg.accepted,
                        seg.rejected, seg.chars, len(rows), tokens, pos - seg.start,
                        sum(d[3] for d in seg.docs))
        if root is not None:
            ledger.append(root, cp, seg.rejects)
            if shard is not None:
                faults.hit("after_record")
        if on_shard is not None:
            on_shard(cp)
        faults.pause("slow_shard")
        out.append(cp)
        seq += 1
        rows, tokens, seg = [], 0, _Segment(pos)

    budget = chunk_budget(tokenizer, cfg.max_tokens, None, cfg.prefix)
    add = additivity(tokenizer, cfg.prefix)
    wrap = id_wrap(tokenizer, cfg.prefix, add)
    marked = _marked(records, docindex.previous_hashes(cfg.since) if cfg.since else None)
    for pos, rec, ids, pre in _counted(marked, tokenizer, cfg, add):
        if len(seg.docs) >= DOCS_PER_SEGMENT and not skip:
            flush(pos, rec.line, 0, False)
        if isinstance(rec, Carried):
            seg.accept(rec.line, rec.doc_id, rec.sha, rec.chars, True)
            continue
        if isinstance(rec, Record):
            try:
                spans, from_doc = chunk_with_ids(
                    rec.text, tokenizer, wrap=wrap, max_tokens=cfg.max_tokens,
                    overlap=cfg.overlap, prefix=cfg.prefix, budget=budget,
                    whole=None if ids is None else len(ids), add=add, pre=pre)
            except ValueError as exc:  # e.g. one character that encodes past the window
                rec = Reject(rec.line, rec.doc_id, f"cannot chunk: {exc}")
        if isinstance(rec, Reject):
            seg.reject(rec)
            continue
        if on_record is not None:
            on_record(rec)
        chunk_ids = _chunk_ids(rec.text, spans, ids, from_doc, tokenizer, cfg.prefix)
        for sp in spans[skip:]:
            if rows and (tokens + sp.n_tokens > cfg.shard_tokens
                         or len(rows) >= cfg.shard_max_chunks):
                flush(pos, rec.line, sp.index, False)
            text = cfg.prefix + rec.text[sp.char_start:sp.char_end]
            if on_chunk is not None:
                on_chunk(text)
            rows.append({
                "line": rec.line, "doc_id": rec.doc_id, "chunk_index": sp.index,
                "chunk_count": len(spans), "char_start": sp.char_start,
                "char_end": sp.char_end, "n_tokens": sp.n_tokens, "text": text,
                "text_sha256": text_sha256(text),
                "input_ids": chunk_ids[sp.index],
            })
            tokens += sp.n_tokens
        skip = 0
        seg.accept(rec.line, rec.doc_id, doc_sha256(rec.text), len(rec.text), False)
    flush(end if end >= 0 else seg.start, 0, 0, True)  # gzip: its end is not known ahead
    return out


def _marked(records: Iterable[tuple[int, Record | Reject]], prev: dict[str, str] | None
            ) -> Iterator[tuple[int, Record | Reject | Carried]]:
    """Records whose id and text hash the ``--since`` job holds become ``Carried``."""
    if prev is None:
        yield from records
        return
    for pos, rec in records:
        if isinstance(rec, Record) and rec.doc_id in prev:
            sha = doc_sha256(rec.text)
            if prev[rec.doc_id] == sha:
                yield pos, Carried(rec.line, rec.doc_id, sha, len(rec.text))
                continue
        yield pos, rec


def _counted(records: Iterable[tuple[int, Any]], tokenizer: Any, cfg: StageConfig,
             add: Any) -> Iterator[tuple[int, Any, list[int] | None, Any]]:
    """Records with the whole-text token ids of the short ones, encoded 64 at a time, and the
    token starts of those to chunk (``token_starts_batch``: together)."""
    group: list[tuple[int, Any]] = []
    for item in records:
        group.append(item)
        if len(group) == COUNT_BATCH:
            yield from _count_group(group, tokenizer, cfg, add)
            group = []
    yield from _count_group(group, tokenizer, cfg, add)


def _count_group(group: list[tuple[int, Any]], tokenizer: Any, cfg: StageConfig, add: Any
                 ) -> Iterator[tuple[int, Any, list[int] | None, Any]]:
    short = [i for i, (_, r) in enumerate(group)
             if isinstance(r, Record) and is_short(r.text, cfg.max_tokens)]
    counts = dict(zip(short, encode_ids([group[i][1].text for i in short],  # type: ignore[union-attr]
                                        tokenizer, cfg.prefix), strict=True))
    chunk = [i for i, (_, r) in enumerate(group) if isinstance(r, Record)
             and len(r.text) <= BATCH_CHARS  # a longer one: its own, when it is chunked
             and (i not in counts or len(counts[i]) > cfg.max_tokens)]
    pre = dict(zip(chunk, token_starts_batch([group[i][1].text for i in chunk], tokenizer,
                                             add.splits, fast=not add.verify_all), strict=True))
    for i, (pos, rec) in enumerate(group):
        yield pos, rec, counts.get(i), pre.get(i)


def _chunk_ids(text: str, spans: list[Any], whole: list[int] | None,
               from_doc: list[list[int] | None], tokenizer: Any, prefix: str
               ) -> list[list[int] | None]:
    """The ids to keep per chunk: the whole text's for a one-chunk document; for a long one,
    the document's own ids over the chunk (``chunk_with_ids``) or, for the rest, each chunk
    encoded when the fast encoder makes that cheap (else None: the worker encodes)."""
    if len(spans) == 1 and whole is not None:
        return [whole]
    out = list(from_doc)
    todo = [i for i, x in enumerate(out) if x is None]
    if not todo or not is_fast(tokenizer):
        return out
    found = encode_ids([text[spans[i].char_start:spans[i].char_end] for i in todo], tokenizer,
                       prefix)
    for i, x in zip(todo, found, strict=True):
        out[i] = x if len(x) == spans[i].n_tokens else None
    return out


def resume_shards(root: Path | None, split: int) -> int:
    """Shards the split's ledger already holds (the next one's number within the split)."""
    if root is None:
        return 0
    return sum(cp.shard is not None for cp in ledger.read_split(root, split))


def _partial_write(root: Path, shard: int) -> None:
    """The failpoint's half-written shard: a temporary file, as a killed writer leaves it."""
    from storage.atomic import tmp_name

    final = JobDir(root).input_path(shard)
    if not isinstance(final, Path):  # an object store: an upload cut short leaves no object
        return
    tmp_name(final).write_bytes(b"PAR1 half a shard")
