"""Errors raised by storage."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage errors."""


class InvalidJobId(StorageError, ValueError):
    """A job id that does not match the allowed pattern."""


class JobNotFound(StorageError, FileNotFoundError):
    """A directory that is not an embedfleet job (no manifest.json)."""


class CacheUnavailable(StorageError):
    """The cache Redis cannot be reached (callers treat it as a miss)."""
