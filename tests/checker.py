"""A Jepsen-style checker for a finished job directory.

Every chunk the producer staged (``input/part-NNNNN.parquet``: one row per (doc_id, chunk_index))
is classified against what the workers left behind:

    ok          embedded exactly once (one row in ``embeddings/*.parquet``)
    rejected    not embedded, listed in ``rejects.jsonl`` with a reason (a quarantined chunk)
    failed      not embedded because its whole shard is marked failed (``_state/failed``)
    lost        none of the above: the system dropped it
    duplicated  more rows (or row + reject) than staged copies
    unexpected  a row nobody staged, or a row in the wrong shard file

Keys are multisets: ``(doc_id, chunk_index, text_sha256)`` may be staged more than once and must
then appear as many times. A record rejected for a repeated id (issue 27) may have been staged
before the check that rejects it: its lines (``_state/excluded-lines.json``) count as not staged,
and a row of one in the output is unexpected. Vectors are checked too: finite, and unit-norm within ``norm_tol``.

    res = check_job(job_dir)
    assert res.clean, res.describe()
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from storage.docindex import excluded_lines
from storage.jobfs import job_path

Key = tuple[str, int, str]  # (doc_id, chunk_index, text_sha256)


@dataclass
class CheckResult:
    expected: int = 0
    ok: int = 0
    rejected: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    rows: int = 0
    nonfinite: int = 0
    bad_norm: int = 0
    ingest_rejects: int = 0
    examples: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """No loss, no duplicate, nothing unexpected, every vector finite and unit-norm."""
        return not (self.lost or self.duplicated or self.unexpected or self.nonfinite
                    or self.bad_norm)

    def describe(self) -> str:
        return (f"expected={self.expected} ok={self.ok} rejected={self.rejected} "
                f"failed={self.failed} lost={self.lost} duplicated={self.duplicated} "
                f"unexpected={self.unexpected} rows={self.rows} nonfinite={self.nonfinite} "
                f"bad_norm={self.bad_norm} examples={self.examples}")

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in (
            "expected", "ok", "rejected", "failed", "lost", "duplicated", "unexpected", "rows",
            "nonfinite", "bad_norm")}


def _shard_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


def check_job(job_dir: str | Path, *, norm_tol: float = 1e-3) -> CheckResult:
    """Classify every staged chunk of ``job_dir`` (see the module docstring)."""
    root = job_path(job_dir)
    if not (root / "manifest.json").is_file():
        raise FileNotFoundError(f"{root}: not a job directory (no manifest.json)")
    res = CheckResult()
    ex: dict[str, list[Any]] = {"lost": [], "duplicated": [], "unexpected": [], "rejected": []}

    # What was staged, per shard and overall.
    staged: Counter[Key] = Counter()
    staged_in: dict[int, Counter[Key]] = {}
    excluded = excluded_lines(root)
    for p in sorted((root / "input").glob("part-*.parquet")):
        t = pq.read_table(p, columns=["line", "doc_id", "chunk_index", "text_sha256"])
        c = Counter(k for k, ln in zip(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist(),
                                           t["text_sha256"].to_pylist()), t["line"].to_pylist())
                    if ln not in excluded)
        staged_in[_shard_of(p)] = c
        staged.update(c)
    res.expected = sum(staged.values())

    failed_shards = {int(p.stem.split("-")[1]) for p in (root / "_state" / "failed").glob(
        "part-*.json")} if (root / "_state" / "failed").is_dir() else set()

    # What was written.
    got: Counter[Key] = Counter()
    for p in sorted((root / "embeddings").glob("part-*.parquet")):
        n = _shard_of(p)
        t = pq.read_table(p)
        if "line" in t.column_names and excluded:
            res.unexpected += sum(ln in excluded for ln in t["line"].to_pylist())
        keys = list(zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist(),
                        t["text_sha256"].to_pylist()))
        res.rows += len(keys)
        mine = staged_in.get(n, Counter())
        for k, cnt in Counter(keys).items():
            if k not in mine and k in staged:  # staged, but by another shard
                res.unexpected += cnt
                ex["unexpected"].append((n, *k[:2]))
        got.update(keys)
        dtype = (t.schema.metadata or {}).get(b"embedfleet.dtype", b"float32").decode()
        if t.num_rows and dtype in ("float32", "float16"):  # --dtype int8/binary: no norm
            dim = t.schema.field("embedding").type.list_size
            flat = t["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            m = np.asarray(flat, dtype=np.float32).reshape(-1, dim)
            finite = np.isfinite(m).all(axis=1)
            res.nonfinite += int((~finite).sum())
            norms = np.linalg.norm(m[finite], axis=1)
            tol = norm_tol if dtype == "float32" else max(norm_tol, 1e-2)
            res.bad_norm += int((np.abs(norms - 1.0) > tol).sum())

    # Chunk-level rejects (the ingest rejects are whole lines: no chunk_index, counted apart).
    rejected: Counter[Key] = Counter()
    rej_path = root / "rejects.jsonl"
    by_pos: dict[tuple[str, int], list[Key]] = {}
    for k in staged:
        by_pos.setdefault((k[0], k[1]), []).append(k)
    if rej_path.is_file():
        for line in rej_path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if r.get("chunk_index") is None:
                res.ingest_rejects += 1
                continue
            cands = by_pos.get((r["doc_id"], int(r["chunk_index"])), [])
            if not cands:
                res.unexpected += 1
                ex["unexpected"].append(("reject", r["doc_id"], r["chunk_index"]))
                continue
            # With duplicate ids the reject names (doc_id, chunk): charge the copy not embedded.
            k = next((c for c in cands if got[c] + rejected[c] < staged[c]), cands[0])
            rejected[k] += 1
            ex["rejected"].append((r["doc_id"], r["chunk_index"], r.get("reason", "")[:80]))

    failed_keys: Counter[Key] = Counter()
    for n in failed_shards:
        failed_keys.update(staged_in.get(n, Counter()))

    for k, want in staged.items():
        have = got[k] + rejected[k]
        if have > want:
            res.duplicated += have - want
            ex["duplicated"].append(k[:2])
        ok = min(got[k], want)
        res.ok += ok
        rj = min(rejected[k], want - ok)
        res.rejected += rj
        missing = want - ok - rj
        if missing:
            fl = min(missing, failed_keys[k])
            res.failed += fl
            if missing - fl:
                res.lost += missing - fl
                ex["lost"].append(k[:2])
    for k, cnt in got.items():
        if k not in staged:
            res.unexpected += cnt
            ex["unexpected"].append(k[:2])
    res.examples = {k: v[:5] for k, v in ex.items() if v}
    return res
