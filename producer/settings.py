"""The producer's environment, read once where a command (or the Python API) starts.

Click resolves each flag's own variable (``--broker``: EMBED_BROKER_URL, ``--home``:
EMBED_HOME, ...). What a command needs without a flag of its own is read here, once, by the
``producer`` group (``ctx.obj``) or by ``submit``/``Job`` when called from Python, and passed
down: the modules below never read ``os.environ``. (Staging processes read two test and tuning
switches at their own start: ``EMBED_STAGE_FAULTS`` in ``worker/staging/faults.py`` and
``EMBED_FAST_TOKENIZER`` in ``worker/staging/fastcount.py``.)
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

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProducerSettings:
        """Read the settings from an environment mapping (``os.environ``; tests pass a dict).

        >>> ProducerSettings.from_env({"EMBED_HOME": "/h", "EMBED_EVENTS": "1"}).events
        True
        """
        var = env_name("events")  # parsed as the worker parses it
        return cls(broker=env_broker(env), home=embedfleet_home(dict(env)),
                   events=WorkerSettings.from_env({var: env.get(var, "")}).events)
