"""The commands for running a shared fleet: ``cancel`` and ``metrics`` (README: Running a
shared fleet). ``producer resume`` and ``producer run --resume`` clear a cancel through
``resume_cancelled``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from producer.options import JOB_DIR
from storage.jobdir import JobDir
from storage.jobfs import job_path
from storage.urls import DEFAULT_BROKER_URL, mask_url

BROKER_ENV = ["EMBED_BROKER_URL", "CELERY_BROKER_URL"]


def resume_cancelled(jd: JobDir) -> None:
    """Clear a cancel before a job is continued, saying so."""
    from producer.cancel import uncancel as clear

    if clear(jd):
        click.echo(f"{jd.root}: cancel cleared; continuing the job")


def continue_existing(root: Path, priority: str | None) -> None:
    """``producer run`` onto an existing job: clear a cancel, apply a given ``--priority``."""
    if not (root / "manifest.json").is_file():
        return
    resume_cancelled(JobDir.open(root))
    if priority:
        from producer.priority import set_priority

        set_priority(JobDir.open(root), priority)


@click.command()
@click.argument("job_dir", type=JOB_DIR)
def cancel(job_dir: str) -> None:
    """Stop JOB_DIR: no further shard starts anywhere in the fleet; running shards stop at their
    next batch boundary. Written shards stay valid; `producer resume` continues the job."""
    from producer.cancel import cancel_job

    jd = JobDir.open(job_dir)
    c = cancel_job(jd)
    if c.finished:
        click.echo(f"{jd.root}: already finished ({c.finished}); nothing to cancel")
        return
    again = " (it already was)" if c.already else ""
    click.echo(f"cancelled {jd.root}{again}: {c.done} of {c.shards} shard(s) done and kept; "
               f"continue with `{jd.manifest.continue_command(jd.root)}`")


@click.command()
@click.option("--broker", envvar=BROKER_ENV, default=DEFAULT_BROKER_URL, show_default=True,
              help="The fleet's Redis broker.")
@click.option("--queue", "-q", "queues", multiple=True, default=("cpu", "gpu"),
              show_default=True, help="Queues to report (repeat the option).")
@click.option("--jobs", "jobs", multiple=True, type=click.Path(file_okay=False),
              help="A job directory, or an output root holding job directories: per-job shard "
              "counts and per-worker throughput from their metrics shards (repeatable).")
@click.option("--serve", "port", type=click.IntRange(0, 65535), default=None,
              help="Serve GET /metrics on this port instead of printing once.")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address for --serve.")
def metrics(broker: str, queues: tuple[str, ...], jobs: tuple[str, ...], port: int | None,
            bind: str) -> None:
    """Fleet metrics in Prometheus text format: queue depth per queue, priority and job, tasks
    in flight, per-job shards, per-worker tokens, batch latency and failed attempts."""
    from producer.metrics import Collector, serve

    collector = Collector(broker, list(queues), list(jobs))
    if port is None:
        click.echo(collector.text(), nl=False)
        return
    server = serve(collector, bind, port)
    click.echo(f"serving http://{bind}:{server.server_address[1]}/metrics for "
               f"{mask_url(broker)}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.server_close()


ESTIMATE_WORKERS = click.option(
    "--workers", "estimate_workers", type=click.IntRange(1, 100_000), default=None,
    help="With --dry-run: also estimate the time on this many worker processes.")


def dry_run_estimate(corpus: str | None, out: str, *, broker: str | None, local: int | None,
                     workers: int | None, home: str | None = None, **kw: Any) -> None:
    """``--dry-run``: the counts, then the expected wall time on the current fleet (``broker``'s
    workers on the queue, or ``local`` processes for ``producer run``) and on ``workers``."""
    import os
    from dataclasses import replace

    from producer.dryrun import dry_run
    from producer.errors import UsageError
    from producer.estimate import measured_rate, probe_rate, wall_estimate
    from producer.settings import ProducerSettings

    if corpus is None:
        raise UsageError("--dry-run reads a CORPUS; `producer status OUT/JOB` shows a running "
                         "job's ETA")
    settings = kw.pop("settings", None) or ProducerSettings.from_env(os.environ)
    if home:
        settings = replace(settings, home=Path(home))
    res = dry_run(corpus, settings=settings, **kw)
    home_path = settings.home
    queue = "gpu" if kw.get("queue") == "gpu" else "cpu"
    rate = (measured_rate(job_path(out), res["bundle_path"], queue)
            or probe_rate(home_path, res["bundle_path"]))
    if rate is None:
        click.echo("  estimate  no measured rate yet for this model (no earlier job under "
                   f"{out}, no CPU probe in {home_path}): run a small job first")
        return
    cached = int(res["tokens"] * res["cached"] / res["chunks"]) if res["chunks"] else 0
    fleet, where = local, f"{local} local worker process(es)"
    if local is None:
        fleet, where = _fleet_size(broker, queue)
    click.echo(f"  rate      {rate.tokens_per_s:,.0f} tokens/s per worker process, from "
               f"{rate.source}")
    if not fleet:
        click.echo(f"  estimate  no worker on {where}: nothing would finish until one starts")
    for n, label in ((fleet, where), (workers, f"{workers} worker process(es)")):
        if n:
            s = wall_estimate(res["tokens"], cached, res["shards"], n, rate.tokens_per_s)
            click.echo(f"  estimate  {_hms(s)} on {label} (cache hits free; staging overlaps)")


def _fleet_size(broker: str | None, queue: str) -> tuple[int, str]:
    from producer.broker import connect
    from producer.errors import BrokerUnreachable
    from producer.estimate import fleet_processes

    try:
        n = fleet_processes(connect(broker), queue)
    except BrokerUnreachable as exc:
        return 0, f"the current fleet ({exc})"
    return n, f"the current fleet: {n} process(es) consuming {queue!r}"


def _hms(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def register(main: click.Group) -> None:
    main.add_command(cancel)
    main.add_command(metrics)
