"""``producer``: submit corpora to the embedding fleet, run it locally, watch and resume jobs.

The job commands live here; the tools (export, bench, report) in ``producer/tools/cli.py``.
Commands raise; ``EXIT_CODES`` (``producer/exitcodes.py``) is the one place that turns an
error type into a message and an exit code (listed in ``producer --help`` and the README).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from producer.errors import Interrupted, JobFailed, UsageError
from producer.exitcodes import EXIT_CODES, USAGE_EXIT, _exit_code_help, exit_code  # noqa: F401
from producer.options import CORPUS, JOB_DIR, STAGE_PROCS, submit_options
from producer.settings import ProducerSettings
from producer.fleetcli import ESTIMATE_WORKERS, continue_existing, dry_run_estimate
from producer.fleetcli import register as register_fleet
from producer.fleetcli import resume_cancelled
from producer.tools.cli import register as register_tools
from storage.jobdir import JobDir
from storage.jobfs import job_path
from storage.urls import BROKER_ENV, DEFAULT_BROKER_URL, mask_url


class _Main(click.Group):
    """The ``producer`` group: maps every command's errors through ``EXIT_CODES``."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = USAGE_EXIT
            raise
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:
            code = exit_code(exc)
            if code is None:
                raise
            if code == 130:
                click.echo(f"\n{str(exc) or 'interrupted'}", err=True)
            else:
                click.echo(f"Error: {exc}", err=True)
            ctx.exit(code)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_exit_code_help())
@click.version_option(package_name="embedfleet")
@click.pass_context
def main(ctx: click.Context) -> None:
    """embedfleet: embed large corpora with a Celery fleet of ONNX Runtime workers.

    \b
    producer run corpus.jsonl            everything on this machine (private Redis + workers)
    producer submit corpus.jsonl --wait  send to a running fleet (celery -A worker worker -Q cpu)
    producer status OUT/JOB              progress, rejects, failed shards
    producer run --resume OUT/JOB        continue an interrupted `producer run`
    producer resume OUT/JOB              re-send shards whose messages were lost (a fleet job)
    producer export SRC --out DIR        turn a sentence-transformers model into a bundle
    """
    ctx.obj = ProducerSettings.from_env(os.environ)  # the environment, read once


def _settings() -> ProducerSettings:
    obj = click.get_current_context().find_root().obj
    return obj if isinstance(obj, ProducerSettings) else ProducerSettings.from_env(os.environ)


@main.command()
@click.argument("corpus", type=CORPUS)
@submit_options
@click.option("--broker", envvar=BROKER_ENV, default=DEFAULT_BROKER_URL, show_default=True,
              help="Celery broker URL (redis://, rediss://, amqp://).")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Show progress until the job finishes, then finalise it.")
@click.option("--dry-run", is_flag=True, help="Read and chunk only; print counts, how many "
              "chunks the cache already holds and the expected wall time. Submits nothing.")
@ESTIMATE_WORKERS
@click.option("--cache-url", envvar="EMBED_CACHE_URL", default=None,
              help="Redis holding the embedding cache (for --dry-run); default: the broker.")
@click.option("--stage-on", type=click.Choice(["producer", "fleet"]), default="producer",
              help="fleet: workers on the `stage` queue chunk CORPUS (same path for them).")
def submit(corpus: str, out: str, broker: str, wait: bool, dry_run: bool,
           estimate_workers: int | None, cache_url: str | None, stage_on: str,
           **kw: Any) -> None:
    """Stream, chunk and stage CORPUS (.jsonl, .jsonl.gz, .parquet), then send its tasks."""
    if dry_run:
        return dry_run_estimate(corpus, out, broker=broker, local=None,
                                workers=estimate_workers, cache_url=cache_url or broker,
                                settings=_settings(), **kw)
    from producer.job import submit as submit_job
    from producer.progress import fleet_progress
    from producer.broker import connect

    s = _settings()
    bar = fleet_progress(connect(broker, events=s.events),
                         "cpu" if kw["queue"] == "auto" else kw["queue"], mask_url(broker),
                         warn=lambda w: click.echo(w, err=True))
    job = submit_job(corpus, out, broker=broker, log=click.echo, settings=s,
                     progress=bar if wait else False, stage_on=stage_on, **kw)
    click.echo(f"job {job.path.name}\n{job.path}")
    if wait:
        _finish(job, progress=bar)


@main.command()
@click.argument("corpus", type=CORPUS, required=False)
@submit_options
@click.option("--resume", "resume_from", type=JOB_DIR,
              default=None, help="Continue the job OUT/JOB (e.g. after Ctrl-C): the private "
              "fleet starts again, done shards are kept, pending ones are sent.")
@click.option("--workers", "-w", type=click.IntRange(1, 64), default=None,
              help="Local worker processes (default: 1 process using every core).")
@click.option("--threads", type=click.IntRange(1, 256), default=None, envvar="EMBED_THREADS",
              help="ONNX Runtime threads per worker (default: cores / workers).")
@click.option("--broker", default=None, help="Use this broker instead of a private Redis.")
@click.option("--cache-url", default=None, envvar="EMBED_CACHE_URL",
              help="Use this Redis for the cache (default: the private Redis, kept on disk "
              "under EMBED_HOME/redis).")
@click.option("--home", type=click.Path(file_okay=False), envvar="EMBED_HOME", default=None,
              help="Where the default model and the local cache live (default "
              "~/.cache/embedfleet).")
@click.option("--dry-run", is_flag=True, help="Read and chunk CORPUS only; print counts and "
              "the expected wall time on --workers processes. Runs nothing.")
def run(corpus: str | None, out: str, resume_from: str | None, workers: int | None,
        threads: int | None, broker: str | None, cache_url: str | None, home: str | None,
        dry_run: bool, **kw: Any) -> None:
    """Embed CORPUS on this machine: private Redis, local Celery workers, same code path.

    Run again onto an existing --out/--job-id (same corpus, same chunking), or with
    --resume OUT/JOB, to continue an interrupted job.
    """
    from producer.job import Job, new_job_id
    from producer.models import resolve_model
    from producer.resume import interrupted_message, plan_run

    if (corpus is None) == (resume_from is None):
        raise UsageError("give CORPUS to embed, or --resume OUT/JOB to continue a job")
    if dry_run:
        return dry_run_estimate(corpus, out, broker=None, local=workers or 1, workers=None,
                                home=home, cache_url=cache_url, settings=_settings(), **kw)
    home_path = Path(home) if home else _settings().home
    root = job_path(resume_from) if resume_from else job_path(out) / (kw["job_id"] or new_job_id())
    ctx = click.get_current_context()
    given = {k for k in kw if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    continue_existing(root, kw["priority"] if "priority" in given else None)
    plan = plan_run(root, corpus, kw, given, resume=resume_from is not None,
                    model_path=lambda m: resolve_model(m, home_path))
    if plan.pending == 0:  # every shard is done or failed: nothing to start
        click.echo(plan.note)
        _finish(Job(plan.root, settings=_settings()), progress=False)
        return
    try:
        _run_locally(plan, home_path, workers=workers,
                     threads=threads, broker=broker, cache_url=cache_url)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(root)) from None


def _run_locally(plan: Any, home: Path, *, workers: int | None,
                 threads: int | None, broker: str | None, cache_url: str | None) -> None:
    """Start the private fleet; submit a new job to it (``plan.corpus``) or continue one."""
    from producer.job import submit as submit_job
    from producer.local import fleet_roots, local_fleet, preload_spec
    from producer.models import resolve_model
    from storage.manifest import RUN_MADE_BY

    bundle = resolve_model(plan.options["model"], home)  # export the default once
    with local_fleet(workers=workers or 1, threads=threads, home=home, queue=plan.queue,
                     broker=broker, cache_url=cache_url,
                     extra_env={"EMBED_HOME": str(home), **fleet_roots(plan.root.parent, bundle),
                                "EMBED_PRELOAD": preload_spec(plan, bundle, home)}
                     ) as (broker_url, _cache, fleet):
        click.echo(f"local fleet: {workers or 1} worker(s) on {mask_url(broker_url)}")
        if plan.note:
            click.echo(plan.note)
        if plan.corpus is None:
            job = plan.start(broker_url, log=click.echo, settings=_settings())
        else:
            job = submit_job(plan.corpus, plan.root.parent, broker=broker_url, log=click.echo,
                             home=home, made_by=RUN_MADE_BY, progress=True, settings=_settings(),
                             **dict(plan.options, job_id=plan.root.name))
        fleet.wait_ready()
        _finish(job, progress=True)


def _finish(job: Any, progress: Any) -> None:
    from producer.progress import summary_lines

    from producer.reconcile import reconcile_seconds

    st = job.wait(progress=progress, stall_s=reconcile_seconds())
    click.echo("\n".join(summary_lines(job, st)))
    if st.status == "cancelled":
        raise JobFailed(f"cancelled with {st.done} of {st.shards} shard(s) done; continue "
                        f"with `{job.dir.manifest.continue_command(job.path)}`")
    if st.status != "succeeded":
        raise JobFailed(f"{st.failed} of {st.shards} shard(s) failed; "
                        f"see `producer status {job.path}`")


@main.command()
@click.argument("job_dir", type=JOB_DIR)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(job_dir: str, as_json: bool) -> None:
    """Progress of JOB_DIR: shards, chunks, rejects, failed shards; finalises a finished job."""
    from producer.job import Job
    from producer.progress import status_lines

    st = Job(job_dir, settings=_settings()).status()
    if as_json:
        click.echo(json.dumps({**st.__dict__, "tokens_per_s": st.tokens_per_s, "eta_s": st.eta_s},
                              indent=2))
        return
    click.echo("\n".join(status_lines(st)))


@main.command()
@click.argument("job_dir", type=JOB_DIR)
@click.option("--broker", envvar=BROKER_ENV, default=None,
              help="Celery broker URL (default: the one the job was submitted to, from its "
              "manifest; a URL whose password was masked there must be given again).")
@click.option("--wait/--no-wait", default=False, help="Wait for the job to finish.")
@STAGE_PROCS
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default=None,
              help="Change the job's priority: its pending shards are re-sent with it.")
def resume(job_dir: str, broker: str | None, wait: bool, stage_procs: int | None,
           priority: str | None) -> None:
    """Finish staging JOB_DIR and re-send every shard without valid output; safe to repeat.

    A job made by `producer run` is continued with `producer run --resume JOB_DIR` instead.
    """
    from producer.job import Job
    from producer.progress import fleet_progress
    from producer.reconcile import held_now
    from producer.resume import fleet_broker, refuse_run_job
    from producer.broker import connect

    jd = JobDir.open(job_dir)
    refuse_run_job(jd)
    url = fleet_broker(jd, broker)
    resume_cancelled(jd)
    if priority:
        from producer.priority import set_priority

        set_priority(jd, priority)
    s = _settings()
    job = Job(job_dir, broker=url, settings=s)
    bar = fleet_progress(connect(url, events=s.events), jd.manifest.queue, mask_url(url),
                         warn=lambda w: click.echo(w, err=True))
    bar.enabled = wait
    held = held_now(jd)  # a shard a live worker is computing is not re-sent
    n = job.resume(stage_procs=stage_procs, progress=bar, skip=held)
    msg = f"re-sent {n} shard(s)" if n else "nothing to resume: every shard is done"
    if held:
        msg = f"re-sent {n} shard(s); {len(held)} held by live workers, not re-sent"
    click.echo(msg)
    if wait and n:
        _finish(job, progress=bar or True)


register_tools(main)
register_fleet(main)
