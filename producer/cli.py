"""``producer``: submit corpora to the embedding fleet, run it locally, watch and resume jobs.

The job commands live here; the tools (export, bench, report) in ``producer/tools/cli.py``.
Commands raise; ``EXIT_CODES`` (``producer/exitcodes.py``) is the one place that turns an
error type into a message and an exit code (listed in ``producer --help`` and the README).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from producer.errors import Interrupted, JobFailed, UsageError
from producer.exitcodes import EXIT_CODES, USAGE_EXIT, _exit_code_help, exit_code  # noqa: F401
from producer.tools.cli import register as register_tools
from storage.jobdir import JobDir
from worker.settings import DEFAULT_BROKER_URL, mask_url


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


STAGE_PROCS = click.option("--stage-procs", type=click.IntRange(1, 256), envvar="EMBED_STAGE_PROCS",
                           help="Processes that read and chunk the corpus (default: cores).")


def submit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``submit`` (also ``--dry-run``) and ``run`` share; all but ``--out`` reach
    ``producer.job.submit`` as keyword arguments."""
    opts = [
        click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True,
                     envvar="EMBED_OUT", help="Output root; the job lands in OUT/<job-id>/."),
        click.option("--job-id", default=None, help="Job id (A-Z a-z 0-9 _ . -); default: "
                     "a timestamp plus random suffix."),
        click.option("--model", "-m", default=None, envvar="EMBED_MODEL",
                     help="Bundle directory (see `producer export`); default: all-MiniLM-L6-v2, "
                     "exported once into EMBED_HOME."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "bf16"]),
                     default="auto", show_default=True, envvar="EMBED_PRECISION",
                     help="auto: fp16 on gpu workers; on cpu workers the fastest of CPU-EP "
                     "int8/fp32 and OpenVINO fp32/bf16 that passes its quality gate (measured "
                     "once per machine; EMBED_CPU_PROVIDER overrides). bf16: OpenVINO EP."),
        click.option("--queue", "-q", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                     show_default=True, help="Where tasks go; auto = gpu when a worker consumes "
                     "the gpu queue, else cpu."),
        click.option("--text-field", default="text", show_default=True,
                     help="JSON field with the text."),
        click.option("--id-field", default="id", show_default=True,
                     help="JSON field with the document id (missing: the line number)."),
        click.option("--max-tokens", type=click.IntRange(8, None), default=None,
                     help="Chunk window in tokens incl. special tokens (default and maximum: "
                     "the model's window, e.g. 256 for MiniLM, 8192 for BGE-M3)."),
        click.option("--overlap", type=click.IntRange(0, None), default=0, show_default=True,
                     help="Tokens shared by consecutive chunks of one document."),
        click.option("--prefix", type=click.Choice(["passage", "query", "none"]),
                     default="passage", show_default=True,
                     help="Which prefix from the bundle config to prepend (if it has one)."),
        click.option("--max-line-bytes", type=click.IntRange(1, None), default=64 * 2**20,
                     show_default=True, help="Longer JSONL lines are rejected, never read whole."),
        click.option("--shard-tokens", type=click.IntRange(64, None), default=32768,
                     show_default=True, help="Real tokens per task (one input/output shard)."),
        click.option("--max-batch-tokens", type=click.IntRange(16, None), default=None,
                     envvar="EMBED_MAX_BATCH_TOKENS",
                     help="Padded tokens per inference batch (default: the worker's; 4096 on "
                     "CPU; on GPU sized to its free memory)."),
        click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                     help="Deliveries of one shard before it is marked failed."),
        click.option("--outputs", default="dense", show_default=True,
                     help="Comma-separated: dense, sparse, colbert (sparse and colbert need a "
                     "BGE-M3 bundle; dense is always written)."),
        STAGE_PROCS,
        click.option("--split-bytes", type=click.IntRange(4096, None), default=16 * 2**20,
                     envvar="EMBED_SPLIT_BYTES", help="Input bytes per split (16 MiB)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_exit_code_help())
@click.version_option(package_name="embedfleet")
def main() -> None:
    """embedfleet: embed large corpora with a Celery fleet of ONNX Runtime workers.

    \b
    producer run corpus.jsonl            everything on this machine (private Redis + workers)
    producer submit corpus.jsonl --wait  send to a running fleet (celery -A worker worker -Q cpu)
    producer status OUT/JOB              progress, rejects, failed shards
    producer run --resume OUT/JOB        continue an interrupted `producer run`
    producer resume OUT/JOB              re-send shards whose messages were lost (a fleet job)
    producer export SRC --out DIR        turn a sentence-transformers model into a bundle
    """


BROKER_ENV = ["EMBED_BROKER_URL", "CELERY_BROKER_URL"]


@main.command()
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False))
@submit_options
@click.option("--broker", envvar=BROKER_ENV, default=DEFAULT_BROKER_URL, show_default=True,
              help="Celery broker URL (redis://, rediss://, amqp://).")
@click.option("--wait/--no-wait", default=False, show_default=True,
              help="Show progress until the job finishes, then finalise it.")
@click.option("--dry-run", is_flag=True, help="Read and chunk only; print counts and how many "
              "chunks the cache already holds. Submits nothing.")
@click.option("--cache-url", envvar="EMBED_CACHE_URL", default=None,
              help="Redis holding the embedding cache (for --dry-run); default: the broker.")
@click.option("--stage-on", type=click.Choice(["producer", "fleet"]), default="producer",
              help="fleet: workers on the `stage` queue chunk CORPUS (same path for them).")
def submit(corpus: str, out: str, broker: str, wait: bool, dry_run: bool,
           cache_url: str | None, stage_on: str, **kw: Any) -> None:
    """Stream, chunk and stage CORPUS (.jsonl, .jsonl.gz, .parquet), then send its tasks."""
    if dry_run:
        from producer.dryrun import dry_run as run_dry

        run_dry(corpus, cache_url=cache_url or broker, **kw)
        return
    from producer.job import submit as submit_job
    from producer.progress import fleet_progress
    from producer.broker import connect

    bar = fleet_progress(connect(broker), "cpu" if kw["queue"] == "auto" else kw["queue"],
                         mask_url(broker), warn=lambda w: click.echo(w, err=True))
    job = submit_job(corpus, out, broker=broker, log=click.echo,
                     progress=bar if wait else False, stage_on=stage_on, **kw)
    click.echo(f"job {job.path.name}\n{job.path}")
    if wait:
        _finish(job, progress=bar)


@main.command()
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False), required=False)
@submit_options
@click.option("--resume", "resume_from", type=click.Path(exists=True, file_okay=False),
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
def run(corpus: str | None, out: str, resume_from: str | None, workers: int | None,
        threads: int | None, broker: str | None, cache_url: str | None, home: str | None,
        **kw: Any) -> None:
    """Embed CORPUS on this machine: private Redis, local Celery workers, same code path.

    Run again onto an existing --out/--job-id (same corpus, same chunking), or with
    --resume OUT/JOB, to continue an interrupted job.
    """
    from producer.job import Job, new_job_id
    from producer.local import fleet_roots, local_fleet
    from producer.models import embedfleet_home, resolve_model
    from producer.resume import interrupted_message, plan_run

    if (corpus is None) == (resume_from is None):
        raise UsageError("give CORPUS to embed, or --resume OUT/JOB to continue a job")
    home_path = Path(home) if home else embedfleet_home()
    root = Path(resume_from) if resume_from else Path(out) / (kw["job_id"] or new_job_id())
    ctx = click.get_current_context()
    given = {k for k in kw if ctx.get_parameter_source(k) is not ParameterSource.DEFAULT}
    plan = plan_run(root, corpus, kw, given, resume=resume_from is not None,
                    model_path=lambda m: resolve_model(m, home_path))
    if plan.pending == 0:  # every shard is done or failed: nothing to start
        click.echo(plan.note)
        _finish(Job(plan.root), progress=False)
        return
    try:
        bundle = resolve_model(plan.options["model"], home_path)  # export the default once
        with local_fleet(workers=workers or 1, threads=threads, home=home_path,
                         queue=plan.queue, broker=broker, cache_url=cache_url,
                         extra_env={"EMBED_HOME": str(home_path),
                                    **fleet_roots(plan.root.parent, bundle)}
                         ) as (broker_url, _cache, fleet):
            click.echo(f"local fleet: {workers or 1} worker(s) on {mask_url(broker_url)}")
            if plan.note:
                click.echo(plan.note)
            job = plan.start(broker_url, home_path, log=click.echo)
            fleet.wait_ready()
            _finish(job, progress=True)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(root)) from None


def _finish(job: Any, progress: Any) -> None:
    from producer.progress import summary_lines

    from producer.reconcile import reconcile_seconds

    st = job.wait(progress=progress, stall_s=reconcile_seconds())
    click.echo("\n".join(summary_lines(job, st)))
    if st.status != "succeeded":
        raise JobFailed(f"{st.failed} of {st.shards} shard(s) failed; "
                        f"see `producer status {job.path}`")


@main.command()
@click.argument("job_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(job_dir: str, as_json: bool) -> None:
    """Progress of JOB_DIR: shards, chunks, rejects, failed shards; finalises a finished job."""
    from producer.job import Job
    from producer.progress import status_lines

    st = Job(job_dir).status()
    if as_json:
        click.echo(json.dumps({**st.__dict__, "tokens_per_s": st.tokens_per_s}, indent=2))
        return
    click.echo("\n".join(status_lines(st)))


@main.command()
@click.argument("job_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--broker", envvar=BROKER_ENV, default=None,
              help="Celery broker URL (default: the one the job was submitted to, from its "
              "manifest; a URL whose password was masked there must be given again).")
@click.option("--wait/--no-wait", default=False, help="Wait for the job to finish.")
@STAGE_PROCS
def resume(job_dir: str, broker: str | None, wait: bool, stage_procs: int | None) -> None:
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
    job = Job(job_dir, broker=url)
    bar = fleet_progress(connect(url), jd.manifest.queue, mask_url(url),
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
