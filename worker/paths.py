"""Before a task does anything: accept only the job directories and model bundles under this
fleet's roots.

A task message names a job directory, and through its manifest a bundle path (and, for a stage
task, the corpus it reads). Anyone who can write to the broker can put any path there; without a
check a worker would write shards under it, load any file as a model and stage any file it can
read into a job directory. With ``EMBED_JOB_ROOTS`` / ``EMBED_MODEL_ROOTS`` (and
``EMBED_INPUT_ROOTS`` for corpora, which defaults to the job roots) set, a path is
accepted only when it is absolute, has no ``..`` component, and, with every symlink resolved
(the directory itself and its top-level entries), stays under one of the roots. A rejected task
logs one line naming the path and is dropped (Celery ``Ignore``: acknowledged, never retried),
before anything is read from or written to the job directory. Unset roots accept every path,
as before; a shared fleet must set both (docs/fleet.md). A root may be a bucket prefix
(``s3://bucket/jobs/``, ``s3://bucket/models/``): a URI is then accepted only under a prefix of the same
scheme and bucket (``check_uri_under``), and a URI is never accepted under a local root, nor a
path under a bucket prefix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from storage.jobdir import JobDir
from storage.jobfs import AnyPath, job_path
from storage.objstore import is_object_uri, redact
from worker.errors import PathNotAllowed
from worker.settings import WorkerSettings, env_name

log = logging.getLogger(__name__)


def check_under(path: str | os.PathLike[str], roots: Sequence[str], what: str) -> AnyPath:
    """``path`` resolved, when it may be used under ``roots`` (any path when there are none).

    >>> check_under("/data/out/job", ["/data/out"], "job directory")
    PosixPath('/data/out/job')
    >>> check_under("/data/out/../etc", ["/data/out"], "job directory")
    Traceback (most recent call last):
    ...
    worker.errors.PathNotAllowed: job directory /data/out/../etc: '..' is not allowed
    """
    if is_object_uri(path) or any(is_object_uri(r) for r in roots):
        return _check_uri_under(os.fspath(path), roots, what)
    raw = Path(path)
    if not roots:
        return raw
    if not raw.is_absolute():
        raise PathNotAllowed(f"{what} {raw}: not an absolute path")
    if ".." in raw.parts:
        raise PathNotAllowed(f"{what} {raw}: '..' is not allowed")
    resolved = raw.resolve()
    bases = [Path(r).resolve() for r in roots if not is_object_uri(r)]
    targets = [resolved, *_link_targets(resolved)]
    for target in targets:
        if not any(target == b or target.is_relative_to(b) for b in bases):
            via = "" if target == raw else f" (resolves to {target})"
            raise PathNotAllowed(f"{what} {raw}{via} is outside {os.pathsep.join(roots)}")
    return resolved


def _check_uri_under(uri: str, roots: Sequence[str], what: str) -> AnyPath:
    """A path or bucket URI against roots that may hold bucket prefixes: a URI is accepted
    only under a prefix of the same scheme and bucket (ending at a ``/``), a path only under
    a local root; ``..`` is refused in both.

    >>> _check_uri_under("s3://bkt/jobs/j1", ["s3://bkt/jobs/"], "job directory")
    StorePath('s3://bkt/jobs/j1')
    >>> _check_uri_under("s3://bkt/jobs-evil/j1", ["s3://bkt/jobs"], "job directory")
    Traceback (most recent call last):
    ...
    worker.errors.PathNotAllowed: job directory s3://bkt/jobs-evil/j1 is outside s3://bkt/jobs
    """
    if not is_object_uri(uri):
        local = [r for r in roots if not is_object_uri(r)]
        if local or not roots:
            return check_under(uri, local, what)
        raise PathNotAllowed(f"{what} {uri} is outside {os.pathsep.join(roots)} "
                             "(bucket prefixes only)")
    return job_path(check_uri_under(uri, roots, what))


def check_uri_under(uri: str, roots: Sequence[str], what: str) -> str:
    """``uri`` when it is under one of the bucket prefixes in ``roots`` (any when none).

    >>> check_uri_under("s3://data/models/m1", ["s3://data/models/"], "model bundle")
    's3://data/models/m1'
    >>> check_uri_under("s3://other/models/m1", ["s3://data/models/"], "model bundle")
    Traceback (most recent call last):
    ...
    worker.errors.PathNotAllowed: model bundle s3://other/models/m1 is outside s3://data/models/
    """
    if not roots:
        return uri
    parts = urlsplit(uri)
    segments = parts.path.split("/")
    for bad in ("..", "."):
        if bad in segments:
            raise PathNotAllowed(f"{what} {redact(uri)}: '{bad}' is not allowed")
    for root in (r for r in roots if is_object_uri(r)):
        base = urlsplit(root)
        prefix = base.path.rstrip("/")
        if ((parts.scheme.lower(), parts.hostname) == (base.scheme.lower(), base.hostname)
                and (parts.path.rstrip("/") == prefix or parts.path.startswith(prefix + "/"))):
            return uri
    shown = os.pathsep.join(redact(r) for r in roots)
    raise PathNotAllowed(f"{what} {redact(uri)} is outside {shown}")


def open_allowed_job(settings: WorkerSettings, job_dir: str | os.PathLike[str], *,
             stage: bool = False) -> JobDir:
    """The task's job directory, after its path and its manifest's bundle path are checked;
    for a stage task (``stage=True``) also the bundle its staging loads the tokenizer from and
    the corpus it reads (``EMBED_INPUT_ROOTS``, else the job roots).

    Raises celery's ``Ignore`` (after one log line) when any is outside the roots.
    """
    from celery.exceptions import Ignore

    try:
        root = check_under(job_dir, settings.job_roots, f"job directory ({env_name('job_roots')})")
        job = JobDir.open(root)
        m = job.manifest
        bundles = [str((m.model or {}).get("bundle_path", ""))]
        staged_with = ((m.staging or {}).get("config") or {}).get("bundle_path")
        if stage and staged_with:  # manifests before issue 25 also stored it here
            bundles.append(str(staged_with))
        for bundle in dict.fromkeys(bundles):
            check_under(bundle, settings.model_roots, f"model bundle ({env_name('model_roots')})")
        if stage:
            check_under(str(m.input.get("path", "")), settings.corpus_roots,
                        f"corpus ({_corpus_var(settings)})")
    except PathNotAllowed as exc:
        log.error("rejected task: %s; nothing written, not retried", exc)
        raise Ignore(str(exc)) from None
    return job


def _corpus_var(settings: WorkerSettings) -> str:
    if settings.input_roots or not settings.job_roots:
        return env_name("input_roots")
    return f"{env_name('input_roots')} unset: {env_name('job_roots')}"


def _link_targets(directory: Path) -> list[Path]:
    """Where the symlinks directly inside ``directory`` point (a shard dir may be a link)."""
    try:
        entries = list(directory.iterdir()) if directory.is_dir() else []
    except OSError:
        return []
    return [e.resolve() for e in entries if e.is_symlink()]
