"""Producer: read a corpus, chunk it, build and submit embedding tasks.

``from producer import submit, Job`` gives the Python API (``producer/job.py``). They are loaded
on first use: ``import producer`` (and ``python -m producer --help``) stays free of pyarrow and
the bundle loader.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Job", "submit"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from producer import job

        return getattr(job, name)
    raise AttributeError(f"module 'producer' has no attribute {name!r}")
