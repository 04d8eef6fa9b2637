"""The root of embedfleet's errors, and the ones raised by storage.

    EmbedfleetError                 every error a user must act on (the CLI maps each to an exit code)
    ├── UsageError                  a bad option or value; the message names the option
    ├── CorpusError                 the corpus cannot be read as asked (e.g. no such column)
    └── StorageError                job directories, shards and bundles on disk
        ├── InvalidJobId            a job id that is not a safe directory name
        ├── JobNotFound             a directory without manifest.json
        ├── DiskFull                a write found no space left (ENOSPC, EDQUOT); names the file
        ├── BundleError             a model bundle is missing a file or has an invalid one
        ├── CorruptFile             a job file that cannot be read (names it and what to do)
        ├── CompactError            ``compact`` cannot write its output (target not empty)
        └── LoadError               ``load`` into PostgreSQL (storage/pgload.py)
            ├── DatabaseUnreachable     cannot connect (the message never holds the password)
            ├── InvalidTableName        ``--table`` is not ``[schema.]name`` (lowercase, digits, _)
            ├── TableMismatch           the table's dimension, vector type or model differs
            └── LoadConflict            a row's (doc_id, chunk_index) is already in the table

The worker's errors (``worker/errors.py``) and the producer's (``producer/errors.py``) derive
from ``EmbedfleetError`` too: storage is the layer every process imports. ``UsageError`` and
``CorpusError`` live here because staging (``worker/staging/``) raises them on the producer and
on a staging worker alike; ``producer.errors`` re-exports them.
"""

from __future__ import annotations


class EmbedfleetError(Exception):
    """Base class for embedfleet errors."""


class UsageError(EmbedfleetError, ValueError):
    """A bad option or value (``--overlap``, ``--prefix``, ``--max-tokens``, ``--queue``...)."""


class CorpusError(EmbedfleetError, ValueError):
    """The corpus cannot be read with the given options; the message names file and field."""


class StorageError(EmbedfleetError):
    """Base class for storage errors."""


class InvalidJobId(StorageError, ValueError):
    """A job id that does not match the allowed pattern."""


class JobNotFound(StorageError, FileNotFoundError):
    """A directory that is not an embedfleet job (no manifest.json)."""


class BundleError(StorageError, ValueError):
    """A model bundle directory is incomplete or invalid; the message names the file."""


class CompactError(StorageError, ValueError):
    """``compact`` was pointed at an output it must not overwrite; the message names it."""


class LoadError(StorageError):
    """Loading a job into PostgreSQL failed; nothing of the failing shard was written."""


class DatabaseUnreachable(LoadError, ConnectionError):
    """The database in ``--dsn`` cannot be reached or refuses the login."""


class InvalidTableName(LoadError, ValueError):
    """``--table`` is not ``name`` or ``schema.name`` in lowercase letters, digits and _."""


class TableMismatch(LoadError, ValueError):
    """The target table exists with another dimension, vector type or model, or is missing."""


class LoadConflict(LoadError):
    """A shard's rows collide with rows already in the table that came from another job."""


class CorruptFile(StorageError, ValueError):
    """A job file (manifest, input, metrics shard) that cannot be read; the message names the
    file and says what to do."""


class DiskFull(StorageError, OSError):
    """A write found no space left on its filesystem (ENOSPC or EDQUOT); names the file.

    Nothing partial is left behind (the temporary file is removed). Not the data's fault: the
    worker leaves the shard pending instead of failing it, and ``producer resume`` finishes
    the job once there is space again.
    """
