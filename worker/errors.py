"""Errors raised by the worker side: providers and inference.

    EmbedfleetError (storage/errors.py)
    └── WorkerError
        ├── ProviderUnavailable    a strict device request cannot be met
        ├── InferenceError         the session failed on a batch (split and retried by the pipeline)
        └── BadMessage             a task message naming no valid job directory/shard (not retried)
            └── PathNotAllowed     a task names a path outside EMBED_JOB_ROOTS / EMBED_MODEL_ROOTS
"""

from __future__ import annotations

from storage.errors import BundleError, EmbedfleetError

__all__ = ["BadMessage", "BundleError", "EmbedfleetError", "InferenceError", "PathNotAllowed",
           "ProviderUnavailable", "WorkerError"]


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
