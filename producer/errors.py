"""Errors the producer raises where the user must act; the CLI maps each type to an exit code.

    EmbedfleetError (storage/errors.py)
    ├── UsageError              a bad option or value (storage/errors.py: staging raises it too)
    ├── CorpusError             the corpus cannot be read as asked (storage/errors.py, likewise)
    └── ProducerError
        ├── BrokerUnreachable   the broker cannot be reached; the message names the masked URL
        ├── BrokerFull          the broker refuses writes (Redis at maxmemory, noeviction)
        ├── JobConflict         OUT/JOB already holds a job that this command must not touch
        ├── FleetError          the private fleet of ``producer run`` did not start
        ├── JobFailed           the job finished with failed shards (the CLI's exit code 2)
        └── Interrupted         Ctrl-C; the message says how to continue

Each also derives from the builtin type the producer raised before (``ValueError``,
``ConnectionError``, ``FileExistsError``, ``RuntimeError``), so Python callers that catch those
keep working.
"""

from __future__ import annotations

from storage.errors import CorpusError, EmbedfleetError, UsageError

__all__ = ["BrokerUnreachable", "CorpusError", "FleetError", "Interrupted", "JobConflict",
           "JobFailed", "ProducerError", "UsageError"]


class ProducerError(EmbedfleetError):
    """Base class for errors raised by the producer."""


class BrokerUnreachable(ProducerError, ConnectionError):
    """The broker did not answer; nothing was written or sent."""


class BrokerFull(ProducerError, ConnectionError):
    """The broker refused a task (Redis over its ``maxmemory`` with ``noeviction``); staged
    shards are kept, and the message says how to continue once memory is freed."""


class JobConflict(ProducerError, FileExistsError):
    """The job directory already holds a job that this command must not overwrite or mix."""


class FleetError(ProducerError, RuntimeError):
    """redis-server or a local worker did not start; the message names the log to read."""


class JobFailed(ProducerError):
    """Every shard finished, some of them failed (reasons in ``producer status``)."""


class Interrupted(ProducerError):
    """Ctrl-C stopped a command; the message says what was stopped and how to continue."""
