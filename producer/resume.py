"""Continue a job that already has a directory, and never send its shards into the void.

``producer run --resume OUT/JOB`` (or ``producer run CORPUS`` onto an existing OUT/JOB) plans
here: a staged job keeps its done shards and only the pending ones are sent to the restarted
private fleet; a job whose staging was interrupted continues staging from the ledger's last
durable point (``producer.ingest``: no record twice, none skipped). A different corpus (checksum) or different chunking settings is a
``JobConflict`` naming both values, never a silent mix. ``producer resume`` on a fleet uses the
broker the manifest records (without a password: a masked one is never used to reconnect) and
refuses a ``producer run`` job, whose private Redis is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from producer.errors import JobConflict, UsageError
from producer.spec import JobOptions, chunking_of, stage_config
from worker.staging.corpus import file_checksum
from storage.jobdir import JobDir
from storage.objread import input_location, location_size
from storage.objstore import is_object_uri, redact
from storage.manifest import RUN_MADE_BY  # noqa: F401  (also imported from here)
from storage.urls import DEFAULT_BROKER_URL

CHUNK_OPTIONS = ("max_tokens", "overlap", "prefix", "text_field", "id_field", "shard_tokens")
"""Options that change the staged chunks; an existing job must be continued with its own."""


@dataclass
class RunPlan:
    """What ``producer run`` does with OUT/JOB: stage ``corpus`` (None: send pending shards)."""

    root: Path
    corpus: str | None
    options: dict[str, Any] = field(default_factory=dict)
    queue: str = "cpu"
    note: str = ""
    pending: int = -1
    """Shards to send (-1: not staged yet); 0 means no fleet is needed."""

    def start(self, broker: str, log: Callable[[str], Any], settings: Any = None) -> Any:
        """Send the pending shards to ``broker``, or continue staging; the ``Job``. (A plan
        with a ``corpus`` is a new job: the caller submits it.)"""
        from producer.job import Job
        from producer.progress import Progress

        assert self.corpus is None, "a new job is submitted, not resumed; this is a bug"
        job = Job(self.root, broker=broker, settings=settings)
        bar = Progress(enabled=self.pending < 0)
        n = job.resume(stage_procs=self.options.get("stage_procs"), progress=bar)
        bar.close()
        log(f"sent {n} pending shard(s)")
        return job


def plan_run(root: Path, corpus: str | None, options: Mapping[str, Any],
             given: Collection[str], *, resume: bool, model_path: Any) -> RunPlan:
    """Decide how ``producer run`` continues (or starts) the job at ``root``.

    ``options`` are the submit options of the command; ``given`` the ones set explicitly.
    With ``--resume`` only given options are compared with the job's; with a CORPUS (the
    command run again) all chunking options are. ``model_path(model)`` resolves ``--model``.
    """
    queue = "gpu" if options.get("queue") == "gpu" else "cpu"
    if not resume and not (root / "manifest.json").is_file():
        return RunPlan(root, corpus, dict(options, queue=queue), queue=queue)
    job = JobDir.open(root)
    m = job.manifest
    if corpus is not None:
        check_same_corpus(job, corpus)
    if not resume or "model" in given:
        asked = _bundle_location(model_path(options.get("model")))
        if asked != _bundle_location(m.bundle_path):
            raise JobConflict(f"--model: {job.root} is embedded with {m.bundle_path}"
                              f", this command asks for {asked}; use the job's model or "
                              "another --job-id")
    keys = [k for k in CHUNK_OPTIONS if not resume or k in given]
    check_same_chunking(job, requested_chunking(job, options), keys)
    check_same_dense(m, options, given if resume else DENSE_KEYS)
    if m.staged:
        states = job.shard_states()
        done = sum(s.state == "done" for s in states)
        pending = sum(s.state == "pending" for s in states)
        return RunPlan(job.root, None, {"model": m.bundle_path}, queue=m.queue,
                       pending=pending, note=(
            f"resuming {job.root}: {done} of {len(states)} shard(s) done and kept, "
            f"{pending} pending"))
    if corpus is None:
        check_same_corpus(job, m.input["path"])
    return RunPlan(job.root, None, {"model": m.bundle_path,
                                    "stage_procs": options.get("stage_procs")},
                   queue=m.queue, note=f"resuming {job.root}: staging continues from its "
                   "last durable point; the shards staged so far are kept")


DENSE_KEYS = ("dim", "dtype")


def check_same_dense(m: Any, options: Mapping[str, Any], given: Collection[str]) -> None:
    """``--dim``/``--dtype`` of the command (those ``given``) must be the job's."""
    have = {"dim": (m.dense or {}).get("dim"), "dtype": (m.dense or {}).get("dtype", "float32")}
    dim = options.get("dim")
    want = {"dim": None if dim == m.model.get("dim") else dim,
            "dtype": options.get("dtype") or "float32"}
    for k in (k for k in DENSE_KEYS if k in given and want[k] != have[k]):
        was = f"--{k} {have[k]}" if have[k] is not None else f"the model's {m.model.get('dim')}"
        raise JobConflict(f"--{k} {want[k]}: {m.job_id} was submitted with {was}; "
                          "a job has one dense dim and dtype (use another --job-id)")


def check_same_corpus(job: JobDir, corpus: str) -> None:
    """JobConflict unless ``corpus`` has the checksum the job recorded (names both)."""
    rec = job.manifest.input
    if not rec.get("sha256"):  # staging stopped before the checksum was recorded: by size,
        try:  # the plan check in producer.ingest covers the rest
            size = location_size(corpus)
        except OSError:
            size = -1
        if size == rec.get("bytes"):  # check in producer.ingest covers the rest
            return
    try:
        sha = file_checksum(corpus)
    except OSError as exc:
        raise JobConflict(f"{job.root} was staged from {rec.get('path')}, which cannot be read "
                          f"now ({exc})") from None
    if sha != rec.get("sha256"):
        raise JobConflict(
            f"{job.root} holds corpus {rec.get('path')} (sha256 {str(rec.get('sha256'))[:16]}), "
            f"not {input_location(corpus)} (sha256 {sha[:16]}): a different file; "
            "use another --job-id")


def requested_chunking(job: JobDir, options: Mapping[str, Any]) -> dict[str, Any]:
    """The chunking settings ``options`` would record, with the job's bundle prompts."""
    from storage.bundlecache import default_home, open_bundle

    opts, _ = JobOptions.pick(dict(options))
    m = job.manifest
    bundle = open_bundle(m.bundle_path, default_home(), expect=m.model.get("fingerprints"))
    return chunking_of(stage_config(bundle, opts))


def _bundle_location(model: Any) -> str:
    """A bundle as a manifest names it: a URI without credentials, or an absolute path."""
    text = str(model)
    return redact(text).rstrip("/") if is_object_uri(text) else str(Path(text).resolve())


def check_same_chunking(job: JobDir, requested: Mapping[str, Any],
                        keys: Collection[str]) -> None:
    """JobConflict naming each of ``keys`` whose value differs from the job's."""
    have = job.manifest.chunking
    diff = [k for k in keys if have.get(k) != requested.get(k)]
    if diff:
        both = "; ".join(f"--{k.replace('_', '-')}: the job has {have.get(k)!r}, this command "
                         f"asks for {requested.get(k)!r}" for k in diff)
        raise JobConflict(f"{job.root} was chunked with other settings ({both}); continue it "
                          "with the job's settings, or use another --job-id")


def fleet_broker(job: JobDir, broker: str | None) -> str:
    """``--broker`` if given, else the broker the job was submitted to (never a masked URL)."""
    if broker:
        return broker
    hint = job.manifest.broker_hint
    if not hint:
        return DEFAULT_BROKER_URL
    if "***" in hint:
        raise UsageError(f"--broker: {job.root} was submitted to {hint} and its password is "
                         "not recorded; pass --broker with the full URL")
    return str(hint)


def refuse_run_job(job: JobDir) -> None:
    """A ``producer run`` job's broker and workers are gone: say how to continue it."""
    if job.manifest.made_by == RUN_MADE_BY:
        raise JobConflict(f"{job.root} was made by `producer run`, whose private Redis and "
                          f"workers are gone; continue it with `producer run --resume "
                          f"{job.root}`")


def interrupted_message(root: Path) -> str:
    """What Ctrl-C of ``producer run`` prints: the exact command that continues the job."""
    if (root / "manifest.json").is_file():
        return (f"interrupted: workers and Redis stopped; continue with "
                f"`producer run --resume {root}`")
    return "interrupted before the job was created: run the same command again"

