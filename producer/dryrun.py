"""``producer submit --dry-run``: read and chunk (in parallel), count, ask the cache; submit
nothing. It runs the same splits and staging code as ``submit`` with nothing written, so its
MB/s is the staging throughput (``benchmarks/staging.py`` measures it this way)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import click

from producer.settings import ProducerSettings
from producer.outputs import estimate_bytes, format_bytes
from producer.spec import JobOptions, JobSpec, job_spec
from storage import ledger
from storage.objread import location_size
from storage.objstore import redact
from worker.model.policy import fingerprint
from worker.staging.pool import default_procs, stage_splits
from worker.staging.splits import auto_split_bytes, plan_splits


def dry_run(corpus: str, *, cache_url: str | None, settings: ProducerSettings | None = None,
            **options: Any) -> dict[str, Any]:
    """Stage ``corpus`` with nothing written; print and return counts, cache hits and MB/s.

    ``options`` are ``submit``'s (``producer.spec.JobOptions``; others, such as ``job_id``,
    are ignored). The cache is keyed as a worker on the job's queue will key it: with the
    runtime its policy chooses (``JobSpec.runtime``).
    """
    s = settings or ProducerSettings.from_env(os.environ)  # the API's edge; the CLI passes it
    spec = job_spec(JobOptions.pick(options)[0], s.home)
    runtime = spec.runtime(s.home)
    lookup = ({"cache_url": cache_url, "fingerprint": fingerprint(spec.bundle, runtime),
               "dim": spec.bundle.config.dim, "outputs": spec.outputs}
              if cache_url else None)
    procs = spec.options.stage_procs or default_procs()
    t0 = time.perf_counter()
    size = location_size(corpus)
    splits, _ = plan_splits(corpus, spec.options.split_bytes or auto_split_bytes(size))
    stage = replace(spec.stage, fast_tokenizer=s.fast_tokenizer)
    cps, hits = stage_splits(corpus, splits, stage, root=None, procs=procs,
                             on_shard=lambda cp: None, lookup=lookup)
    wall = time.perf_counter() - t0
    t = ledger.totals({0: cps})
    disk = estimate_bytes(spec.outputs, spec.bundle.config, t["chunks"], t["tokens"], spec.dense)
    got = {**t, "cached": hits, "precision": runtime.precision, "provider": runtime.provider,
           "wall_s": wall, "mb_per_s": size / 1e6 / wall, "procs": procs,
           "outputs": list(spec.outputs), "disk_bytes": disk, "splits": len(splits),
           "dense": spec.dense, "bundle_path": str(spec.bundle.path)}
    _print(redact(corpus).rstrip("/").rsplit("/", 1)[-1], spec, size, got)
    return got


def _print(name: str, spec: JobSpec, size: int, got: dict[str, Any]) -> None:
    where = got["provider"].removesuffix("ExecutionProvider")
    click.echo(f"dry run of {name} with {spec.bundle.config.source} "
               f"({got['precision']} on {where}):")
    click.echo(f"  documents {got['accepted']} accepted, {got['rejected']} rejected")
    if spec.delta:
        click.echo(f"  since     {spec.delta['since_job']}: {got['carried']} documents unchanged "
                   "(rows carried over, not staged), the rest to embed"
                   + ("" if spec.delta["carry"] else " (--full-reembed: none carried)"))
    click.echo(f"  chunks    {got['chunks']} in {got['shards']} shards, {got['tokens']:,} tokens")
    click.echo(f"  cached    {got['cached']}/{got['chunks']} chunks already in the cache")
    click.echo(f"  staging   {size / 1e6:.1f} MB in {got['wall_s']:.1f}s = "
               f"{got['mb_per_s']:.2f} MB/s with {got['procs']} process(es), "
               f"{got['splits']} split(s)")
    disk = got["disk_bytes"]
    click.echo(f"  disk      about {format_bytes(sum(disk.values()))} of vectors ("
               + ", ".join(f"{k} {format_bytes(v)}" for k, v in disk.items())
               + "; uncompressed, zstd saves little on floats)")
