"""The root of embedfleet's errors, and the ones raised by storage.

    EmbedfleetError                 every error a user must act on (the CLI maps each to an exit code)
    └── StorageError                job directories, shards and bundles on disk
        ├── InvalidJobId            a job id that is not a safe directory name
        ├── JobNotFound             a directory without manifest.json
        └── BundleError             a model bundle is missing a file or has an invalid one

The worker's errors (``worker/errors.py``) and the producer's (``producer/errors.py``) derive
from ``EmbedfleetError`` too: storage is the layer every process imports.
"""

from __future__ import annotations


class EmbedfleetError(Exception):
    """Base class for embedfleet errors."""


class StorageError(EmbedfleetError):
    """Base class for storage errors."""


class InvalidJobId(StorageError, ValueError):
    """A job id that does not match the allowed pattern."""


class JobNotFound(StorageError, FileNotFoundError):
    """A directory that is not an embedfleet job (no manifest.json)."""


class BundleError(StorageError, ValueError):
    """A model bundle directory is incomplete or invalid; the message names the file."""
