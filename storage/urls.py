"""Service URLs every process uses: the default broker, where the environment names it, and
masking passwords for logs (the producer, the worker and ``producer load`` all print URLs)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
BROKER_ENV = ("EMBED_BROKER_URL", "CELERY_BROKER_URL")
"""Variables naming the broker, first set wins (Celery's own name kept for its users)."""


def env_broker(env: Mapping[str, str]) -> str | None:
    """The broker URL the environment names (its first variable that is set), else None.

    >>> env_broker({"CELERY_BROKER_URL": "redis://h/0"})
    'redis://h/0'
    """
    return next((env[v] for v in BROKER_ENV if env.get(v)), None)


def mask_url(url: str | None) -> str:
    """A URL with its password replaced by ``***`` (safe for logs and status output).

    >>> mask_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    if not url:
        return str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None and "@" not in parts.netloc:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
