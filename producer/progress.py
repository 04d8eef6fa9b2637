"""What a user sees of a running job: a progress line (chunks and tokens done, throughput,
ETA, cache hit rate), the summary at the end, and the ``producer status`` lines.

Given ``no_worker`` (a callable asking the broker whether any worker consumes the job's queue),
the line says "waiting for a worker" instead of showing 0 tok/s while no shard finishes; it
asks at most every ``CHECK_S`` seconds, and only while nothing has finished since the last ask.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

CHECK_S = 5.0


class Progress:
    def __init__(self, enabled: bool, no_worker: Callable[[], bool] | None = None) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.no_worker = no_worker
        self.waiting = False
        self._checked: tuple[float, int] = (-CHECK_S, -1)

    def update(self, st: Any) -> None:
        if not self.enabled or not st.chunks:
            return
        self._check_workers(st.done + st.failed)
        rate = "waiting for a worker" if self.waiting else f"{st.tokens_per_s:,.0f} tok/s"
        hit = st.cache_hits / st.chunks_done if st.chunks_done else 0.0
        if not sys.stderr.isatty():
            # Logs and CI: one line per finished shard, not a redraw every second.
            key = (st.done, st.failed, self.waiting)
            if key != getattr(self, "_last", None):
                self._last = key
                sys.stderr.write(f"shards {st.done}/{st.shards}  chunks {st.chunks_done}/"
                                 f"{st.chunks}  {rate}  cache {hit:.0%}\n")
            return
        if self.bar is None:
            import click

            self.bar = click.progressbar(length=st.chunks, label="embedding", file=sys.stderr,
                                         show_eta=True, show_percent=True, width=30)
            self.bar.__enter__()
        self.bar.pos = 0
        self.bar.label = (f"shards {st.done}/{st.shards}  tokens {st.tokens_done:,}  "
                          f"{rate}  cache {hit:.0%}")
        self.bar.update(st.chunks_done)

    def _check_workers(self, finished: int) -> None:
        last_t, last_finished = self._checked
        if finished != last_finished:
            self.waiting = False
        if self.no_worker is None or time.monotonic() - last_t < CHECK_S:
            return
        if finished == last_finished or last_finished < 0:
            self.waiting = self.no_worker()
        self._checked = (time.monotonic(), finished)

    def note(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\n{msg}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def fleet_progress(app: Any, queue: str, broker_label: str,
                   warn: Callable[[str], Any]) -> Progress:
    """Before sending to a fleet: ``warn`` when no worker consumes ``queue``, and a Progress
    that says "waiting for a worker" while none does."""
    from producer.routing import no_worker_warning

    warning = no_worker_warning(app, queue, broker_label)
    if warning:
        warn(warning)
    return Progress(True, no_worker=lambda: no_worker_warning(app, queue, "") is not None)


def summary_lines(job: Any, st: Any) -> list[str]:
    """What `producer run` and `submit --wait` print when the job finishes."""
    m = job.dir.reload()
    res = m.get("result", {})
    tot = m.get("totals", {})
    wall = res.get("wall_s", st.elapsed_s)
    hits = res.get("cache_hits", st.cache_hits)
    chunks = res.get("embedded_chunks", st.chunks_done)
    out = [
        f"\n{st.status}: {tot.get('accepted', 0)} documents ({tot.get('rejected', 0)} rejected), "
        f"{chunks} chunks embedded, {st.tokens:,} tokens in {wall:.1f}s "
        f"({st.tokens / wall if wall else 0:,.0f} tokens/s), cache hits {hits}/{st.chunks}"]
    if res.get("rejects"):
        out.append(f"rejects:    {res['rejects']} in {job.dir.rejects_path}")
    out.extend(_failed_lines(st))
    out.append(f"output:     {job.dir.embeddings_dir}/*.parquet")
    out.append(f"read it:    python -c \"import pandas as pd; "
               f"print(pd.read_parquet('{job.dir.embeddings_dir}'))\"")
    out.append(f"report:     producer report {job.dir.root}")
    return out


def status_lines(st: Any) -> list[str]:
    """What `producer status` prints."""
    out = [f"job        {Path(st.job_dir).name}  [{st.status}]",
           f"shards     {st.done}/{st.shards} done, {st.failed} failed",
           f"chunks     {st.chunks_done}/{st.chunks}   tokens {st.tokens_done:,}/{st.tokens:,}",
           f"rejects    {st.rejects}   cache hits {st.cache_hits}",
           f"throughput {st.tokens_per_s:,.0f} tokens/s over {st.elapsed_s:.1f}s"]
    if st.duplicate_ids:
        out.append(f"duplicate ids {st.duplicate_ids} (e.g. {', '.join(st.duplicate_examples)})")
    for r in st.reject_examples:
        out.append(f"rejected   doc {r.get('doc_id')!r} chunk {r.get('chunk_index')} "
                   f"(line {r.get('line')}): {r.get('reason')}")
    return out + _failed_lines(st)


def _failed_lines(st: Any) -> list[str]:
    """Each failed shard with its reason, and what to do when its staged input is damaged."""
    from storage.integrity import damaged_inputs

    shards = [f["shard"] for f in st.failed_shards]
    return ([f"failed shard {f['shard']}: {f['reason']}" for f in st.failed_shards]
            + [f"what to do: {line}" for line in damaged_inputs(Path(st.job_dir), shards)])
