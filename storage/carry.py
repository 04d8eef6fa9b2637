"""``--since`` (issue 27): a delta job's carried-over rows and its change list.

    OUT/<job>/embeddings/part-NNNNN.parquet  carried shards: rows of unchanged documents copied
                                             from the base job's output (vector bytes equal),
                                             ``line`` set to the new corpus line; numbered after
                                             every split's range (CARRY_SPLIT_OFFSET)
    OUT/<job>/metrics/part-NNNNN.parquet     a carried shard's: no rows (no inference batch)
    OUT/<job>/delta/changes.parquet          doc_id, change (added/changed/deleted), line

``settle`` runs when staging completes (before ``staged`` is set), so a killed producer's
re-run writes the same files again (everything here depends only on the ledger's records and
the base job's files). A carried shard has no input shard and no task: it exists and validates
(rows + rejected = the manifest's chunks) before the manifest lists it, so the job is complete
(every current document) and readers, validation and ``producer load`` treat it like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import ledger
from storage.docindex import read_index
from storage.jobfs import job_path
from storage.manifest import Manifest, ShardEntry
from storage.shards import metrics_table, shard_name, write_table

CHANGES = Path("delta") / "changes.parquet"
CHANGES_SCHEMA = pa.schema([
    pa.field("doc_id", pa.string()),
    pa.field("change", pa.string()),  # added, changed, deleted
    pa.field("line", pa.int64()),     # in the new corpus; null for a deleted document
])
ROW_KEYS = ("max_tokens", "overlap", "prefix")
"""Chunking settings that change rows (shard sizes and field names do not)."""


def base_mismatch(base: Manifest, chunking: dict[str, Any], fingerprints: dict[str, str],
                  outputs: list[str]) -> str | None:
    """Why the base job's rows cannot be carried over into a job with these settings."""
    old = base.model.get("fingerprints") or {}
    if old != fingerprints:
        return (f"model differs: base job {base.job_id} has fingerprints {old}, "
                f"this job {fingerprints}")
    for k in ROW_KEYS:
        if base.chunking.get(k) != chunking.get(k):
            return (f"chunking differs: base job {base.job_id} has {k}={base.chunking.get(k)!r}, "
                    f"this job {k}={chunking.get(k)!r}")
    if list(base.outputs or ["dense"]) != list(outputs):
        return f"outputs differ: base job {base.job_id} has {base.outputs}, this job {outputs}"
    return None


def first_carry_shard(root: Path) -> int:
    """Carried shards are numbered after every split's shard range."""
    splits = ledger.read_all(root)
    return (max(splits, default=-1) + 1) * ledger.SHARDS_PER_SPLIT


def settle(root: Path, m: Manifest, kept: pa.Table) -> tuple[list[ShardEntry], dict[str, int]]:
    """Write the carried shards and the change list; return the shards and the counts."""
    base = job_path(m.delta["since"])  # type: ignore[index]
    index = read_index(base)
    entries = _carry(root, base, index, kept.filter(kept["carried"]),
                     int(m.chunking.get("shard_max_chunks") or 2048))
    counts = _changes(root, index, kept)
    counts["carried_rows"] = sum(e.chunks for e in entries)
    return entries, counts


def _carry(root: Path, base: Path, index: pa.Table, carried: pa.Table,
           max_rows: int) -> list[ShardEntry]:
    """Copy the carried documents' rows, base shard by base shard, ``max_rows`` per shard."""
    new_line = dict(zip(carried["doc_id"].to_pylist(), carried["line"].to_pylist(), strict=True))
    wanted = index.filter(pc.is_in(index["doc_id"], value_set=carried["doc_id"]))
    next_shard, entries = first_carry_shard(root), []
    buf: list[pa.Table] = []

    def flush() -> None:
        nonlocal next_shard, buf
        table = pa.concat_tables(buf)
        write_table(root / "metrics" / shard_name(next_shard), metrics_table([]))  # no batches
        write_table(root / "embeddings" / shard_name(next_shard), table,
                    {"rejected": 0, "carried_from": base.name})
        entries.append(ShardEntry(next_shard, table.num_rows,
                                  int(pc.sum(table["n_tokens"]).as_py() or 0)))
        next_shard, buf = next_shard + 1, []

    for shard in sorted(set(wanted["shard"].to_pylist())):
        rows = wanted.filter(pc.equal(wanted["shard"], shard))
        t = pq.read_table(base / "embeddings" / shard_name(shard))
        t = t.filter(pc.is_in(t["line"], value_set=rows["line"]))
        lines = pa.array([new_line[d] for d in t["doc_id"].to_pylist()], type=pa.int64())
        t = t.set_column(t.schema.get_field_index("line"), "line", lines)
        while t.num_rows:
            room = max_rows - sum(b.num_rows for b in buf)
            buf.append(t.slice(0, room))
            t = t.slice(room)
            if sum(b.num_rows for b in buf) >= max_rows:
                flush()
    if buf:
        flush()
    return entries


def _changes(root: Path, index: pa.Table, kept: pa.Table) -> dict[str, int]:
    base = dict(zip(index["doc_id"].to_pylist(), index["doc_sha256"].to_pylist(), strict=True))
    ids, lines, carried = (kept[c].to_pylist() for c in ("doc_id", "line", "carried"))
    out: dict[str, list[Any]] = {"doc_id": [], "change": [], "line": []}
    counts = {"added": 0, "changed": 0, "deleted": 0, "unchanged": 0}
    for doc_id, line, c in zip(ids, lines, carried, strict=True):
        change = "unchanged" if c else "changed" if doc_id in base else "added"
        counts[change] += 1
        if change != "unchanged":
            out["doc_id"].append(doc_id)
            out["change"].append(change)
            out["line"].append(line)
    for doc_id in sorted(set(base) - set(ids)):
        counts["deleted"] += 1
        out["doc_id"].append(doc_id)
        out["change"].append("deleted")
        out["line"].append(None)
    (root / CHANGES).parent.mkdir(exist_ok=True)
    write_table(root / CHANGES, pa.Table.from_pydict(out, schema=CHANGES_SCHEMA))
    return counts


def read_changes(root: Path) -> pa.Table:
    return pq.read_table(job_path(root) / CHANGES, schema=CHANGES_SCHEMA)

