"""``producer``: submit corpora to the embedding fleet, run it locally, watch and resume jobs.

The job commands live here; the tools (export, bench, report) in ``producer/tools/cli.py``.
Commands raise; ``EXIT_CODES`` below is the one place that turns an error type into a message
and an exit code (listed in ``producer --help`` and the README).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from producer.errors import (BrokerUnreachable, CorpusError, FleetError, Interrupted,
                             JobConflict, JobFailed, UsageError)
from producer.tools.cli import register as register_tools
from storage.errors import (BundleError, CompactError, DatabaseUnreachable, EmbedfleetError,
                            InvalidJobId, InvalidTableName, JobNotFound, LoadConflict,
                            TableMismatch)
from worker.settings import DEFAULT_BROKER_URL, mask_url

USAGE_EXIT = 3
EXIT_CODES: tuple[tuple[tuple[type[BaseException], ...], int, str], ...] = (
    ((BrokerUnreachable, DatabaseUnreachable), 1, "the broker (or load's database) cannot be "
     "reached"),
    ((JobFailed,), 2, "the job finished with failed shards"),
    ((UsageError, InvalidJobId, InvalidTableName, click.UsageError), USAGE_EXIT,
     "a bad option or value (the message names it)"),
    ((JobConflict, CompactError), 4, "OUT/JOB (or compact's --out) holds files this command "
     "must not touch"),
    ((CorpusError,), 5, "the corpus cannot be read with these options"),
    ((BundleError,), 6, "the model bundle is missing a file or has an invalid one"),
    ((JobNotFound,), 7, "not a job directory (no manifest.json)"),
    ((FleetError,), 8, "the private fleet of `producer run` did not start"),
    ((TableMismatch, LoadConflict), 9, "load: the table holds another dimension, vector type "
     "or model, is missing (no --create), or has these (doc_id, chunk_index) from another job"),
    ((Interrupted, KeyboardInterrupt), 130, "interrupted (Ctrl-C)"),
    ((EmbedfleetError, OSError, ValueError), 1, "any other error (file, value)"),
)
"""(error types, exit code, meaning), first match wins; 0 means done or nothing to do."""


def exit_code(exc: BaseException) -> int | None:
    """The exit code for ``exc`` from ``EXIT_CODES``; None for a bug (shown as a traceback).

    >>> exit_code(UsageError("--overlap 300: ...")), exit_code(BrokerUnreachable("x"))
    (3, 1)
    """
    for types, code, _ in EXIT_CODES:
        if isinstance(exc, types):
            return code
    return None


def _exit_code_help() -> str:
    rows = "\n".join(f"  {code:<4} {what}" for _, code, what in EXIT_CODES)
    return f"\b\nExit codes:\n  0    done, or nothing to do\n{rows}"


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
    """Options shared by ``submit`` and ``run``."""
    opts = [
        click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True,
                     envvar="EMBED_OUT", help="Output root; the job lands in OUT/<job-id>/."),
        click.option("--job-id", default=None, help="Job id (A-Z a-z 0-9 _ . -); default: "
                     "a timestamp plus random suffix."),
        click.option("--model", "-m", default=None, envvar="EMBED_MODEL",
                     help="Bundle directory (see `producer export`); default: all-MiniLM-L6-v2, "
                     "exported once into EMBED_HOME."),
        click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8"]),
                     default="auto", show_default=True, envvar="EMBED_PRECISION",
                     help="auto: fp16 on gpu workers, int8 on cpu workers when the bundle has "
                     "them (int8 only exists if it passed the export quality gate), else fp32."),
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
                     help="Padded tokens per inference batch (default: the worker's; 4096 on CPU, 32768 on GPU)."),
        click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                     help="Deliveries of one shard before it is marked failed."),
        STAGE_PROCS,
        click.option("--split-bytes", type=click.IntRange(4096, None), default=16 * 2**20,
                     envvar="EMBED_SPLIT_BYTES", help="Input bytes per split (16 MiB)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _submit_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    keys = ("job_id", "model", "precision", "queue", "text_field", "id_field", "max_tokens",
            "overlap", "prefix", "max_line_bytes", "shard_tokens", "max_batch_tokens",
            "max_attempts", "stage_procs", "split_bytes")
    return {k: kw[k] for k in keys}


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=_exit_code_help())
@click.version_option(package_name="embedfleet")
def main() -> None:
    """embedfleet: embed large corpora with a Celery fleet of ONNX Runtime workers.

    \b
    producer run corpus.jsonl            everything on this machine (private Redis + workers)
    producer submit corpus.jsonl --wait  send to a running fleet (celery -A worker worker -Q cpu)
    producer status OUT/JOB              progress, rejects, failed shards
    producer resume OUT/JOB              re-send shards whose messages were lost
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

        run_dry(corpus, cache_url=cache_url or broker, **_submit_kwargs(kw))
        return
    from producer.job import submit as submit_job

    job = submit_job(corpus, out, broker=broker, log=click.echo, progress=wait,
                     stage_on=stage_on, **_submit_kwargs(kw))
    click.echo(f"job {job.path.name}\n{job.path}")
    if wait:
        _finish(job, progress=True)


@main.command()
@click.argument("corpus", type=click.Path(exists=True, dir_okay=False))
@submit_options
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
def run(corpus: str, out: str, workers: int | None, threads: int | None, broker: str | None,
        cache_url: str | None, home: str | None, **kw: Any) -> None:
    """Embed CORPUS on this machine: private Redis, local Celery workers, same code path."""
    from producer.job import submit as submit_job
    from producer.local import fleet_roots, local_fleet
    from producer.models import embedfleet_home, resolve_model

    home_path = Path(home) if home else embedfleet_home()
    try:
        bundle = resolve_model(kw["model"], home_path)  # export the default before workers start
        with local_fleet(workers=workers or 1, threads=threads, home=home_path,
                         queue="gpu" if kw["queue"] == "gpu" else "cpu", broker=broker,
                         cache_url=cache_url,
                         extra_env={"EMBED_HOME": str(home_path), **fleet_roots(out, bundle)}
                         ) as (broker_url, _cache, fleet):
            click.echo(f"local fleet: {workers or 1} worker(s) on {mask_url(broker_url)}")
            kw = dict(kw, queue="cpu" if kw["queue"] == "auto" else kw["queue"])
            job = submit_job(corpus, out, broker=broker_url, log=click.echo,
                             home=home_path, progress=True, **_submit_kwargs(kw))
            fleet.wait_ready()
            _finish(job, progress=True)
    except KeyboardInterrupt:
        raise Interrupted("interrupted: workers and Redis stopped; `producer resume` continues "
                          "a job on a running fleet, or run again to start over") from None


def _finish(job: Any, progress: bool) -> None:
    st = job.wait(progress=progress)
    _print_summary(job, st)
    if st.status != "succeeded":
        raise JobFailed(f"{st.failed} of {st.shards} shard(s) failed; "
                        f"see `producer status {job.path}`")


def _print_summary(job: Any, st: Any) -> None:
    from storage.integrity import damaged_inputs

    m = job.dir.reload()
    res, tot = m.result or {}, m.totals
    wall = res.get("wall_s", st.elapsed_s)
    hits = res.get("cache_hits", st.cache_hits)
    chunks = res.get("embedded_chunks", st.chunks_done)
    click.echo(
        f"\n{st.status}: {tot.get('accepted', 0)} documents ({tot.get('rejected', 0)} rejected), "
        f"{chunks} chunks embedded, {st.tokens:,} tokens in {wall:.1f}s "
        f"({st.tokens / wall if wall else 0:,.0f} tokens/s), cache hits {hits}/{st.chunks}")
    if res.get("rejects"):
        click.echo(f"rejects:    {res['rejects']} in {job.dir.rejects_path}")
    for f in st.failed_shards:
        click.echo(f"failed shard {f['shard']}: {f['reason']}")
    for line in damaged_inputs(Path(st.job_dir), [f["shard"] for f in st.failed_shards]):
        click.echo(f"what to do: {line}")
    click.echo(f"output:     {job.dir.embeddings_dir}/*.parquet")
    click.echo(f"read it:    python -c \"import pandas as pd; "
               f"print(pd.read_parquet('{job.dir.embeddings_dir}'))\"")
    click.echo(f"report:     producer report {job.dir.root}")


@main.command()
@click.argument("job_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(job_dir: str, as_json: bool) -> None:
    """Progress of JOB_DIR: shards, chunks, rejects, failed shards; finalises a finished job."""
    from producer.job import Job
    from storage.integrity import damaged_inputs

    st = Job(job_dir).status()
    if as_json:
        click.echo(json.dumps({**st.__dict__, "tokens_per_s": st.tokens_per_s}, indent=2))
        return
    click.echo(f"job        {Path(st.job_dir).name}  [{st.status}]")
    click.echo(f"shards     {st.done}/{st.shards} done, {st.failed} failed")
    click.echo(f"chunks     {st.chunks_done}/{st.chunks}   tokens {st.tokens_done:,}/{st.tokens:,}")
    click.echo(f"rejects    {st.rejects}   cache hits {st.cache_hits}")
    click.echo(f"throughput {st.tokens_per_s:,.0f} tokens/s over {st.elapsed_s:.1f}s")
    if st.duplicate_ids:
        click.echo(f"duplicate ids {st.duplicate_ids} (e.g. {', '.join(st.duplicate_examples)})")
    for r in st.reject_examples:
        click.echo(f"rejected   doc {r.get('doc_id')!r} chunk {r.get('chunk_index')} "
                   f"(line {r.get('line')}): {r.get('reason')}")
    for f in st.failed_shards:
        click.echo(f"failed shard {f['shard']}: {f['reason']}")
    for line in damaged_inputs(Path(st.job_dir), [f["shard"] for f in st.failed_shards]):
        click.echo(f"what to do: {line}")


@main.command()
@click.argument("job_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--broker", envvar=BROKER_ENV, default=DEFAULT_BROKER_URL, show_default=True,
              help="Celery broker URL.")
@click.option("--wait/--no-wait", default=False, help="Wait for the job to finish.")
@STAGE_PROCS
def resume(job_dir: str, broker: str, wait: bool, stage_procs: int | None) -> None:
    """Finish staging JOB_DIR, re-send every shard without valid output; safe to repeat."""
    from producer.job import Job
    from producer.progress import Progress

    job = Job(job_dir, broker=broker)
    bar = Progress(enabled=wait)
    n = job.resume(stage_procs=stage_procs, progress=bar)
    bar.close()
    click.echo(f"re-sent {n} shard(s)" if n else "nothing to resume: every shard is done")
    if wait and n:
        _finish(job, progress=True)


register_tools(main)
