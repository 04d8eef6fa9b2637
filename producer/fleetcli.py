"""The commands for running a shared fleet: ``cancel`` and ``metrics`` (README: Running a
shared fleet). ``producer resume`` and ``producer run --resume`` clear a cancel through
``uncancel``."""

from __future__ import annotations

import click

from storage.jobdir import JobDir
from worker.settings import DEFAULT_BROKER_URL, mask_url

BROKER_ENV = ["EMBED_BROKER_URL", "CELERY_BROKER_URL"]


def uncancel(jd: JobDir) -> None:
    """Clear a cancel before a job is continued, saying so."""
    from producer.cancel import uncancel as clear

    if clear(jd):
        click.echo(f"{jd.root}: cancel cleared; continuing the job")


@click.command()
@click.argument("job_dir", type=click.Path(exists=True, file_okay=False))
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


def register(main: click.Group) -> None:
    main.add_command(cancel)
    main.add_command(metrics)
