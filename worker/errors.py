"""Errors raised by the worker side: providers and inference.

    EmbedfleetError (storage/errors.py)
    └── WorkerError
        ├── ProviderUnavailable    a strict device request cannot be met
        ├── InferenceError         the session failed on a batch (split and retried by the pipeline)
        └── BadMessage             a task message naming no valid job directory/shard (not retried)
            └── PathNotAllowed     a task names a path outside EMBED_JOB_ROOTS / EMBED_MODEL_ROOTS
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.errors import BundleError, EmbedfleetError

__all__ = ["BadMessage", "BundleError", "EmbedfleetError", "InferenceError", "PathNotAllowed",
           "ProviderUnavailable", "WorkerError", "load_error"]


class WorkerError(EmbedfleetError):
    """Base class for errors raised by the worker."""


class ProviderUnavailable(WorkerError, RuntimeError):
    """A strict device request (e.g. strict GPU) cannot be satisfied."""


class InferenceError(WorkerError, RuntimeError):
    """ONNX Runtime failed on a batch."""


class BadMessage(WorkerError, ValueError):
    """A task message that does not name a job directory and one of its shards (not retried)."""
class PathNotAllowed(BadMessage, PermissionError):
    """A task message (or its manifest) names a path outside the worker's roots."""


def load_error(path: os.PathLike[str] | str, exc: BaseException) -> str:
    """One line naming the file ONNX Runtime could not load and what to do about it."""
    path = Path(path)
    data = path.with_name(path.name + ".data")  # the weights of a graph over 2 GB
    why = " ".join(str(exc).split())[:400]
    redo = "copy the whole bundle directory again, or re-export it with `producer export`"
    if data.name in why and not data.is_file():
        return f"{data}: missing; {path.name} keeps its weights in it ({why}); {redo}"
    if data.name in why or "External initializer" in why:
        return f"{data}: truncated or damaged, {path.name} cannot read its weights ({why}); {redo}"
    return f"{path}: ONNX Runtime cannot load this model ({why}); {redo}"
