"""Splits give the records, chunks and line numbers of a one-process run, whatever the cuts."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.staging.corpus import iter_records
from worker.staging.splits import iter_split, plan_splits
from worker.staging.shards import StageConfig
from worker.staging.pool import chunk_texts, stage_splits
from storage import ledger


def hostile_lines(seed: int = 3) -> bytes:
    """CRLF, blank lines, bad JSON, long lines (one of 2 MB), a BOM at the start."""
    rnd = random.Random(seed)
    out = []
    for i in range(600):
        r = rnd.random()
        if r < 0.05:
            out.append(b"   " if r < 0.02 else b"")
        elif r < 0.08:
            out.append(b'{"id": "bad", "text": ')
        elif r < 0.12:
            out.append(json.dumps({"id": f"c{i}", "text": "crlf line. " * rnd.randint(1, 80)})
                       .encode() + b"\r")
        else:
            out.append(json.dumps({"id": i, "text": "Word. " * rnd.randint(1, 300)}).encode())
    out[300] = json.dumps({"id": "huge", "text": "Big words here. " * 130_000}).encode()
    return b"\xef\xbb\xbf" + b"\n".join(out) + b"\n"


def staged_rows(root: Path) -> tuple[list[tuple], list[dict]]:
    rows = []
    for p in sorted((root / "input").glob("part-*.parquet")):
        t = pq.read_table(p).select(["line", "doc_id", "chunk_index", "chunk_count",
                                     "char_start", "char_end", "n_tokens", "text_sha256"])
        rows.extend(tuple(r.values()) for r in t.to_pylist())
    rejects = [json.loads(x) for p in ledger.reject_files(root)
               for x in p.read_text().splitlines()]
    return sorted(rows), rejects


def stage(path: Path, root: Path, cfg: StageConfig, split_bytes: int, procs: int
          ) -> tuple[list[tuple], list[dict]]:
    splits, _ = plan_splits(path, split_bytes)
    stage_splits(path, splits, cfg, root=root, procs=procs, on_shard=lambda cp: None)
    cps = ledger.read_all(root)
    assert len(cps) == len(splits) and all(c[-1].done for c in cps.values())
    return staged_rows(root)


@pytest.fixture
def cfg(minilm_bundle: Path) -> StageConfig:
    return StageConfig(bundle_path=str(minilm_bundle), max_tokens=128, shard_tokens=4000,
                       max_line_bytes=4 * 2**20)


def test_split_reads_equal_one_read_at_any_cut(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(hostile_lines())
    ref = list(iter_records(p, max_line_bytes=4 * 2**20))
    for split_bytes in (1, 999, 65_536, 1_000_000, 10**9):
        splits, digest = plan_splits(p, split_bytes)
        assert splits[0].start == 0 and splits[-1].end == p.stat().st_size
        assert all(a.end == b.start for a, b in zip(splits, splits[1:]))
        got = [r for s in splits for _, r in iter_split(
            p, s, s.start, s.first_line, text_field="text", id_field="id",
            max_line_bytes=4 * 2**20)]
        assert got == ref, split_bytes
    # the 2 MB line spans several nominal cuts: no boundary lands inside it
    assert len(plan_splits(p, 1_000_000)[0]) < p.stat().st_size // 1_000_000 + 1


def test_parallel_staging_equals_one_process(tmp_path, cfg):
    p = tmp_path / "c.jsonl"
    p.write_bytes(hostile_lines())
    one = stage(p, tmp_path / "one", cfg, 10**9, 1)
    many = stage(p, tmp_path / "many", cfg, 200_000, 2)
    assert many[0] == one[0] and len(one[0]) > 600
    key = lambda r: r["line"]  # noqa: E731
    assert sorted(many[1], key=key) == sorted(one[1], key=key)
    assert {r["line"] for r in one[1]} == {i + 1 for i, line in enumerate(
        hostile_lines().split(b"\n")) if line.startswith(b'{"id": "bad", "text": ')}


def test_chunk_texts_are_the_staged_texts_in_corpus_order(tmp_path, cfg):
    p = tmp_path / "c.jsonl"
    p.write_bytes(hostile_lines())
    texts, totals = chunk_texts(p, cfg)
    stage(p, tmp_path / "job", cfg, 200_000, 1)
    staged = pa.concat_tables(pq.read_table(f).select(["line", "chunk_index", "text"]) for f in
                              sorted((tmp_path / "job" / "input").glob("part-*.parquet")))
    rows = sorted(staged.to_pylist(), key=lambda r: (r["line"], r["chunk_index"]))
    assert texts == [r["text"] for r in rows] and len(texts) > 600
    assert totals["chunks"] == len(texts) and totals["rejected"] > 0


def test_gzip_and_parquet_row_groups_stage_like_jsonl(tmp_path, cfg):
    p = tmp_path / "c.jsonl"
    p.write_bytes(hostile_lines())
    ref_rows, _ = stage(p, tmp_path / "ref", cfg, 10**9, 1)
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(hostile_lines()))
    assert len(plan_splits(gz, 1000)[0]) > 3  # one reader, blocks to two chunkers
    assert stage(gz, tmp_path / "gz", cfg, 1000, 2)[0] == ref_rows
    good = [r for r in iter_records(p, max_line_bytes=4 * 2**20) if hasattr(r, "text")]
    table = pa.table({"id": [r.doc_id for r in good], "text": [r.text for r in good]})
    pqf = tmp_path / "c.parquet"
    pq.write_table(table, pqf, row_group_size=50)
    assert pq.ParquetFile(pqf).metadata.num_row_groups > 5
    rows, rejects = stage(pqf, tmp_path / "pq", cfg, 30_000, 2)
    assert len(plan_splits(pqf, 30_000)[0]) > 2 and not rejects
    # Parquet lines are row numbers: same chunks as the JSONL records, renumbered in order
    renumber = {r.line: i + 1 for i, r in enumerate(good)}
    assert sorted((renumber[r[0]],) + r[1:] for r in ref_rows) == rows


def test_resume_from_every_checkpoint_gives_the_same_shards(tmp_path, cfg):
    p = tmp_path / "c.jsonl"
    p.write_bytes(hostile_lines()[:400_000] + b"\n")
    ref = stage(p, tmp_path / "ref", cfg, 10**9, 1)
    cps = ledger.read_split(tmp_path / "ref", 0)
    assert len(cps) > 5
    for cut in (1, len(cps) // 2, len(cps) - 1):  # a producer that died after `cut` segments
        root = tmp_path / f"cut{cut}"
        (root / "input").mkdir(parents=True)
        lines = (tmp_path / "ref" / "_state" / "staging" / "split-00000.jsonl").read_bytes()
        kept = b"".join(x + b"\n" for x in lines.split(b"\n")[:cut])
        ledger.ledger_path(root, 0).parent.mkdir(parents=True)
        ledger.ledger_path(root, 0).write_bytes(kept + b'{"split": 0, "se')  # + a torn line
        for c in cps[:cut]:
            if c.shard is not None:
                src = tmp_path / "ref" / "input" / f"part-{c.shard:05d}.parquet"
                (root / "input" / src.name).write_bytes(src.read_bytes())
            r = ledger.rejects_path(tmp_path / "ref", 0, c.seq)
            if r.exists():
                ledger.rejects_path(root, 0, c.seq).write_bytes(r.read_bytes())
        assert stage(p, root, cfg, 10**9, 1) == ref
        assert ledger.read_split(root, 0) == cps
