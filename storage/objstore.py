"""Where a job's files live: a local path or an object-store URI, as one pyarrow filesystem.

Every module that reads or writes a job, a corpus or a bundle by URI resolves it here, so one
place knows the schemes (``s3://``; ``gs://``/``az://`` where pyarrow has them; plain paths and
``file://``), where connection settings come from (the standard AWS variables and files:
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_PROFILE``; pyarrow's S3 client reads them itself) and how a URI is printed
without secrets.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from storage.errors import UsageError

OBJECT_SCHEMES = ("s3", "gs", "gcs", "az", "abfs", "abfss")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme_of(location: str | os.PathLike[str]) -> str:
    """``"s3"`` for ``s3://b/k``, ``"file"`` for a plain path or ``file://`` URI.

    >>> scheme_of("s3://bucket/jobs"), scheme_of("/data/jobs"), scheme_of("file:///data")
    ('s3', 'file', 'file')
    """
    m = _SCHEME_RE.match(os.fspath(location))
    return m.group(1).lower() if m else "file"


def is_object_uri(location: str | os.PathLike[str]) -> bool:
    """True for a URI of an object store (no rename, no append), False for a local path.

    >>> is_object_uri("s3://bucket/x"), is_object_uri("file:///x"), is_object_uri("out/job")
    (True, False, False)
    """
    return scheme_of(location) in OBJECT_SCHEMES


def check_location(location: str | os.PathLike[str], what: str) -> str:
    """``location`` as a string when its scheme is one embedfleet reads and writes.

    >>> check_location("ftp://host/x", "corpus")
    Traceback (most recent call last):
    ...
    storage.errors.UsageError: corpus ftp://host/x: unsupported scheme 'ftp' (use a path, file://, s3://, gs:// or az://)
    """
    text = os.fspath(location)
    scheme = scheme_of(text)
    if scheme != "file" and scheme not in OBJECT_SCHEMES:
        raise UsageError(f"{what} {redact(text)}: unsupported scheme {scheme!r} "
                         "(use a path, file://, s3://, gs:// or az://)")
    if scheme in OBJECT_SCHEMES and not urlsplit(text).netloc:
        raise UsageError(f"{what} {redact(text)}: no bucket in the URI ({scheme}://BUCKET/key)")
    if scheme in OBJECT_SCHEMES and "@" in urlsplit(text).netloc:  # it would reach messages
        raise UsageError(f"{what} {redact(text)}: credentials in a URI are not accepted; set "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) instead")
    return text


def resolve(location: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path inside it: ``("s3fs", "bucket/key")`` or ``(local, "/abs")``.

    One filesystem object per scheme and bucket is reused (its connection pool and credentials).
    """
    text = check_location(location, "location")
    if not is_object_uri(text):
        path = urlsplit(text).path if text.startswith("file://") else text
        return _local(), os.path.abspath(path)
    parts = urlsplit(text)
    fs = _object_fs(parts.scheme.lower(), parts.netloc, settings_key())
    return fs, (parts.netloc + parts.path).rstrip("/")


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended by ``/`` (URIs) or the OS separator (paths).

    >>> join("s3://b/jobs/", "j1", "manifest.json"), join("/out", "j1")
    ('s3://b/jobs/j1/manifest.json', '/out/j1')
    """
    if is_object_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def redact(location: str | os.PathLike[str]) -> str:
    """``location`` safe to print: no user, password or query string (presigned signatures).

    >>> redact("s3://AKIA:secret@bucket/jobs/j?X-Amz-Signature=abc")
    's3://bucket/jobs/j'
    >>> redact("/data/out/job")
    '/data/out/job'
    """
    text = os.fspath(location)
    if scheme_of(text) == "file" and not text.startswith("file://"):
        return text
    parts = urlsplit(text)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@lru_cache(maxsize=1)
def _local() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_REGION",
                "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN")


def settings_key() -> tuple[str | None, ...]:
    """The connection settings a cached client was made with: a client is reused only while
    they are unchanged (a test, or a long-lived process whose environment changes)."""
    return (str(os.getpid()), *(os.environ.get(k) for k in AWS_SETTINGS))


@lru_cache(maxsize=64)
def _object_fs(scheme: str, bucket: str, settings: tuple[str | None, ...]) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}/")
    return fs
