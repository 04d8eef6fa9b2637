"""Documents as keys (issue 27): each accepted record's id and text hash, duplicate ids, and the
per-job document index a later ``--since`` job reads.

    OUT/<job>/_state/staging/docs-SSSSS-QQQQQ.parquet  the records one staging segment accepted
    OUT/<job>/_state/duplicates.jsonl                  rejects of repeated ids (complete-staging)
    OUT/<job>/_state/excluded-lines.json               their lines: rows dropped at finalize
    OUT/<job>/docs/index.parquet                       finalize: doc_id, line, doc_sha256,
                                                       shard, rows (one row per doc and shard)

Staging runs splits in parallel processes, so a repeated id is found when staging completes:
every segment's docs file is read (only segments the ledger recorded), the winner of each id is
the record with the lowest line (``--on-duplicate-id reject``) or the highest (``last``), and
the others become rejects naming both lines. Their chunks may already be embedded: finalize
drops those rows from the output shards and counts them in the shard's ``rejected`` metadata,
so a shard stays valid (rows + rejected = staged chunks) and a repeated finalize is a no-op.

The text hash is of the record's text exactly as read (not whitespace-normalised): carried-over
rows keep ``char_start``/``char_end`` into that text, which a whitespace edit would shift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import ledger
from storage.atomic import write_bytes_atomic, write_json_atomic
from storage.jobfs import job_path
from storage.shards import read_metadata, write_table

POLICIES = ("reject", "last")
DOCS_SCHEMA = pa.schema([
    pa.field("line", pa.int64()),
    pa.field("doc_id", pa.string()),
    pa.field("doc_sha256", pa.string()),
    pa.field("carried", pa.bool_()),  # rows carried over from the --since job, not staged
])
INDEX_SCHEMA = pa.schema([
    pa.field("doc_id", pa.string()),
    pa.field("line", pa.int64()),
    pa.field("doc_sha256", pa.string()),
    pa.field("shard", pa.int32()),
    pa.field("rows", pa.int32()),
])
INDEX = Path("docs") / "index.parquet"


def doc_sha256(text: str) -> str:
    """sha256 hex of a record's text as read (UTF-8, no prefix, no normalisation)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def docs_path(root: Path, split: int, seq: int) -> Path:
    return ledger.split_dir(root) / f"docs-{split:05d}-{seq:05d}.parquet"


def write_segment_docs(root: Path, split: int, seq: int,
                       docs: list[tuple[int, str, str, bool]]) -> None:
    """The accepted records of one segment (before its checkpoint is appended)."""
    cols = list(zip(*docs, strict=True)) if docs else [[], [], [], []]
    write_table(docs_path(root, split, seq),
                pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(cols, DOCS_SCHEMA)],
                                     schema=DOCS_SCHEMA))


def read_docs(root: Path) -> pa.Table:
    """Every accepted record of the job, by line (only segments the ledger recorded)."""
    parts = [pq.read_table(p, schema=DOCS_SCHEMA)
             for split, cps in sorted(ledger.read_all(root).items()) for cp in cps
             if (p := docs_path(root, split, cp.seq)).is_file()]
    if not parts:
        return DOCS_SCHEMA.empty_table()
    return pa.concat_tables(parts).sort_by("line")


def winners(docs: pa.Table, policy: str) -> tuple[pa.Table, list[dict[str, object]]]:
    """The records kept (one per id) and a reject per repeated id naming both lines."""
    if policy not in POLICIES:
        raise ValueError(f"--on-duplicate-id {policy!r}: use reject or last")
    lines, ids = docs["line"].to_pylist(), docs["doc_id"].to_pylist()
    keep: dict[str, int] = {}
    losers: list[dict[str, object]] = []
    for i, (line, doc_id) in enumerate(zip(lines, ids, strict=True)):
        j = keep.get(doc_id)
        if j is None:
            keep[doc_id] = i
            continue
        first = lines[j]
        if policy == "reject":
            losers.append({"line": line, "doc_id": doc_id, "reason":
                           f"duplicate id {doc_id!r}: line {line} repeats the id of line "
                           f"{first}, which is kept (--on-duplicate-id reject)"})
        else:
            keep[doc_id] = i
            losers.append({"line": first, "doc_id": doc_id, "reason":
                           f"duplicate id {doc_id!r}: line {first} is replaced by line {line}, "
                           "which is kept (--on-duplicate-id last)"})
    losers.sort(key=lambda r: r["line"])  # type: ignore[arg-type, return-value]
    mask = pa.array(sorted(keep.values()), type=pa.int64())
    return docs.take(mask), losers


def record_duplicates(root: Path, losers: list[dict[str, object]]) -> None:
    """The duplicates' rejects and excluded lines (written before ``staged`` is set)."""
    state = root / "_state"
    write_bytes_atomic(state / "duplicates.jsonl", b"".join(
        json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in losers))
    write_json_atomic(state / "excluded-lines.json", sorted(int(r["line"]) for r in losers))  # type: ignore[call-overload]


def excluded_lines(root: Path) -> set[int]:
    p = root / "_state" / "excluded-lines.json"
    return set(json.loads(p.read_text())) if p.is_file() else set()


def drop_excluded(root: Path, shard_paths: Iterable[Path]) -> int:
    """Remove the excluded lines' rows from the output shards (idempotent); rows dropped."""
    lines = excluded_lines(root)
    if not lines:
        return 0
    drop = pa.array(sorted(lines), type=pa.int64())
    dropped = 0
    for path in shard_paths:
        if "line" not in pq.read_schema(path).names:
            continue
        hit = pc.is_in(pq.read_table(path, columns=["line"])["line"], value_set=drop)
        n = pc.sum(hit).as_py() or 0
        if not n:
            continue
        table = pq.read_table(path)
        rejected = int(read_metadata(path).get("rejected", "0")) + n
        write_table(path, table.filter(pc.invert(hit)), {"rejected": rejected})
        dropped += n
    return dropped


def write_index(root: Path, shard_paths: dict[int, Path], bad_lines: set[int]) -> None:
    """``docs/index.parquet``: every document fully in the output (a document with a chunk a
    worker rejected is left out, so a later ``--since`` embeds it again)."""
    docs = read_docs(root)
    sha = dict(zip(docs["line"].to_pylist(), docs["doc_sha256"].to_pylist(), strict=True))
    rows: dict[str, list[object]] = {f.name: [] for f in INDEX_SCHEMA}
    for shard, path in sorted(shard_paths.items()):
        t = pq.read_table(path, columns=["doc_id", "line"])
        if t.num_rows == 0:
            continue
        g = t.group_by(["line", "doc_id"]).aggregate([("line", "count")])
        for line, doc_id, n in zip(g["line"].to_pylist(), g["doc_id"].to_pylist(),
                                   g["line_count"].to_pylist(), strict=True):
            if line in bad_lines or line not in sha:
                continue
            for k, v in (("doc_id", doc_id), ("line", line), ("doc_sha256", sha[line]),
                         ("shard", shard), ("rows", n)):
                rows[k].append(v)
    table = pa.Table.from_pydict(rows, schema=INDEX_SCHEMA).sort_by([("line", "ascending"),
                                                                     ("shard", "ascending")])
    (root / INDEX).parent.mkdir(exist_ok=True)
    write_table(root / INDEX, table)


def read_index(root: Path) -> pa.Table:
    return pq.read_table(job_path(root) / INDEX, schema=INDEX_SCHEMA)


@lru_cache(maxsize=2)
def previous_hashes(root: str) -> dict[str, str]:
    """doc_id -> text hash of a finished job's index (read once per staging process)."""
    t = read_index(job_path(root))
    return dict(zip(t["doc_id"].to_pylist(), t["doc_sha256"].to_pylist(), strict=True))
