"""One progress display for the whole job: staging (input MB read of total, MB/s, ETA, shards
staged) and embedding (shards done, tokens, tok/s, cache hits), side by side while both run."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from storage import ledger
from storage.jobdir import JobDir
from storage.manifest import Manifest


@dataclass
class JobStatus:
    job_dir: str
    status: str  # staging, running, succeeded, failed
    shards: int
    done: int
    failed: int
    chunks: int
    chunks_done: int
    tokens: int
    tokens_done: int
    rejects: int
    cache_hits: int
    elapsed_s: float
    failed_shards: list[dict[str, Any]] = field(default_factory=list)
    duplicate_ids: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    reject_examples: list[dict[str, Any]] = field(default_factory=list)
    """Chunks the workers quarantined or could not embed (line, doc_id, chunk_index, reason)."""
    staging: dict[str, Any] = field(default_factory=dict)
    """Staging progress from the ledger: bytes (input read), bytes_total, records, chunks,
    tokens, shards (staged), splits_done, splits, done (staging finished), mb_per_s."""

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0


def staging_progress(job: JobDir, m: Manifest) -> dict[str, Any]:
    """Staging figures from the ledger (cheap: one small file per split)."""
    t = ledger.totals(ledger.read_all(job.root))
    total = int(m.input.get("bytes", 0))
    t.update(bytes_total=total, splits=len(m.splits or [0]), done=m.staged)
    if m.staged:
        t["bytes"] = total
    end = (m.staging or {}).get("finished_at") or time.time()
    wall = max(end - float(m.created_at or end), 1e-9)
    t["mb_per_s"] = round(t["bytes"] / wall / 1e6, 2)
    return t


def describe(st: Any) -> str:
    """The one-line summary of a JobStatus (also the non-tty log line)."""
    parts = []
    sg = st.staging or {}
    if sg and not sg.get("done"):
        total, read = sg.get("bytes_total", 0), sg.get("bytes", 0)
        rate = sg.get("mb_per_s", 0.0)
        eta = (total - read) / (rate * 1e6) if rate and total > read else 0.0
        of = f"/{total / 1e6:,.1f}" if total else ""
        parts.append(f"staging {read / 1e6:,.1f}{of} MB {rate:.1f} MB/s "
                     f"eta {_clock(eta)}  staged {sg.get('shards', 0)} shards "
                     f"{sg.get('records', 0):,} records")
    hit = st.cache_hits / st.chunks_done if st.chunks_done else 0.0
    parts.append(f"shards {st.done}/{st.shards}  chunks {st.chunks_done}/{st.chunks}  "
                 f"{st.tokens_per_s:,.0f} tok/s  cache {hit:.0%}")
    return "  |  ".join(parts)


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self._last: Any = None
        self._last_t = 0.0

    def update(self, st: Any) -> None:
        staging = bool(st.staging) and not st.staging.get("done")
        if not self.enabled or not (st.chunks or staging):
            return
        if not sys.stderr.isatty():
            # Logs and CI: a line per finished shard (at most one per 2 s while staging).
            key = (st.done, st.failed, st.shards)
            now = time.monotonic()
            if key != self._last and (not staging or now - self._last_t >= 2):
                self._last, self._last_t = key, now
                sys.stderr.write(describe(st) + "\n")
            return
        if self.bar is None:
            import click

            self.bar = click.progressbar(length=max(st.chunks, 1), label="embedding",
                                         file=sys.stderr, show_eta=not staging,
                                         show_percent=True, width=30)
            self.bar.__enter__()
        self.bar.length = max(st.chunks, 1)  # grows while staging streams shards in
        self.bar.show_eta = not staging
        self.bar.pos = 0
        self.bar.label = describe(st)
        self.bar.update(st.chunks_done)

    def note(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\n{msg}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
