"""``producer submit --dry-run``: read and chunk (in parallel), count, ask the cache; submit
nothing. It runs the same splits and staging code as ``submit`` with nothing written, so its
MB/s is the staging throughput (``benchmarks/staging.py`` measures it this way)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from producer.chunking import prefix_text
from producer.models import embedfleet_home, resolve_model
from producer.outputs import estimate_bytes, format_bytes, parse_outputs
from producer.splits import DEFAULT_SPLIT_BYTES, plan_splits
from producer.staging import DEFAULT_SHARD_MAX_CHUNKS, StageConfig
from producer.streaming import default_procs, stage_splits
from storage import ledger
from storage.bundle import load_bundle
from worker.contract import Device, default_precision


def dry_run(corpus: str, *, cache_url: str | None, model: str | None, precision: str,
            queue: str, text_field: str, id_field: str, max_line_bytes: int,
            max_tokens: int | None, overlap: int, prefix: str, shard_tokens: int,
            stage_procs: int | None = None, split_bytes: int = DEFAULT_SPLIT_BYTES,
            shard_max_chunks: int = DEFAULT_SHARD_MAX_CHUNKS, outputs: str = "dense",
            **_: Any) -> dict[str, Any]:
    bundle = load_bundle(resolve_model(model, embedfleet_home()))
    cfg = bundle.config
    wanted = parse_outputs(outputs, cfg, str(bundle.path))
    pfx = prefix_text(prefix, cfg.passage_prefix, cfg.query_prefix)
    prec = default_precision(Device.GPU if queue == "gpu" else Device.CPU, bundle.variants,
                             precision)
    stage = StageConfig(bundle_path=str(bundle.path),
                        max_tokens=min(cfg.max_length, max_tokens or cfg.max_length),
                        overlap=overlap, prefix=pfx, text_field=text_field, id_field=id_field,
                        max_line_bytes=max_line_bytes, shard_tokens=shard_tokens,
                        shard_max_chunks=shard_max_chunks)
    lookup = ({"cache_url": cache_url, "fingerprint": bundle.fingerprint(prec), "dim": cfg.dim,
               "outputs": wanted}
              if cache_url else None)
    procs = stage_procs or default_procs()
    t0 = time.perf_counter()
    splits, _ = plan_splits(corpus, split_bytes)
    cps, hits = stage_splits(Path(corpus), splits, stage, root=None, procs=procs,
                             on_shard=lambda cp: None, lookup=lookup)
    wall = time.perf_counter() - t0
    t = ledger.totals({0: cps})
    size = Path(corpus).stat().st_size
    click.echo(f"dry run of {Path(corpus).name} with {cfg.source} ({prec}):")
    click.echo(f"  documents {t['accepted']} accepted, {t['rejected']} rejected")
    click.echo(f"  chunks    {t['chunks']} in {t['shards']} shards, {t['tokens']:,} tokens")
    click.echo(f"  cached    {hits}/{t['chunks']} chunks already in the cache")
    click.echo(f"  staging   {size / 1e6:.1f} MB in {wall:.1f}s = {size / 1e6 / wall:.2f} MB/s "
               f"with {procs} process(es), {len(splits)} split(s)")
    disk = estimate_bytes(wanted, cfg, t["chunks"], t["tokens"])
    click.echo(f"  disk      about {format_bytes(sum(disk.values()))} of vectors ("
               + ", ".join(f"{k} {format_bytes(v)}" for k, v in disk.items())
               + "; uncompressed, zstd saves little on floats)")
    return {**t, "cached": hits, "wall_s": wall, "mb_per_s": size / 1e6 / wall,
            "procs": procs, "outputs": list(wanted), "disk_bytes": disk,
            "bundle_path": str(bundle.path)}
