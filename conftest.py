"""Doctest collection of the source packages (``--doctest-modules`` in pyproject.toml).

Importing a module is how pytest finds its doctests; the modules behind an optional extra are
left out when that extra is not installed, so a producer-only install still runs ``make test``.
"""

from __future__ import annotations

from importlib.util import find_spec

OPTIONAL = {
    "onnxruntime": ["worker/model/session.py"],
    "torch": ["worker/export"],
}

collect_ignore = [path for dep, paths in OPTIONAL.items() if find_spec(dep) is None
                  for path in paths]
