"""The staging ledger: which shards of which split are durably staged, up to which input point.

    OUT/<job>/_state/staging/split-SSSSS.jsonl          one checkpoint per line, append-only
    OUT/<job>/_state/staging/rejects-SSSSS-QQQQQ.jsonl  the records rejected in that segment

A split is staged in segments; a segment ends when a shard is flushed (or the split ends). Its
checkpoint is appended (and fsynced) only after the shard file and the segment's rejects file
are durable, so after a kill at any instant the last complete line says exactly where to
continue: read again from ``pos`` (the start of the record being chunked, whose first ``skip``
chunks are already in the shard) with line number ``line``. A torn last line is ignored and cut
off before the next append. A split has one writer at a time; a redelivered stage task may
repeat a segment, which then has the same content and is counted once (keyed by ``seq``).
In an object store (no append) that single writer rewrites the split's ledger object whole
with the new line, one PUT: a reader sees the ledger before or after it, never a torn line.

Shard numbers are ``split * SHARDS_PER_SPLIT + k``: fixed by the corpus and the settings, never
by timing or the number of staging processes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage.atomic import NO_SPACE, fsync_dir, write_bytes_atomic
from storage.errors import DiskFull
from storage.jobfs import StorePath

SHARDS_PER_SPLIT = 10_000
"""Shard numbers reserved per split. A 16 MB split of the shortest possible records (2,048
chunks per shard, >= 8 bytes per chunk) needs about 1,000."""

COUNTS = ("records", "accepted", "rejected", "chars", "chunks", "tokens", "bytes", "carried")


@dataclass(frozen=True)
class Checkpoint:
    """The end of one segment of a split. ``shard`` is None for a segment without chunks."""

    split: int
    seq: int
    shard: int | None
    pos: int  # where to read on: byte offset (JSONL/gzip) or row index (Parquet)
    line: int  # 1-based line (row) number of the record at ``pos``
    skip: int  # chunks of that record already staged
    done: bool  # the split is fully staged
    records: int = 0
    accepted: int = 0
    rejected: int = 0
    chars: int = 0
    chunks: int = 0
    tokens: int = 0
    bytes: int = 0  # input consumed by this segment
    carried: int = 0  # records carried over from a --since job (counted in accepted too)


def split_dir(root: Path) -> Path:
    return root / "_state" / "staging"


def ledger_path(root: Path, split: int) -> Path:
    return split_dir(root) / f"split-{split:05d}.jsonl"


def rejects_path(root: Path, split: int, seq: int) -> Path:
    return split_dir(root) / f"rejects-{split:05d}-{seq:05d}.jsonl"


def shard_number(split: int, k: int) -> int:
    if not 0 <= k < SHARDS_PER_SPLIT:
        raise ValueError(f"split {split} has more than {SHARDS_PER_SPLIT} shards; this is a bug "
                         "(splits are far smaller)")
    return split * SHARDS_PER_SPLIT + k


def read_split(root: Path, split: int) -> list[Checkpoint]:
    """The durable checkpoints of one split, in order, each ``seq`` once."""
    return _parse(ledger_path(root, split))[0]


def read_all(root: Path) -> dict[int, list[Checkpoint]]:
    """Checkpoints of every split that has a ledger file."""
    out: dict[int, list[Checkpoint]] = {}
    d = split_dir(root)
    for p in sorted(d.glob("split-*.jsonl")) if d.is_dir() else []:
        out[int(p.stem.split("-")[1])] = _parse(p)[0]
    return out


def append(root: Path, cp: Checkpoint, rejects: list[bytes]) -> None:
    """Make the segment's rejects durable, then append its checkpoint (fsynced).

    Raises:
        DiskFull: no space left for the rejects file or the line (naming that file); the
            ledger is left as it was, so the segment is staged again on resume.
    """
    path = ledger_path(root, cp.split)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rejects:
        write_bytes_atomic(rejects_path(root, cp.split, cp.seq), b"".join(rejects))
    existing, good = _parse(path)
    if any(c.seq == cp.seq for c in existing):
        return  # a repeated segment (redelivered task): same content, counted once
    line = json.dumps(asdict(cp), sort_keys=True).encode() + b"\n"
    if isinstance(path, StorePath):  # no append: its single writer PUTs the whole ledger
        old = path.read_bytes()[:good] if good else b""
        write_bytes_atomic(path, old + line)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if os.fstat(fd).st_size != good:
            os.ftruncate(fd, good)  # a torn line from a killed writer
        try:
            view = memoryview(line)
            while view:  # a full disk may take part of the line first
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, good)  # no torn line left behind, nothing half-recorded
            if exc.errno in NO_SPACE:
                raise DiskFull(exc.errno, "no space left on device appending to this staging "
                               "ledger (free space on its filesystem, then resume the job)",
                               str(path)) from exc
            raise
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def reject_files(root: Path) -> list[Path]:
    """Every segment's rejects file, in (split, seq) order: input order."""
    d = split_dir(root)
    return sorted(d.glob("rejects-*.jsonl")) if d.is_dir() else []


def totals(ledgers: dict[int, list[Checkpoint]]) -> dict[str, Any]:
    """Sums over all segments, plus shards staged and splits done."""
    out: dict[str, Any] = {k: 0 for k in COUNTS}
    out["shards"] = out["splits_done"] = 0
    for cps in ledgers.values():
        for cp in cps:
            for k in COUNTS:
                out[k] += getattr(cp, k)
            out["shards"] += cp.shard is not None
        out["splits_done"] += bool(cps and cps[-1].done)
    return out


def _parse(path: Path) -> tuple[list[Checkpoint], int]:
    """(checkpoints, byte length of the complete lines): stops at a torn or garbled line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    cps: list[Checkpoint] = []
    seen: set[int] = set()
    good = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
        try:
            cp = Checkpoint(**json.loads(line))
        except (ValueError, TypeError):
            break
        good += len(line) + 1
        if cp.seq not in seen:
            seen.add(cp.seq)
            cps.append(cp)
    return cps, good
