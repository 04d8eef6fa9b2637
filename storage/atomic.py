"""Write-then-rename: every file a job leaves is complete or absent.

The durable pattern: write to a unique temporary name in the same directory (``O_EXCL``), flush,
fsync, ``os.replace`` onto the final name, fsync the directory. A reader globbing ``*.parquet``
never sees a temporary file because temporary names end in ``.tmp``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def tmp_name(final: Path) -> Path:
    """A unique temporary sibling of ``final`` (``.name.<pid>.<uuid>.tmp``)."""
    return final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")


def write_atomic(final: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, fsync the file, rename it onto ``final``, fsync the directory."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(final)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    def _write(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    write_atomic(final, _write)


def write_json_atomic(final: Path, obj: Any) -> None:
    write_bytes_atomic(final, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def fsync_dir(path: Path) -> None:
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


def remove_stale_tmp(directory: Path) -> int:
    """Delete temporary files left by killed writers; returns how many were removed."""
    n = 0
    if not directory.is_dir():
        return 0
    for p in directory.rglob(f".*{TMP_SUFFIX}"):
        try:
            p.unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
