"""``producer submit --dry-run``: read and chunk, count, ask the cache; submit nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from producer.chunking import prefix_text
from producer.corpus import iter_records
from producer.staging import stage_corpus
from storage.cache import EmbeddingCache
from storage.hashing import content_key, text_sha256
from producer.models import embedfleet_home, resolve_model
from producer.outputs import estimate_bytes, format_bytes, parse_outputs
from storage.bundle import load_bundle
from worker.contract import Device, default_precision

LOOKUP_BATCH = 1000


def dry_run(corpus: str, *, cache_url: str | None, model: str | None, precision: str,
            queue: str, text_field: str, id_field: str, max_line_bytes: int,
            max_tokens: int | None, overlap: int, prefix: str, shard_tokens: int,
            outputs: str = "dense", **_: Any) -> dict[str, Any]:
    bundle = load_bundle(resolve_model(model, embedfleet_home()))
    cfg = bundle.config
    wanted = parse_outputs(outputs, cfg, str(bundle.path))
    pfx = prefix_text(prefix, cfg.passage_prefix, cfg.query_prefix)
    prec = default_precision(Device.GPU if queue == "gpu" else Device.CPU, bundle.variants,
                             precision)
    fp = bundle.fingerprint(prec)
    cache = EmbeddingCache.from_url(cache_url, cfg.dim)
    lookup = cache.get_many if wanted == ("dense",) else cache.get_entries
    pending: list[str] = []
    hits = 0

    def on_chunk(text: str) -> None:
        nonlocal hits
        pending.append(content_key(fp, text_sha256(text), wanted))
        if len(pending) >= LOOKUP_BATCH:
            hits += sum(v is not None for v in lookup(pending))
            pending.clear()

    stats = stage_corpus(
        iter_records(corpus, text_field=text_field, id_field=id_field,
                     max_line_bytes=max_line_bytes),
        bundle.load_tokenizer(truncate=False), job=None,
        max_tokens=min(cfg.max_length, max_tokens or cfg.max_length), overlap=overlap,
        prefix=pfx, shard_tokens=shard_tokens, on_chunk=on_chunk)
    hits += sum(v is not None for v in lookup(pending))
    click.echo(f"dry run of {Path(corpus).name} with {cfg.source} ({prec}):")
    click.echo(f"  documents {stats.accepted} accepted, {stats.rejected} rejected")
    click.echo(f"  chunks    {stats.chunks} in {len(stats.shards)} shards, "
               f"{stats.tokens:,} tokens")
    click.echo(f"  cached    {hits}/{stats.chunks} chunks already in the cache")
    disk = estimate_bytes(wanted, cfg, stats.chunks, stats.tokens)
    click.echo(f"  disk      about {format_bytes(sum(disk.values()))} of vectors ("
               + ", ".join(f"{k} {format_bytes(v)}" for k, v in disk.items())
               + "; uncompressed, zstd saves little on floats)")
    if stats.duplicate_ids:
        click.echo(f"  duplicate ids {stats.duplicate_ids} (e.g. {stats.duplicate_examples})")
    return {**stats.totals(), "cached": hits, "outputs": list(wanted), "disk_bytes": disk}
