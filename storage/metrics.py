"""Metric rows written beside the embeddings, and what is measured about the process."""

from __future__ import annotations

import os


def rss_mb() -> float:
    """Resident set size of this process now, in MB (rounded to 0.1)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError):
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

