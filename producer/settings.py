"""The producer's environment, read once where a command (or the Python API) starts.

Click resolves each flag's own variable (``--broker``: EMBED_BROKER_URL, ``--home``:
EMBED_HOME, ...). What a command needs without a flag of its own is read here, once, by the
``producer`` group (``ctx.obj``) or by ``submit``/``Job`` when called from Python, and passed
down: the modules below never read ``os.environ`` (but the crash tests' failpoints,
``EMBED_STAGE_FAULTS``, which staging processes read in ``worker/staging/faults.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from producer.models import embedfleet_home
from storage.urls import env_broker
from worker.settings import WorkerSettings, env_name


@dataclass(frozen=True)
class ProducerSettings:
    """What the producer takes from its environment."""

    broker: str | None = None
    """EMBED_BROKER_URL / CELERY_BROKER_URL (None: the local default or the job's record)."""
    home: Path = field(default_factory=lambda: embedfleet_home({}))
    """EMBED_HOME: the default model and the probe's figures (``~/.cache/embedfleet``)."""
    events: bool = False
    """EMBED_EVENTS=1: send ``task-sent`` events, as workers do (Flower is watching)."""
    fast_tokenizer: bool = True
    """EMBED_FAST_TOKENIZER: staging counts short documents with nanotoken where it matches."""
    fair_share: bool = True
    """EMBED_FAIR_SHARE=0: send shard tasks to the plain queue, not the job's (worker/fairshare.py)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProducerSettings:
        """Read the settings from an environment mapping (``os.environ``; tests pass a dict).

        >>> ProducerSettings.from_env({"EMBED_HOME": "/h", "EMBED_EVENTS": "1"}).events
        True
        """
        names = [env_name(n) for n in ("events", "fast_tokenizer", "fair_share")]  # as workers
        w = WorkerSettings.from_env({v: env[v] for v in names if v in env})
        return cls(broker=env_broker(env), home=embedfleet_home(dict(env)), events=w.events,
                   fast_tokenizer=w.fast_tokenizer, fair_share=w.fair_share)
