"""Write-then-rename: every file a job leaves is complete or absent.

The durable pattern: write to a unique temporary name in the same directory (``O_EXCL``), flush,
fsync, ``os.replace`` onto the final name, fsync the directory. A reader globbing ``*.parquet``
never sees a temporary file because temporary names are hidden and end in ``.tmp``. They also
name their writer (host and pid), so clean-up removes only the files of writers that are gone.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.errors import DiskFull
from storage.jobfs import AnyPath, StorePath, put

TMP_SUFFIX = ".tmp"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
DEFAULT_TMP_MAX_AGE_S = 3600
"""A temporary file untouched this long is garbage even if its writer's liveness is unknown
(another host): far above the task time limit, and a live writer keeps touching its file."""
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "localhost"


def tmp_name(final: Path) -> Path:
    """A unique temporary sibling of ``final`` (``.name.<host>.<pid>.<uuid>.tmp``)."""
    return final.with_name(
        f".{final.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def write_atomic(final: AnyPath, write: Callable[[Path], None], *, durable: bool = True) -> None:
    """Call ``write(tmp_path)``, fsync the file, rename it onto ``final``, fsync the directory.

    ``final`` in an object store: ``write`` fills a local temporary file, which is uploaded in
    one PUT (a store shows a whole object or none; it has no rename to do).

    ``durable=False`` skips both fsyncs: still all-or-nothing for readers and for a killed
    writer, but not across a power loss. For files that only have to outlive a process (the
    in-flight markers): an fsync costs ~20 ms on a busy disk, the rename alone ~1 ms.

    Raises:
        DiskFull: no space left (ENOSPC/EDQUOT), naming ``final``; nothing is left behind.
    """
    if isinstance(final, StorePath):
        _upload(final, write)
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        write(tmp)
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, final)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in NO_SPACE and not isinstance(exc, DiskFull):
            raise DiskFull(exc.errno, "no space left on device writing this file (free space "
                           "on its filesystem, then `producer resume` the job)", str(final)
                           ) from exc
        raise
    if durable:
        fsync_dir(final.parent)


def _upload(final: StorePath, write: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="embedfleet-put-") as d:
        tmp = Path(d) / final.name
        write(tmp)
        put(final, tmp.read_bytes())


def write_bytes_atomic(final: AnyPath, data: bytes, *, durable: bool = True) -> None:
    if isinstance(final, StorePath):
        put(final, data)
        return

    def _write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    write_atomic(final, _write, durable=durable)


def write_json_atomic(final: AnyPath, obj: Any) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: AnyPath) -> None:
    if isinstance(path, StorePath):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_tmp(directory: AnyPath, *, max_age_s: float = DEFAULT_TMP_MAX_AGE_S) -> int:
    """Delete temporary files left by killed writers; returns how many were removed.

    A file is stale when its writer ran on this host and no longer exists, or when it has not
    been modified for ``max_age_s``. Files of live writers stay: deleting them would make a
    concurrent ``finalize`` or a duplicate task fail its rename.
    """
    n = 0
    if isinstance(directory, StorePath):
        return 0  # nothing in a store is ever written under a temporary name
    if not directory.is_dir():
        return 0
    now = time.time()
    for p in directory.rglob(f".*{TMP_SUFFIX}"):
        try:
            if _writer_gone(p.name) or now - p.stat().st_mtime > max_age_s:
                p.unlink()
                n += 1
        except FileNotFoundError:
            pass
    return n


def writer_gone(name: str) -> bool:
    """True only when the temporary ``name`` (from tmp_name) was made on this host by a
    process that has exited: a killed writer's leftover, safe to delete."""
    return _writer_gone(name)


def _writer_gone(name: str) -> bool:
    """True only when ``name`` was written on this host by a process that has exited."""
    parts = name.rsplit(".", 4)  # [".final", host, pid, uuid, "tmp"]
    if len(parts) != 5 or parts[1] != _HOST or not parts[2].isdigit() or int(parts[2]) <= 0:
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, owned by someone else
        return False
    return False
