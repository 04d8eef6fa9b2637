"""Model bundles in a bucket: ``--model s3://bucket/models/minilm`` runs from a local copy.

ONNX Runtime and the tokenizer read local files, so a bundle URI is copied once per machine into
``EMBED_HOME/bundles/<key>/``, where ``key`` is made of the bundle's fingerprints (every
variant's, ``Bundle.fingerprint``): every object under the URI is copied into a temporary
directory beside the cache, opened, fingerprinted, and renamed into place (a reader never sees
half a copy; two processes fetching at once both end up with the one copy). A later process
finds the copy from the URI's listing (each object's name, size and modification time hash
to the key in ``bundles/listing/``): a bundle replaced at the same URI lists differently, is
fetched again and is another bundle with other fingerprints.

A job pins its bundle: the manifest records the fingerprints (``model.fingerprints``) next to
the URI. A worker opens a job's bundle with those (``job_bundle_dir``): a copy already cached
under them is used without a single request; otherwise the URI is fetched and must still hold
that bundle, else ``BundleChanged`` names the URI and both fingerprints. So a job never mixes
two models, whatever is written to the URI while it runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from storage.bundle import CONFIG_NAME, Bundle, load_bundle
from storage.errors import BundleError
from storage.objstore import is_object_uri, redact, resolve

_COPY_BLOCK = 8 << 20


class BundleChanged(BundleError):
    """The bundle at a job's model URI is no longer the one the job was submitted with."""


def default_home(env: Mapping[str, str] | None = None) -> Path:
    """``EMBED_HOME``, default ``~/.cache/embedfleet`` (honours ``XDG_CACHE_HOME``)."""
    env = os.environ if env is None else env
    if env.get("EMBED_HOME"):
        return Path(env["EMBED_HOME"]).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "embedfleet"


def bundle_key(fingerprints: Mapping[str, str]) -> str:
    """The cache directory name of a bundle with these per-variant fingerprints.

    >>> bundle_key({"fp32": "ab", "int8": "cd"}) == bundle_key({"int8": "cd", "fp32": "ab"})
    True
    """
    text = json.dumps(dict(sorted(fingerprints.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def open_bundle(location: str | os.PathLike[str], home: Path,
                expect: Mapping[str, str] | None = None) -> Bundle:
    """``load_bundle`` of a path, or of the local copy of a bundle URI; the bundle's
    ``location`` is then the URI without credentials (what a manifest records)."""
    text = os.fspath(location)
    if not is_object_uri(text):
        return load_bundle(text)
    return replace(load_bundle(fetch_bundle(text, home, expect=expect)), location=redact(text).rstrip("/"))


def job_bundle_dir(bundle_path: str, fingerprints: Mapping[str, str] | None,
                   home: Path) -> str:
    """Where a job's bundle is on this machine: its path, or the checked local copy of its
    URI (``fingerprints``: the manifest's ``model.fingerprints``, which the copy must have).

    Raises:
        BundleChanged: the URI holds another bundle than the job's.
        BundleError, OSError: the bundle cannot be read.
    """
    if not is_object_uri(bundle_path):
        return bundle_path
    return str(fetch_bundle(bundle_path, home, expect=fingerprints or None))


def fetch_bundle(uri: str, home: Path, *, expect: Mapping[str, str] | None = None) -> Path:
    """The local copy of the bundle at ``uri`` (copied on first use), under ``home/bundles``.

    ``expect``: the fingerprints the bundle must have; a copy cached under them is returned
    without contacting the store.

    Raises:
        BundleChanged: ``expect`` is given and the bundle at ``uri`` has other fingerprints.
        BundleError: nothing at ``uri``, or what is there is not a valid bundle.
        OSError: the store cannot be read.
    """
    root = Path(home) / "bundles"
    if expect and (root / bundle_key(expect) / CONFIG_NAME).is_file():
        return root / bundle_key(expect)
    fs, prefix = resolve(uri)
    listing = _listing(fs, prefix, uri)
    index = root / "listing" / hashlib.sha256(
        json.dumps([redact(uri).rstrip("/"), listing]).encode()).hexdigest()[:32]
    key = index.read_text(encoding="utf-8").strip() if index.is_file() else ""
    if not key or not (root / key / CONFIG_NAME).is_file():
        key = _copy(fs, prefix, listing, root, uri)
        _write_text(index, key)
    dest = root / key
    if expect and key != bundle_key(expect):
        now = load_bundle(dest).fingerprint("fp32")
        raise BundleChanged(
            f"model bundle {redact(uri)} changed since the job was submitted: it now holds a "
            f"bundle with fp32 fingerprint {now[:16]}, the job was submitted with "
            f"{str(expect.get('fp32', '?'))[:16]}; a job never mixes two models: put the "
            "job's bundle back at this URI, or submit a new job for the new bundle")
    return dest


def _listing(fs: object, prefix: str, uri: str) -> list[tuple[str, int, int]]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True,  # type: ignore[attr-defined]
                                               allow_not_found=True))
    files = sorted((i.path[len(prefix) + 1:], int(i.size), int(i.mtime_ns or 0))
                   for i in infos if i.type == pafs.FileType.File)
    if not files:
        raise BundleError(f"{redact(uri)}: no model bundle there (no objects under this prefix; "
                          "upload a bundle directory made by `producer export`)")
    return files


def _copy(fs: object, prefix: str, listing: list[tuple[str, int, int]], root: Path,
          uri: str) -> str:
    """Copy every object into a fresh directory, check it is a bundle, move it to its key."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        for name, _, _ in listing:
            target = tmp / name
            if ".." in Path(name).parts:
                raise BundleError(f"{redact(uri)}: object name {name!r} leaves the bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(f"{prefix}/{name}") as src, \
                    open(target, "wb") as out:  # type: ignore[attr-defined]
                for block in iter(lambda: src.read(_COPY_BLOCK), b""):
                    out.write(block)
        try:
            bundle = load_bundle(tmp)
        except BundleError as exc:
            raise BundleError(f"{redact(uri)}: not a valid model bundle ({exc})") from None
        key = bundle_key({p: bundle.fingerprint(p) for p in bundle.variants})
        dest = root / key
        if not (dest / CONFIG_NAME).is_file():
            try:
                os.rename(tmp, dest)
            except OSError:  # another process put the same bundle there first
                if not (dest / CONFIG_NAME).is_file():
                    raise
        return key
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
