"""embedfleet worker: the Celery app and the embedding core.

Kept light on purpose: importing ``worker`` (or ``worker.contract``/``storage.bundle``) never
imports onnxruntime and never reads the environment. ``celery -A worker`` asks for
``worker.app``; the module-level ``__getattr__`` builds it then, from ``os.environ``, once.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from worker.celery_app import default_app

        return default_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
