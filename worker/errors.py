"""Errors raised by the worker side: model bundles, providers and inference.

    EmbedfleetError
    ├── BundleError            a model bundle is missing a file or has an invalid one
    ├── ProviderUnavailable    a strict device request cannot be met
    └── InferenceError         the session failed on a batch (split and retried by the pipeline)
"""

from __future__ import annotations


class EmbedfleetError(Exception):
    """Base class for embedfleet errors."""


class BundleError(EmbedfleetError, ValueError):
    """A model bundle directory is incomplete or invalid; the message names the file."""


class ProviderUnavailable(EmbedfleetError, RuntimeError):
    """A strict device request (e.g. strict GPU) cannot be satisfied."""


class InferenceError(EmbedfleetError, RuntimeError):
    """ONNX Runtime failed on a batch."""
