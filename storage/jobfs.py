"""A job's files on a local disk or in an object store, behind one path type.

``job_path(location)`` is a ``pathlib.Path`` for a path or ``file://`` URI, a ``StorePath``
for ``s3://bucket/prefix``: the part of the ``Path`` interface a job uses (``/``, ``glob``,
``read_bytes``, ``stat``...), so ``storage.jobdir`` is written once for both. What a store
lacks is handled by the writers, never by the callers:

* no rename: ``put`` is one whole-object PUT, which a store makes visible all at once (a
  reader sees the old object or the new one, never a part; a writer killed mid-upload leaves
  nothing), so it replaces write-then-rename (``storage.atomic`` calls it);
* no ``O_EXCL``: ``write_once`` is a conditional PUT (``If-None-Match: *``): the first writer
  of a key wins, every later one is told the key exists (``False``);
* no append, no ``pwrite``: the staging ledger and the in-flight markers rewrite their whole
  (small) object, each by its single writer.

``os.fspath()`` of a ``StorePath`` is its URI, so pyarrow (``pq.read_table``...) reads the store
directly; ``str()`` is the same URI, safe to print (a URI holding a credential or a query
string is refused). Connection settings come from the standard AWS variables and files.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from storage import objstore
from storage.errors import StorageError, UsageError


class StoreError(StorageError, OSError):
    """An object-store request failed (denied, bucket missing, store unreachable); names the
    URI, never a credential. ``transient``: the store did not answer (a retry may succeed),
    as opposed to an answer that refused the request."""

    transient = False


@dataclass(frozen=True)
class StoreStat:
    st_size: int
    st_mtime: float


class StorePath:
    """One key (or key prefix: a "directory") in an object store, ``s3://bucket/a/b``."""

    __slots__ = ("uri",)

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
        if objstore.redact(self.uri) != self.uri:
            raise UsageError(f"{objstore.redact(self.uri)}: credentials or a query string in an "
                             "object-store URI are not accepted (they would reach task messages "
                             "and the manifest); set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                             "AWS_PROFILE instead")

    # -- pure path ---------------------------------------------------------------------------
    def __fspath__(self) -> str:
        return self.uri

    def __str__(self) -> str:
        return self.uri  # never holds a credential: __init__ refuses such a URI

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: StorePath) -> bool:
        return self.uri < other.uri

    def __truediv__(self, part: str | os.PathLike[str]) -> StorePath:
        return StorePath(objstore.join(self.uri, *Path(part).parts))

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> StorePath:
        head = self.uri.rsplit("/", 1)[0]
        return self if head.endswith(":/") else StorePath(head)

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def resolve(self) -> StorePath:
        return self

    def is_relative_to(self, other: StorePath | str) -> bool:
        base = other.uri if isinstance(other, StorePath) else str(other).rstrip("/")
        return self.uri == base or self.uri.startswith(base + "/")

    # -- reads -------------------------------------------------------------------------------
    def _info(self) -> pafs.FileInfo:
        fs, path = objstore.resolve(self.uri)
        return _call(self, lambda: fs.get_file_info(path))

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def stat(self) -> StoreStat:
        info = self._info()
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self))
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        return StoreStat(int(info.size or 0), mtime)

    def read_bytes(self) -> bytes:
        fs, path = objstore.resolve(self.uri)
        try:
            with fs.open_input_stream(path) as f:
                return bytes(f.read())
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self)) from None
        except OSError as exc:
            raise _store_error(self, exc) from exc

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def iterdir(self) -> list[StorePath]:
        fs, path = objstore.resolve(self.uri)
        sel = pafs.FileSelector(path, allow_not_found=True, recursive=False)
        infos = _call(self, lambda: fs.get_file_info(sel))
        return sorted(self / i.base_name for i in infos)

    def glob(self, pattern: str) -> list[StorePath]:
        """Entries matching ``pattern``: one level (``part-*.parquet``) or ``*/name``."""
        head, _, rest = pattern.partition("/")
        hits = [p for p in self.iterdir() if fnmatch.fnmatchcase(p.name, head)]
        if rest:
            return [q for p in hits for q in p.glob(rest)]
        return hits

    def rglob(self, pattern: str) -> list[StorePath]:
        fs, path = objstore.resolve(self.uri)
        sel = pafs.FileSelector(path, allow_not_found=True, recursive=True)
        infos = _call(self, lambda: fs.get_file_info(sel))
        root = path.rstrip("/") + "/"
        return sorted(self / i.path[len(root):] for i in infos
                      if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.base_name, pattern))

    # -- writes ------------------------------------------------------------------------------
    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a store has no directories, a key's prefix exists with the key."""

    def write_bytes(self, data: bytes) -> int:
        put(self, data)
        return len(data)

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.exists():
            raise FileNotFoundError(errno.ENOENT, "no such object", str(self))
        bucket, key = _bucket_key(self)
        _s3call(self, lambda c: c.delete_object(Bucket=bucket, Key=key))


AnyPath = Path | StorePath


def job_path(location: str | os.PathLike[str]) -> AnyPath:
    """``location`` as the path type its scheme needs (a ``Path`` is made absolute)."""
    if isinstance(location, StorePath):
        return location
    text = objstore.check_location(location, "job directory")
    if objstore.is_object_uri(text):
        return StorePath(text)
    return Path(text[len("file://"):] if text.startswith("file://") else text).resolve()


def is_store(path: object) -> bool:
    return isinstance(path, StorePath)


def put(path: StorePath, data: bytes) -> None:
    """Replace the object at ``path`` with ``data`` in one PUT (atomic for readers)."""
    bucket, key = _bucket_key(path)
    _s3call(path, lambda c: c.put_object(Bucket=bucket, Key=key, Body=data))


def write_once(path: AnyPath, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; False when it already existed.

    Local: ``O_CREAT | O_EXCL``. Store: a conditional PUT (``If-None-Match: *``): of two
    writers racing for a key exactly one gets True, on any store that supports conditional
    writes (see README "Jobs in an object store" for what a store without them costs).
    """
    if not isinstance(path, StorePath):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return True
    bucket, key = _bucket_key(path)
    try:
        _s3call(path, lambda c: c.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*"),
                reraise=("PreconditionFailed", "ConditionalRequestConflict"))
    except _Precondition:
        return False
    return True


class _Precondition(Exception):
    pass


def _bucket_key(path: StorePath) -> tuple[str, str]:
    bucket_key = path.uri.split("://", 1)[1]
    bucket, _, key = bucket_key.partition("/")
    return bucket, key


_clients: dict[tuple[str | None, ...], Any] = {}
_lock = threading.Lock()


def _client() -> Any:
    """One boto3 S3 client per process (a forked worker makes its own) and connection
    settings; the endpoint and credentials come from the standard AWS variables and files."""
    key = objstore.settings_key()
    with _lock:
        if key not in _clients:
            import boto3
            from botocore.config import Config

            _clients.clear()
            _clients[key] = boto3.session.Session().client("s3", config=Config(
                retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5,
                read_timeout=60))
        return _clients[key]


def _s3call(path: StorePath, call: Any, reraise: tuple[str, ...] = ()) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(_client())
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in reraise:
            raise _Precondition(code) from None
        if code in ("NoSuchKey", "404"):
            raise FileNotFoundError(errno.ENOENT, "no such object", str(path)) from None
        err = StoreError(errno.EIO, f"object store refused the request ({code}: "
                         f"{exc.response.get('Error', {}).get('Message', '')})", str(path))
        err.transient = code.startswith("5") or code in ("SlowDown", "InternalError",
                                                          "ServiceUnavailable", "RequestTimeout")
        raise err from None
    except BotoCoreError as exc:
        err = StoreError(errno.EIO, f"object store unreachable ({type(exc).__name__})",
                         str(path))
        err.transient = True
        raise err from None


def _call(path: StorePath, call: Any) -> Any:
    try:
        return call()
    except OSError as exc:
        raise _store_error(path, exc) from exc


def _store_error(path: StorePath, exc: OSError) -> StoreError:
    text = " ".join(str(exc).split())[:300]
    err = StoreError(errno.EIO, f"object store request failed: {text}", str(path))
    err.transient = not any(w in text for w in ("ACCESS_DENIED", "NO_SUCH_BUCKET", "403"))
    return err
