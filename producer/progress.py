"""A progress line for long jobs: chunks and tokens done, throughput, ETA, cache hit rate."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def update(self, st: Any) -> None:
        if not self.enabled or not st.chunks:
            return
        if not sys.stderr.isatty():
            # Logs and CI: one line per finished shard, not a redraw every second.
            key = (st.done, st.failed)
            if key != getattr(self, "_last", None):
                self._last = key
                hit = st.cache_hits / st.chunks_done if st.chunks_done else 0.0
                sys.stderr.write(f"shards {st.done}/{st.shards}  chunks {st.chunks_done}/"
                                 f"{st.chunks}  {st.tokens_per_s:,.0f} tok/s  cache {hit:.0%}\n")
            return
        if self.bar is None:
            import click

            self.bar = click.progressbar(length=st.chunks, label="embedding", file=sys.stderr,
                                         show_eta=True, show_percent=True, width=30)
            self.bar.__enter__()
        self.bar.pos = 0
        hit = st.cache_hits / st.chunks_done if st.chunks_done else 0.0
        self.bar.label = (f"shards {st.done}/{st.shards}  tokens {st.tokens_done:,}  "
                          f"{st.tokens_per_s:,.0f} tok/s  cache {hit:.0%}")
        self.bar.update(st.chunks_done)

    def note(self, msg: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\n{msg}\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
