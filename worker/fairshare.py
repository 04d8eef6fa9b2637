"""Fair share between jobs of equal priority on a Redis broker: one queue per job, taken in turn.

A job's shard tasks go to its own queue, ``<queue>.job.<job_id>`` (``shard_queue``): kombu's
Redis transport keeps one list per priority step of it, as of any queue. Whatever puts a
message in a job queue (a send, a task retry, kombu restoring a dead worker's unacked message)
adds the queue's name to the registry set ``_embedfleet.jobs.<queue>`` in the same MULTI
(worker/transport.py), so a job queue holding a message is always registered.

A worker consuming ``cpu`` reads the registry at most once a second (``FairCycle``) and BRPOPs
over ``cpu`` and every registered job queue of ``cpu``: kombu names all lists of the highest
priority step first, and within a step the queues in this cycle's order, and a queue a message
was just taken from goes to the back. So at equal priority a worker takes one shard from each
job with queued shards in turn, whatever their sizes and send times; a higher step still always
wins. The read also drops job queues whose lists are all empty (one Lua call, atomic with the
sends' MULTI), so the registry holds the jobs with queued work, not every job ever run.

``EMBED_FAIR_SHARE=0`` (producer and staging workers) sends to the plain queue: FIFO by send
time, the behaviour of workers older than this module, which do not consume job queues.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

SEP = "\x06\x16"
"""kombu's Redis separator between a queue name and its priority step."""
PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's default ``priority_steps``: one Redis list per step (0, the plain name, first)."""
JOB_MARK = ".job."
REGISTRY = "_embedfleet.jobs.{}"
REFRESH_S = 0.2
"""A worker re-reads the registry at most this often (one script call): a busy worker takes a
new job's queue into its next BRPOP within 0.2 s, so a high-priority job overtakes after the
shard running (at 1.0 s, three 0.3 s shards of the large job slipped in: test_priority.py)."""

_LIVE = """
local live = {}
for _, q in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local n = redis.call('LLEN', q)
  for i = 2, #ARGV do n = n + redis.call('LLEN', q .. ARGV[1] .. ARGV[i]) end
  if n == 0 then redis.call('SREM', KEYS[1], q) else live[#live + 1] = q end
end
return live
"""


def job_queue(base: str, job_id: str) -> str:
    """The queue of one job's shard tasks.

    >>> job_queue("cpu", "j1")
    'cpu.job.j1'
    """
    return f"{base}{JOB_MARK}{job_id}"


def base_of(queue: str) -> str | None:
    """The queue a job queue belongs to; None for any other queue.

    >>> base_of("gpu.job.20261205T0101Z-ab"), base_of("cpu")
    ('gpu', None)
    """
    base, mark, job = queue.partition(JOB_MARK)
    return base if mark and base and job else None


def registry_key(base: str) -> str:
    return REGISTRY.format(base)


def shard_queue(app: Any, base: str, job_id: str) -> str:
    """Where a job's shard tasks go: its job queue on a Redis broker (unless the app's settings
    say ``fair_share=False``), else ``base`` (RabbitMQ: no fair share)."""
    settings = getattr(app, "settings", None)
    if settings is not None and not getattr(settings, "fair_share", True):
        return base
    url = str(app.conf.broker_url or "")
    return job_queue(base, job_id) if url.startswith(("redis://", "rediss://")) else base


def list_keys(queue: str) -> list[tuple[str, int]]:
    """The Redis lists of ``queue``, one per priority step, in the order workers take them.

    >>> [k for k, _ in list_keys("cpu")][:2]
    ['cpu', 'cpu\\x06\\x163']
    """
    return [(queue if p == 0 else f"{queue}{SEP}{p}", p) for p in PRIORITY_STEPS]


def job_queues(client: Any, base: str) -> list[str]:
    """The registered job queues of ``base`` (read only: observers never prune)."""
    return sorted(m.decode() if isinstance(m, bytes) else str(m)
                  for m in client.smembers(registry_key(base)))


def live_job_queues(client: Any, base: str) -> list[str]:
    """The job queues of ``base`` holding messages; empty ones leave the registry (atomic)."""
    steps = [str(p) for p in PRIORITY_STEPS if p]
    found = client.eval(_LIVE, 1, registry_key(base), SEP, *steps)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in found]


def all_list_keys(client: Any, base: str) -> list[tuple[str, int]]:
    """The lists ``base``'s consumers take from: its own and its registered job queues'."""
    return [kp for q in (base, *job_queues(client, base)) for kp in list_keys(q)]


def queued_messages(client: Any, base: str) -> int:
    """Messages waiting for ``base``'s consumers, every job queue and priority (one pipeline)."""
    with client.pipeline(transaction=False) as pipe:
        for k, _ in all_list_keys(client, base):
            pipe.llen(k)
        return sum(int(n) for n in pipe.execute())


class FairCycle:
    """kombu's queue cycle (``update``/``consume``/``rotate``) over the queues a channel
    consumes and their registered job queues; ``fetch(base)`` gives a base's live job queues.
    """

    def __init__(self, fetch: Callable[[str], list[str]],
                 clock: Callable[[], float] = time.monotonic, every: float = REFRESH_S) -> None:
        self.fetch, self.clock, self.every = fetch, clock, every
        self.bases: list[str] = []
        self.items: list[str] = []
        self._at = float("-inf")
        self._failing = False

    def update(self, bases: Iterable[str]) -> None:
        """The queues the channel consumes changed: re-read the registry on the next consume."""
        self.bases = list(bases)
        self._at = float("-inf")
        self._merge(list(self.bases) + [q for q in self.items if base_of(q) in self.bases])

    def consume(self, n: int) -> list[str]:  # noqa: ARG002 (kombu passes the base count)
        if self.clock() - self._at >= self.every:
            self._refresh()
        return list(self.items)

    def rotate(self, last_used: str) -> None:
        """The queue a message came from goes to the back."""
        if last_used in self.items:
            self.items.remove(last_used)
            self.items.append(last_used)

    def _refresh(self) -> None:
        self._at = self.clock()
        wanted = list(self.bases)
        for base in self.bases:
            try:
                wanted += self.fetch(base)
            except Exception as exc:  # BRPOP reports the broker's state; keep the last list
                wanted += [q for q in self.items if base_of(q) == base]
                if not self._failing:
                    log.warning("cannot read the job queues of %r (%s: %s); consuming the "
                                "last known ones until the broker answers", base,
                                type(exc).__name__, exc)
                self._failing = True
                continue
            self._failing = False
        self._merge(wanted)

    def _merge(self, wanted: list[str]) -> None:
        """Keep the order of queues still wanted; new ones join at the back."""
        keep = set(wanted)
        items = [q for q in self.items if q in keep]
        self.items = items + [q for q in dict.fromkeys(wanted) if q not in set(items)]
