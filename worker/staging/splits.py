"""Stage 3: cut a corpus file into splits that can be read (and resumed) alone.

JSONL: byte ranges of about ``split_bytes``, each starting at a line start. One pass over the
file (about 1 GB/s) finds the boundaries, counts the newlines before each (so line numbers in
rejects stay exact) and computes the checksum the manifest records. A line longer than a split
just makes the split longer: a boundary is never inside a line. Parquet: whole row groups.
Gzip cannot be cut without decompressing: the plan decompresses once to find the same line
boundaries in the decompressed stream, and while staging one reader decompresses again and
hands each split's bytes to a staging process (``gzip_blocks``).

The corpus may be an object URI (``s3://bucket/corpus.jsonl``): a split is then a ranged read
of its bytes, Parquet row groups are ranged reads, the plan's pass streams the object
(``storage.objread``); nothing is downloaded before staging starts.

The plan depends only on the file and ``split_bytes``, never on the number of processes, so
the same corpus and settings always give the same shards.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from storage.objread import open_parquet, open_range, read_head
from storage.objstore import redact
from worker.staging.corpus import (Record, Reject, file_checksum, iter_lines, iter_parquet_rows,
                                   judge_record, parse_line)

DEFAULT_SPLIT_BYTES = 16 * 2**20
"""Input bytes per split: 16 MB is ~10 s of staging per process, so splits balance across
processes and a killed stage task redoes little; a 1 GB corpus gives 64 splits."""

MIN_SPLIT_BYTES = 2**20
SPLITS_PER_CORPUS = 32


def auto_split_bytes(size: int) -> int:
    """The default split size for a corpus of ``size`` bytes: ``DEFAULT_SPLIT_BYTES``, less for
    a corpus under 512 MiB (about ``SPLITS_PER_CORPUS`` splits, at least 1 MiB), so staging
    processes share a mid-size corpus evenly: 98 MB in 7 splits left one of two processes idle
    for the last one (benchmarks/staging.py). From the size alone, never the process count: the
    same corpus gives the same shards. A gzip corpus is cut by its compressed size.

    >>> auto_split_bytes(10**9) == DEFAULT_SPLIT_BYTES, auto_split_bytes(98 * 10**6)
    (True, 3062500)
    >>> auto_split_bytes(10_000)
    1048576
    """
    return int(min(DEFAULT_SPLIT_BYTES, max(MIN_SPLIT_BYTES, size // SPLITS_PER_CORPUS)))


_BLOCK = 1 << 20


@dataclass(frozen=True)
class Split:
    """``kind`` jsonl/gzip: ``[start, end)`` are byte offsets (end -1: to EOF, gzip);
    parquet: row indices, ``groups`` the row groups. ``first_line``: line number at start."""

    index: int
    kind: str
    start: int
    end: int
    first_line: int
    groups: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "groups": list(self.groups)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        return cls(**{**d, "groups": tuple(d.get("groups", ()))})


def corpus_kind(path: str | Path) -> str:
    path = os.fspath(path)
    magic = read_head(path, 4)
    if path.endswith(".parquet") or magic == b"PAR1":
        return "parquet"
    return "gzip" if path.endswith(".gz") or magic[:2] == b"\x1f\x8b" else "jsonl"


def plan_splits(path: str | Path, split_bytes: int = DEFAULT_SPLIT_BYTES
                ) -> tuple[list[Split], str]:
    """Return ``(splits, sha256 hex of the file)``.

    Raises:
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    kind = corpus_kind(path)
    if kind == "jsonl":
        planner = Planner(path, split_bytes)
        return list(planner), planner.digest
    if kind == "gzip":  # one pass: the compressed bytes are hashed as they are decompressed
        with open_range(path) as raw:
            hashed = _Hashing(raw)
            try:
                with gzip.open(hashed, "rb") as f:
                    plan = list(_plan_lines(f, split_bytes, "gzip", hashlib.sha256()))
            except EOFError as exc:
                raise OSError(f"{redact(path)}: compressed stream is truncated ({exc})"
                              ) from exc
            return plan, hashed.hexdigest()
    return _plan_parquet(path, split_bytes), file_checksum(path)


def gzip_blocks(path: str | Path, splits: list[Split]) -> Iterator[tuple[Split, bytes]]:
    """One pass of decompression: each wanted split's bytes, in order (a split at a time in
    memory, ``split_bytes`` plus its last line)."""
    with open_range(path) as raw, gzip.open(raw, "rb") as f:
        pos = 0
        for s in sorted(splits, key=lambda s: s.start):
            _skip(f, s.start - pos)
            data = f.read(s.end - s.start)
            pos = s.start + len(data)
            yield s, data


def iter_split(path: str | Path, split: Split, pos: int, line: int, *, text_field: str,
               id_field: str, max_line_bytes: int, data: bytes | None = None
               ) -> Iterator[tuple[int, Record | Reject]]:
    """Yield ``(position, record)`` from ``pos`` (at line/row ``line``) to the split's end.
    ``data``: the split's bytes already read (gzip), else the file is read.

    Raises:
        OSError: the file cannot be read (a truncated gzip stream included).
    """
    if split.kind == "parquet":
        for row, rec in iter_parquet_rows(path, text_field, id_field, max_line_bytes,
                                          row_groups=list(split.groups),
                                          first_row=split.start):
            if row >= pos:
                yield row, rec
        return
    if data is not None:
        raw: Any = io.BytesIO(data[pos - split.start:])
    else:  # an object: a ranged read of the split's bytes (gzip: the whole stream)
        raw = open_range(path) if split.kind == "gzip" else open_range(path, pos, split.end)
    f = gzip.open(raw, "rb") if data is None and split.kind == "gzip" else raw
    with raw, f:
        try:
            if data is None and split.kind == "gzip":
                _skip(f, pos)
            end = split.end
            for no, data, size, off in iter_lines(f, max_line_bytes, first_line=line,
                                                   start=pos, end=end):
                rec = _judge_line(no, data, size, max_line_bytes, text_field, id_field)
                if rec is not None:
                    yield off, rec
        except EOFError as exc:  # gzip raises EOFError, not OSError, for a cut-off stream
            raise OSError(f"{redact(path)}: compressed stream is truncated ({exc})") from exc


class Planner:
    """The plan as an iterator: each split is yielded as soon as its end is found (the first
    after reading ``split_bytes``; Parquet: every split, from the footer), so staging starts
    before the whole file is read; ``digest`` (SHA-256 of the file) is set once the iterator
    is exhausted."""

    def __init__(self, path: str | Path, split_bytes: int = DEFAULT_SPLIT_BYTES) -> None:
        self.path, self.split_bytes = os.fspath(path), split_bytes
        self.digest = ""

    def __iter__(self) -> Iterator[Split]:
        kind = corpus_kind(self.path)
        if kind == "parquet":
            yield from _plan_parquet(self.path, self.split_bytes)
            self.digest = file_checksum(self.path)
            return
        if kind != "jsonl":
            splits, self.digest = plan_splits(self.path, self.split_bytes)
            yield from splits
            return
        digest = hashlib.sha256()
        with open_range(self.path) as f:
            yield from _plan_lines(f, self.split_bytes, kind, digest)
        self.digest = digest.hexdigest()


def _plan_lines(f: Any, split_bytes: int, kind: str, digest: Any) -> Iterator[Split]:
    start, line = 0, 1  # the open split: its first byte and first line number
    pos = newlines = 0
    target = split_bytes
    k = 0
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
        j = max(0, target - pos)
        while j < len(block):
            i = block.find(b"\n", j)  # the first line start at or after the target
            if i < 0:
                break
            cut = pos + i + 1
            yield Split(k, kind, start, cut, line)
            k, start, line = k + 1, cut, newlines + block.count(b"\n", 0, i + 1) + 1
            target = cut + split_bytes
            j = max(i + 1, target - pos)
        newlines += block.count(b"\n")
        pos += len(block)
    if pos > start or k == 0:  # the rest (a cut at the very end leaves nothing)
        yield Split(k, kind, start, pos, line)


def _plan_parquet(path: str, split_bytes: int) -> list[Split]:
    md = open_parquet(path).metadata
    splits: list[Split] = []
    groups: list[int] = []
    row = first = size = 0
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        groups.append(g)
        row += rg.num_rows
        size += rg.total_byte_size
        if size >= split_bytes or g == md.num_row_groups - 1:
            splits.append(Split(len(splits), "parquet", first, row, first + 1, tuple(groups)))
            groups, first, size = [], row, 0
    return splits or [Split(0, "parquet", 0, 0, 1)]


class _Hashing:
    """A reader that hashes what is read through it (then the rest, on ``hexdigest``)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.digest = raw, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        return data

    def hexdigest(self) -> str:
        for block in iter(lambda: self.read(_BLOCK), b""):
            pass
        return self.digest.hexdigest()


def _skip(stream: Any, n: int) -> None:
    while n > 0:
        data = stream.read(min(n, _BLOCK))
        if not data:
            return
        n -= len(data)


def _judge_line(line_no: int, data: bytes | None, size: int, cap: int, text_field: str,
               id_field: str) -> Record | Reject | None:
    """One JSONL line (from ``iter_lines``) as a Record or Reject; None for a blank line."""
    if data is None:
        return Reject(line_no, None, f"line is {size} bytes, over the cap of {cap} bytes")
    if not data.strip():
        return None
    return judge_record(line_no, partial(parse_line, data), text_field, id_field)
