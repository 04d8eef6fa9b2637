"""Recycle a pool child whose memory grew past what its loaded models need (not before).

Celery's ``worker_max_memory_per_child`` is one fixed number for every child, compared after
each task with billiard's ``mem_rss()`` (on Linux ``ru_maxrss``: the *peak* RSS). A child that
holds a 2.3 GB BGE-M3 session sits at ~4.7 GB after an 8,192-token batch, so a fixed 4 GB limit
replaced it after every shard and the next shard reloaded and recompiled the model (issue 24).

Here the limit follows the models: a child's limit is its RSS right after its last model load
(``loaded()``, called by ``worker/tasks.py``) plus a headroom, ``EMBED_RECYCLE_HEADROOM_MB``;
``0`` never recycles. Unset, it is what the model may still legitimately add: the graph's files
(ONNX Runtime maps external data lazily, so a 2.3 GB model sat at 1.3 GB RSS right after its
load) plus the activations of its largest batch (``working_set_mb``: one 8,192-token row of
BGE-M3 at fp32 took a worker to 14 GB RSS), at least 2048 MB and twice what the load added.
The check uses the *current* RSS, so a one-off peak that was given back does not count.

Mechanism: billiard checks the limit in the child after each task, with a limit it read at fork
time, by calling ``billiard.pool.mem_rss``. ``install()`` (in each child, at
``worker_process_init``) replaces that function with ``_over_limit_flag``, which answers
``RECYCLE_KB`` + 1 when this child is over its own limit and ``RECYCLE_KB`` otherwise, and
``celery_app`` sets ``worker_max_memory_per_child = RECYCLE_KB``. The child then exits through
billiard's own path (result reported and acked first, then ``EX_RECYCLE``); the line before
billiard's ("exceeding memory limit (2KiB / 1KiB)") gives the real figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from storage.metrics import rss_mb
from worker.model.batching import activation_bytes_per_token

log = logging.getLogger(__name__)

RECYCLE_KB = 1
"""The nominal limit billiard compares against (see the module docstring)."""
MIN_HEADROOM_MB = 2048


@dataclass
class _State:
    headroom_mb: int | None = None  # None: auto
    before_mb: float = 0.0  # RSS before the first model load (the child's start)
    loaded_mb: float = 0.0  # RSS right after the last model load
    working_mb: float = 0.0  # the largest loaded model's working set (``working_set_mb``)
    installed: bool = False


_state = _State()


def headroom_mb(setting: int | None, before_mb: float, loaded_mb: float,
                working_mb: float = 0.0) -> float:
    """The headroom over the post-load RSS: ``setting`` MB, or auto: the model's working set,
    at least ``MIN_HEADROOM_MB`` and twice what loading took; 0 means never recycle.

    >>> headroom_mb(None, 300, 2700), headroom_mb(None, 300, 400), headroom_mb(512, 300, 2700)
    (4800.0, 2048.0, 512.0)
    >>> headroom_mb(None, 70, 1337, working_mb=11_000)
    11000.0
    """
    if setting is not None:
        return float(setting)
    return float(max(MIN_HEADROOM_MB, 2.0 * max(0.0, loaded_mb - before_mb), working_mb))


def working_set_mb(graph_bytes: int, hidden: int, max_length: int, batch_tokens: int,
                   dtype_bytes: int) -> float:
    """What a loaded model may still add to RSS: its graph's files (weights not paged in yet)
    plus the activations of its largest batch (``max(batch_tokens, max_length)`` tokens in rows
    of ``max_length``).

    >>> round(working_set_mb(2_300 * 2**20, 1024, 8192, 4096, 4))  # BGE-M3 fp32, CPU: ~19 GB
    19068
    """
    per_token = activation_bytes_per_token(hidden, max_length, dtype_bytes)
    return (graph_bytes + per_token * max(batch_tokens, max_length)) / 2**20


def limit_mb() -> float | None:
    """This child's recycle limit now (None: recycling off)."""
    room = headroom_mb(_state.headroom_mb, _state.before_mb, _state.loaded_mb, _state.working_mb)
    return None if room <= 0 else _state.loaded_mb + room


def should_recycle(current_mb: float | None = None) -> bool:
    """Whether this child is over its limit (logs the figures when it is)."""
    limit = limit_mb()
    now = rss_mb() if current_mb is None else current_mb
    if limit is None or now <= limit:
        return False
    log.warning("recycling this worker process after its task: RSS %.0f MB > %.0f MB after "
                "loading its model(s) + %.0f MB headroom (EMBED_RECYCLE_HEADROOM_MB)", now,
                _state.loaded_mb, limit - _state.loaded_mb)
    return True


def install_recycle_check(headroom: int | None) -> None:
    """In a pool child: take the start RSS and hook billiard's per-task memory check."""
    import billiard.pool

    _state.headroom_mb, _state.before_mb = headroom, rss_mb()
    _state.loaded_mb = _state.before_mb
    if not hasattr(billiard.pool, "mem_rss"):
        log.error("billiard.pool.mem_rss is gone (billiard %s): worker processes are never "
                  "recycled for memory", getattr(billiard, "__version__", "?"))
        return
    billiard.pool.mem_rss = _over_limit_flag
    _state.installed = True


def loaded(model: Any = None) -> None:
    """A model was just loaded in this process: its RSS now is the base of the limit, and its
    working set (a ``LoadedModel``; None: unknown) a floor of the automatic headroom."""
    _state.loaded_mb = rss_mb()
    if model is not None:
        _state.working_mb = max(_state.working_mb, _model_working_mb(model))
    limit = limit_mb()
    log.info("worker process RSS %.0f MB after loading; recycled above %s", _state.loaded_mb,
             "never" if limit is None else f"{limit:.0f} MB")


def _model_working_mb(model: Any) -> float:
    try:
        path = model.bundle.graph_path(model.precision)
        graph = sum(f.stat().st_size for f in path.parent.glob(f"{path.name}*"))
    except (OSError, ValueError, KeyError, AttributeError):
        graph = 0
    cfg = model.bundle.config
    return working_set_mb(graph, cfg.dim, cfg.max_length, model.batch_tokens,
                          2 if model.precision == "fp16" else 4)


def _over_limit_flag() -> int:
    return RECYCLE_KB + 1 if should_recycle() else RECYCLE_KB
