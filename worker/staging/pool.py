"""Stage 3 across processes: stage every unfinished split, hand each shard on as it lands.

One process (``procs=1``) stages the splits in order in this process. With more, a pool of
``spawn``ed staging processes takes one split at a time and reports each durable shard back
over a queue; this process sends its task (``on_shard``) and updates the progress display, so
the fleet starts on the first shard within seconds whatever the corpus size. Staging processes
die with the producer (``PR_SET_PDEATHSIG``), so a resumed producer is never raced by orphans.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import queue as queue_mod
import signal
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from worker.staging.splits import Split, gzip_blocks, iter_split
from worker.staging.shards import StageConfig, stage_split
from storage import ledger
from storage.ledger import Checkpoint

OnShard = Callable[[Checkpoint], None]


def default_procs() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def stage_splits(path: str | Path, splits: Iterable[Split], cfg: StageConfig, *, root: Path | None,
                 procs: int, on_shard: OnShard, lookup: dict[str, Any] | None = None
                 ) -> tuple[list[Checkpoint], int]:
    """Stage every split of ``splits`` not yet done in ``root``'s ledger; return the new
    checkpoints and the cache hits (dry run: ``lookup`` = ``{cache_url, fingerprint, dim}``).
    ``path``: the corpus, a path or an object URI (never ``Path()`` of a URI: it drops a ``/``).
    ``splits`` may be a lazy plan (``Planner``): staging starts on the first split while the
    rest of the file is still being planned."""
    it = iter(splits)
    head = list(itertools.islice(it, 2))
    todo = _unfinished(root, itertools.chain(head, it))
    if procs <= 1 or len(head) <= 1:
        tok = staging_tokenizer(cfg)
        out: list[Checkpoint] = []
        hits = 0
        for s, cp, data in _with_data(path, todo):
            cps, h = _stage_one(path, s, cp, cfg, tok, root, on_shard, lookup, data)
            out.extend(cps)
            hits += h
        return out, hits
    return _stage_parallel(path, todo, cfg, root=root, procs=procs, on_shard=on_shard,
                           lookup=lookup)


def _unfinished(root: Path | None, splits: Iterator[Split]
                ) -> Iterator[tuple[Split, Checkpoint | None]]:
    for s in splits:
        cp = _last(root, s.index)
        if cp is None or not cp.done:
            yield s, cp


def _stage_parallel(path: str | Path, todo: Iterator[tuple[Split, Checkpoint | None]],
                    cfg: StageConfig,
                    *, root: Path | None, procs: int, on_shard: OnShard,
                    lookup: dict[str, Any] | None) -> tuple[list[Checkpoint], int]:
    ctx = mp.get_context("spawn")  # no fork of a process holding broker sockets and threads
    events = ctx.Queue()
    os.environ["EMBED_STAGE_PARENT"] = str(os.getpid())
    out: list[Checkpoint] = []
    hits = 0
    with ctx.Pool(procs, initializer=_init_child,
                  initargs=(cfg, events, root, lookup)) as pool:
        pending: list[Any] = []
        expected = [0]  # checkpoints the finished staging processes reported

        def drain(limit: int) -> None:
            nonlocal hits
            # Until every finished split's checkpoints arrived: a result can overtake the
            # events its process queued (the queue's feeder thread flushes later).
            while len(pending) > limit or (limit == 0 and len(out) < expected[0]):
                try:
                    cp = Checkpoint(**events.get(timeout=0.2))
                except queue_mod.Empty:
                    for r in [r for r in pending if r.ready()]:
                        h, n = r.get()  # re-raises a staging process's error here
                        hits, expected[0] = hits + h, expected[0] + n
                        pending.remove(r)
                    continue
                out.append(cp)
                on_shard(cp)

        for s, cp, data in _with_data(path, todo):
            pending.append(pool.apply_async(_child_stage, (str(path), asdict(s),
                                                           cp and asdict(cp), data)))
            if data is not None:
                drain(2 * procs)  # gzip: bounded bytes in flight
            while True:  # shards that landed while this split was being planned
                try:
                    cp = Checkpoint(**events.get_nowait())
                except queue_mod.Empty:
                    break
                out.append(cp)
                on_shard(cp)
        drain(0)
    return out, hits


def _with_data(path: str | Path, todo: Iterator[tuple[Split, Checkpoint | None]]
               ) -> Iterator[tuple[Split, Checkpoint | None, bytes | None]]:
    """Gzip splits come with their bytes (one reader decompresses once); others read alone."""
    first = next(todo, None)
    if first is None:
        return
    if first[0].kind != "gzip":
        yield first[0], first[1], None
        yield from ((s, cp, None) for s, cp in todo)
        return
    items = [first, *todo]
    cps = {s.index: cp for s, cp in items}
    for s, data in gzip_blocks(path, [s for s, _ in items]):
        yield s, cps[s.index], data


_child: dict[str, Any] = {}


def _init_child(cfg: StageConfig, events: Any, root: Path | None,
                lookup: dict[str, Any] | None) -> None:
    _die_with_parent()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _child.update(cfg=cfg, events=events, root=root, lookup=lookup, tok=staging_tokenizer(cfg))


def _child_stage(path: str, split: dict[str, Any], cp: dict[str, Any] | None,
                 data: bytes | None) -> tuple[int, int]:
    """Stage one split in a staging process; return its cache hits (dry run) and the number
    of checkpoints it queued."""
    c = _child
    s = Split.from_dict(split)
    resume = Checkpoint(**cp) if cp else None
    cps, hits = _stage_one(path, s, resume, c["cfg"], c["tok"], c["root"],
                           lambda x: c["events"].put(asdict(x)), c["lookup"], data)
    return hits, len(cps)


def _stage_one(path: str | Path, s: Split, cp: Checkpoint | None, cfg: StageConfig, tok: Any,
               root: Path | None, on_shard: OnShard, lookup: dict[str, Any] | None,
               data: bytes | None = None) -> tuple[list[Checkpoint], int]:
    pos, line = (cp.pos, cp.line) if cp else (s.start, s.first_line)
    records = iter_split(path, s, pos, line, text_field=cfg.text_field, id_field=cfg.id_field,
                         max_line_bytes=cfg.max_line_bytes, data=data)
    on_chunk, finish = _cache_counter(lookup) if lookup is not None else (None, lambda: 0)
    cps = stage_split(records, tok, cfg, split=s.index, end=s.end, root=root, resume=cp,
                      start=s.start, on_shard=on_shard, on_chunk=on_chunk)
    return cps, finish()


def _cache_counter(lookup: dict[str, Any]) -> tuple[Callable[[str], None], Callable[[], int]]:
    from storage.cache import EmbeddingCache
    from storage.hashing import content_key, text_sha256

    cache = EmbeddingCache.from_url(lookup["cache_url"], lookup["dim"])
    keys: list[str] = []
    hits = [0]

    def on_chunk(text: str) -> None:
        keys.append(content_key(lookup["fingerprint"], text_sha256(text),
                                lookup.get("outputs", ("dense",))))
        if len(keys) >= 1000:
            finish()

    def finish() -> int:
        get = cache.get_many if tuple(lookup.get("outputs", ("dense",))) == ("dense",) \
            else cache.get_entries
        hits[0] += sum(v is not None for v in get(keys)) if keys else 0
        keys.clear()
        return hits[0]

    return on_chunk, finish


def _last(root: Path | None, split: int) -> Checkpoint | None:
    cps = ledger.read_split(root, split) if root is not None else []
    return cps[-1] if cps else None


def staging_tokenizer(cfg: StageConfig) -> Any:
    """The bundle's tokenizer for staging (no truncation), its encoder chosen per ``cfg``."""
    from storage.bundle import load_bundle
    from worker.staging.fastcount import choose

    tok = load_bundle(cfg.bundle_path).load_tokenizer(truncate=False)
    choose(tok, fast=cfg.fast_tokenizer)
    return tok


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def chunk_texts(path: Path, cfg: StageConfig) -> tuple[list[str], dict[str, int]]:
    """Every chunk text the staging of ``path`` makes, in corpus order, and the totals (one
    process, nothing written: what benchmarks embed and calibrate on)."""
    from worker.staging.splits import plan_splits

    texts: list[str] = []
    splits, _ = plan_splits(path, 1 << 62)  # one split: the whole file
    tok, cps = staging_tokenizer(cfg), []
    for s in splits:
        records = iter_split(path, s, s.start, s.first_line, text_field=cfg.text_field,
                             id_field=cfg.id_field, max_line_bytes=cfg.max_line_bytes)
        cps += stage_split(records, tok, cfg, split=s.index, end=s.end, root=None,
                           start=s.start, on_chunk=texts.append)
    return texts, ledger.totals({0: cps})
