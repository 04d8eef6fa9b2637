"""The job directory: layout, manifest, per-shard state, and idempotent finalisation.

    OUT/<job_id>/
      manifest.json             written before any task runs; updated when staging and the job end
      input/part-NNNNN.parquet  staged chunks (what a task reads), written while staging streams
      _state/staging/           the staging ledger (storage.ledger): shards staged so far
      embeddings/part-NNNNN.parquet
      metrics/part-NNNNN.parquet
      rejects.jsonl             every record (or chunk) not embedded, with the reason
      docs/index.parquet        at finalize: doc_id -> text hash, shard, rows (storage.docindex)
      delta/changes.parquet     a --since job's added/changed/deleted ids (storage.carry)
      _SUCCESS                  last, only when every shard exists and validates
      _state/                   attempts, failed shards, worker-side rejects (internal)

Every name below the job root is built from integers; the job id itself is validated.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from storage import calibration, docindex, ledger
from storage.atomic import NO_SPACE, remove_stale_tmp, write_bytes_atomic, write_json_atomic
from storage.errors import DiskFull, InvalidJobId, JobNotFound
from storage.integrity import read_manifest
from storage.jobfs import AnyPath, job_path, write_once
from storage.manifest import Manifest, ShardEntry
from storage.metrics import metrics_totals
from storage.shards import shard_is_valid, shard_name

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


def validate_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a safe directory name, else raise InvalidJobId."""
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id) or ".." in job_id:
        raise InvalidJobId(
            f"invalid job id {job_id!r}: use 1-128 of A-Z a-z 0-9 _ . - (no '..', no '/')"
        )
    return job_id


@dataclass(frozen=True)
class ShardState:
    shard: int
    chunks: int
    tokens: int
    state: str  # "done", "failed", "pending"
    reason: str = ""


class JobDir:
    """Paths and state of one job directory: a local directory or an object-store prefix
    (``s3://bucket/jobs/<id>``; ``storage.jobfs`` gives both the same path interface)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root: AnyPath = job_path(root)
        self._manifest: Manifest | None = None

    @classmethod
    def create(cls, out: str | os.PathLike[str], job_id: str) -> JobDir:
        job = cls(job_path(out) / validate_job_id(job_id))
        for d in (job.root, job.input_dir, job.embeddings_dir, job.metrics_dir,
                  job.state_dir / "attempts", job.state_dir / "failed", job.state_dir / "rejects"):
            d.mkdir(parents=True, exist_ok=True)
        return job

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> JobDir:
        job = cls(path)
        if not job.manifest_path.is_file():
            raise JobNotFound(f"{job.root}: not an embedfleet job directory (no {MANIFEST})")
        return job

    # -- paths ---------------------------------------------------------------------------
    manifest_path = property(lambda self: self.root / MANIFEST)
    input_dir = property(lambda self: self.root / "input")
    embeddings_dir = property(lambda self: self.root / "embeddings")
    metrics_dir = property(lambda self: self.root / "metrics")
    state_dir = property(lambda self: self.root / "_state")
    rejects_path = property(lambda self: self.root / "rejects.jsonl")
    success_path = property(lambda self: self.root / SUCCESS)

    def input_path(self, shard: int) -> AnyPath:
        return self.input_dir / shard_name(shard)

    def embeddings_path(self, shard: int) -> AnyPath:
        return self.embeddings_dir / shard_name(shard)

    def metrics_path(self, shard: int) -> AnyPath:
        return self.metrics_dir / shard_name(shard)

    def shard_rejects_path(self, shard: int) -> AnyPath:
        return self.state_dir / "rejects" / shard_name(shard).replace(".parquet", ".jsonl")

    def failed_path(self, shard: int) -> AnyPath:
        return self.state_dir / "failed" / shard_name(shard).replace(".parquet", ".json")

    # -- manifest ------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            # read_manifest raises CorruptFile naming the file
            self._manifest = Manifest.from_dict(read_manifest(self.manifest_path))
        return self._manifest

    def reload(self) -> Manifest:
        self._manifest = None
        return self.manifest

    def write_manifest(self, manifest: Manifest | dict[str, Any]) -> None:
        """Write ``manifest`` (typed, or its JSON form) atomically."""
        if isinstance(manifest, dict):
            manifest = Manifest.from_dict(manifest)
        write_json_atomic(self.manifest_path, manifest.to_dict())
        self._manifest = manifest

    def shard_entries(self) -> list[ShardEntry]:
        """Every shard staged so far: the manifest's list once staged, else the ledger's."""
        m = self.manifest
        if m.staged:
            return m.shards
        return sorted((ShardEntry(cp.shard, cp.chunks, cp.tokens)
                       for cps in ledger.read_all(self.root).values() for cp in cps
                       if cp.shard is not None), key=lambda e: e.shard)

    def expected_chunks(self, shard: int) -> int | None:
        if self.manifest.staged:
            entries = self.manifest.shards
        else:  # only the ledger of the shard's own split
            entries = [ShardEntry(cp.shard, cp.chunks, cp.tokens) for cp in
                       ledger.read_split(self.root, shard // ledger.SHARDS_PER_SPLIT)
                       if cp.shard is not None]
        for s in entries:
            if s.shard == shard:
                return s.chunks
        return None

    # -- per-shard state -----------------------------------------------------------------
    def next_attempt(self, shard: int, info: dict[str, Any]) -> int:
        """Record one more attempt at ``shard`` and return its number (1-based).

        Each attempt is a file created with O_EXCL (in an object store: a conditional PUT), so
        concurrent attempts get distinct numbers without any broker support (Redis has no
        delivery counter).
        """
        d = self.state_dir / "attempts"
        n = len(list(d.glob(f"{shard:05d}.*"))) + 1
        data = json.dumps(info).encode()
        while True:
            try:
                if write_once(d / f"{shard:05d}.{n}", data):
                    return n
            except OSError as exc:  # an attempt that could not be recorded is not counted
                if exc.errno in NO_SPACE and not isinstance(exc, DiskFull):
                    raise DiskFull(exc.errno, "no space left on device writing this file",
                                   str(d / f"{shard:05d}.{n}")) from exc
                raise
            n += 1

    def drop_attempt(self, shard: int, n: int) -> None:
        """Un-count attempt ``n`` (one that found no space: not the shard's fault)."""
        (self.state_dir / "attempts" / f"{shard:05d}.{n}").unlink(missing_ok=True)

    def attempts(self, shard: int) -> list[dict[str, Any]]:
        out = []
        for p in sorted((self.state_dir / "attempts").glob(f"{shard:05d}.*"),
                        key=lambda p: int(p.suffix[1:])):
            try:
                out.append(json.loads(p.read_text() or "{}"))
            except ValueError:
                out.append({})
        return out

    def mark_failed(self, shard: int, reason: str, **extra: Any) -> None:
        write_json_atomic(self.failed_path(shard), {"shard": shard, "reason": reason, **extra})

    def shard_states(self, known_done: set[int] | frozenset[int] = frozenset()
                     ) -> list[ShardState]:
        """State of every expected shard; ``known_done`` skips re-validating those shards."""
        out = []
        for s in self.shard_entries():
            n = s.shard
            if n in known_done or shard_is_valid(self.embeddings_path(n), s.chunks):
                out.append(ShardState(n, s.chunks, s.tokens, "done"))
            elif self.failed_path(n).is_file():
                reason = json.loads(self.failed_path(n).read_text()).get("reason", "")
                out.append(ShardState(n, s.chunks, s.tokens, "failed", reason))
            else:
                out.append(ShardState(n, s.chunks, s.tokens, "pending"))
        return out

    # -- finalisation --------------------------------------------------------------------
    def finalize(self) -> bool:
        """If every shard is done or failed, write totals, rejects.jsonl and ``_SUCCESS``.

        Idempotent and safe to run concurrently (every write is an atomic rename of the same
        content). Returns True when the job is finished (successfully or not).
        """
        if self.success_path.exists():
            return True
        manifest = self.reload()
        if not manifest.staged:  # a worker finishing a shard while staging goes on: not yet
            return False
        if not self._all_shards_present(manifest):
            return False  # cheap: two directory listings instead of a footer read per shard
        states = self.shard_states()
        if any(s.state == "pending" for s in states):
            return False
        failed = [s for s in states if s.state == "failed"]
        failed_shards = [{"shard": s.shard, "reason": s.reason} for s in failed]
        status = "failed" if failed else "succeeded"
        if (manifest.result is not None and manifest.status == status
                and manifest.failed_shards == failed_shards):
            # Already finalised with this outcome (by another process or an earlier call): keep
            # its result, so a late call never moves finished_at; only a missing _SUCCESS is
            # written (its finaliser may have died between the manifest and the marker).
            if not failed:
                write_bytes_atomic(self.success_path, b"")
            return True
        done = {s.shard: self.embeddings_path(s.shard) for s in states if s.state == "done"}
        docindex.drop_excluded(self.root, done.values())  # later records of a repeated id
        lines: list[bytes] = []
        for p in (*ledger.reject_files(self.root), self.state_dir / "duplicates.jsonl",
                  *(self.shard_rejects_path(s.shard) for s in states)):
            if p.is_file():  # staging (one file per segment), duplicate ids, then workers'
                lines.extend(x for x in p.read_bytes().splitlines() if x)
        write_bytes_atomic(self.rejects_path, b"".join(x + b"\n" for x in lines))
        docindex.write_index(self.root, done, _worker_reject_lines(
            self.shard_rejects_path(s.shard) for s in states))
        manifest.result = self._totals(states, len(lines))
        manifest.failed_shards = failed_shards
        manifest.status = status
        manifest.calibration = calibration.read(self.root) or manifest.calibration
        self.write_manifest(manifest)
        if not failed:  # right after the manifest: a reader that saw "succeeded" finds it
            write_bytes_atomic(self.success_path, b"")
        remove_stale_tmp(self.root)
        return True

    def _all_shards_present(self, manifest: Manifest) -> bool:
        names = {p.name for p in self.embeddings_dir.glob("part-*.parquet")}
        names |= {p.name.replace(".json", ".parquet")
                  for p in (self.state_dir / "failed").glob("part-*.json")}
        return all(shard_name(s.shard) in names for s in manifest.shards)

    def _totals(self, states: list[ShardState], rejects: int) -> dict[str, Any]:
        rows = 0
        for s in states:
            if s.state == "done":
                rows += pq.read_metadata(self.embeddings_path(s.shard)).num_rows
        m = metrics_totals(sorted(self.metrics_dir.glob("part-*.parquet"))).result_fields()
        finished = time.time()
        wall = max(finished - float(self.manifest.submitted_at or finished), 1e-9)
        return {
            "embedded_chunks": rows,
            "rejects": rejects,
            "finished_at": finished,
            "wall_s": round(wall, 3),
            "tokens_per_s": round(m["real_tokens"] / wall, 1),
            **m,
        }


def _worker_reject_lines(paths: Any) -> set[int]:
    """Lines of records a worker rejected a chunk of (left out of the document index)."""
    out: set[int] = set()
    for p in paths:
        if p.is_file():
            out.update(json.loads(x).get("line", 0) for x in p.read_bytes().splitlines() if x)
    return out
