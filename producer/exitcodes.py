"""The one table that turns an error type into an exit code (``producer --help`` lists it).

Commands raise; the ``producer`` group (``producer/cli.py``) maps what they raise through
``EXIT_CODES``, first match wins.
"""

from __future__ import annotations

import click

from producer.errors import (BrokerFull, BrokerUnreachable, CorpusError, FleetError, Interrupted,
                             JobConflict, JobFailed, UsageError)
from storage.errors import (BundleError, CompactError, DatabaseUnreachable, EmbedfleetError,
                            InvalidJobId, InvalidTableName, JobNotFound, LoadConflict,
                            TableMismatch)

USAGE_EXIT = 3
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((BrokerUnreachable, DatabaseUnreachable, BrokerFull), 1, "the broker (or load's "
     "database) cannot be reached, or the broker is full"),
    ((JobFailed,), 2, "the job finished with failed shards"),
    ((UsageError, InvalidJobId, InvalidTableName, click.UsageError), USAGE_EXIT,
     "a bad option or value (the message names it)"),
    ((JobConflict, CompactError), 4, "OUT/JOB (or compact's --out) holds files this command "
     "must not touch"),
    ((CorpusError,), 5, "the corpus cannot be read with these options"),
    ((BundleError,), 6, "the model bundle is missing a file or has an invalid one"),
    ((JobNotFound,), 7, "not a job directory (no manifest.json)"),
    ((FleetError,), 8, "the private fleet of `producer run` did not start"),
    ((TableMismatch, LoadConflict), 9, "load: the table holds another dimension, vector type "
     "or model, is missing (no --create), or has these (doc_id, chunk_index) from another job"),
    ((Interrupted, KeyboardInterrupt), 130, "interrupted (Ctrl-C)"),
    ((EmbedfleetError, OSError, ValueError), 1, "any other error (file, value)"),
)
"""(error types, exit code, meaning), first match wins; 0 means done or nothing to do."""


def exit_code(exc: BaseException) -> int | None:
    """The exit code for ``exc`` from ``EXIT_CODES``; None for a bug (shown as a traceback).

    >>> exit_code(UsageError("--overlap 300: ...")), exit_code(BrokerUnreachable("x"))
    (3, 1)
    """
    for types, code, _ in EXIT_CODES:
        if isinstance(exc, types):
            return code
    return None


def _exit_code_help() -> str:
    rows = "\n".join(f"  {code:<4} {what}" for _, code, what in EXIT_CODES)
    return f"\b\nExit codes:\n  0    done, or nothing to do\n{rows}"
