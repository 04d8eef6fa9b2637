"""Corpora read where they live: a corpus in a bucket (a real S3 server, moto's server mode,
behind a proxy that counts every request) is planned, read and staged exactly as the same file
on disk, by ranged reads: no request reads past the range it serves, none reads the object
whole before staging starts."""

from __future__ import annotations

import gzip
import json
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from storage import objread
from storage.objread import input_location, location_size, open_range, read_head
from tests.s3proxy import counted_s3, summary
from worker.staging.corpus import iter_records
from worker.staging.splits import Planner, iter_split, plan_splits


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto.server")
    with counted_s3(tmp_path_factory.mktemp("s3")) as (srv, proxy):
        srv.bucket("corpora")
        yield srv, proxy


@pytest.fixture(scope="module")
def hashing(tmp_path_factory):
    from worker.export.hashing import export_hashing_bundle

    return export_hashing_bundle(tmp_path_factory.mktemp("m") / "hashing-32", 32,
                                 log=lambda _: None)


def put(srv, key, path) -> str:
    srv.client().upload_file(str(path), "corpora", key)  # straight to the server: not counted
    return f"s3://corpora/{key}"


def lines(n: int = 2500) -> list[str]:
    out = [json.dumps({"id": i, "text": f"document {i} " + "word " * (i % 37)}) for i in range(n)]
    out[7], out[300] = "{not json", json.dumps({"id": "no-text"})  # rejects keep line numbers
    out[11] = "   "  # a blank line
    return out


def write_corpus(tmp_path, kind: str):
    texts = lines()
    if kind == "parquet":
        path = tmp_path / "c.parquet"
        rows = [json.loads(t) for t in texts if t.strip().startswith('{"')]
        table = pa.table({"id": [str(r["id"]) for r in rows],
                          "text": [r.get("text") for r in rows]})
        pq.write_table(table, path, row_group_size=200)
        return path
    data = ("\r\n".join(texts[:50]) + "\r\n" + "\n".join(texts[50:]) + "\n").encode()
    path = tmp_path / f"c.{kind}"
    path.write_bytes(gzip.compress(data) if kind.endswith(".gz") else data)
    return path


def test_a_byte_range_is_read_by_ranged_gets_never_past_its_end(s3, tmp_path, monkeypatch):
    srv, proxy = s3
    monkeypatch.setattr(objread, "READ_BLOCK", 64 << 10)
    data = os.urandom(1 << 20)
    (tmp_path / "blob").write_bytes(data)
    uri = put(srv, "blob", tmp_path / "blob")
    proxy.take()
    with open_range(uri, 100_000, 600_000) as f:
        assert f.read() == data[100_000:600_000]
    gets = [r for r in proxy.take() if r.method == "GET"]
    assert all(r.range.startswith("bytes=") for r in gets), gets
    assert sum(r.received for r in gets) == 500_000  # nothing past the end, nothing before
    assert len(gets) == math.ceil(500_000 / (64 << 10))
    assert read_head(uri, 4) == data[:4] and location_size(uri) == 1 << 20
    assert input_location("s3://key-id:secret@corpora/blob") == "s3://corpora/blob"
    with pytest.raises(FileNotFoundError, match="s3://corpora/missing"):
        location_size("s3://corpora/missing")
    with pytest.raises(OSError):
        open_range("s3://corpora/missing").read()


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "parquet"])
def test_a_corpus_in_a_bucket_plans_and_reads_as_the_same_file_on_disk(s3, tmp_path, kind):
    srv, proxy = s3
    local = write_corpus(tmp_path, kind)
    uri = put(srv, f"t/{local.name}", local)
    split_bytes = 20_000
    proxy.take()
    plan = plan_splits(local, split_bytes)
    assert plan_splits(uri, split_bytes) == plan and len(plan[0]) >= 3
    planner = Planner(uri, split_bytes)
    assert list(planner) == plan[0] and planner.digest == plan[1]
    planning = proxy.take()
    size = local.stat().st_size
    # the plan streams the object (jsonl: once for the plan, once for the Planner): never a
    # request for more than a block, and no more bytes than the passes need
    assert all(r.range for r in planning if r.method == "GET")
    assert summary(planning)["bytes_down"] <= 4 * size + 8 * len(planning)
    kw = dict(text_field="text", id_field="id", max_line_bytes=1 << 20)
    for s in plan[0]:
        got = list(iter_split(uri, s, s.start, s.first_line, **kw))
        assert got == list(iter_split(local, s, s.start, s.first_line, **kw)) and got
    assert list(iter_records(uri)) == list(iter_records(local))
    if kind == "jsonl":  # each split: a ranged read of its own bytes only
        proxy.take()
        s = plan[0][1]
        list(iter_split(uri, s, s.start, s.first_line, **kw))
        gets = [r for r in proxy.take() if r.method == "GET"]
        assert sum(r.received for r in gets) == s.end - s.start


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_the_dry_run_stages_a_bucket_corpus_as_the_file_on_disk(s3, tmp_path, hashing, kind,
                                                               capsys):
    from producer.dryrun import dry_run
    from producer.settings import ProducerSettings

    srv, proxy = s3
    local = write_corpus(tmp_path, kind)
    uri = put(srv, f"dry/{local.name}", local)
    settings = ProducerSettings.from_env({"EMBED_HOME": str(tmp_path / "home")})
    args = dict(cache_url=None, settings=settings, model=str(hashing), prefix="none",
                shard_tokens=2_000, split_bytes=20_000,
                stage_procs=2 if kind == "jsonl" else 1)  # staging processes read the URI too
    want = dry_run(str(local), **args)
    proxy.take()
    got = dry_run(uri, **args)
    keys = ("accepted", "rejected", "chunks", "tokens", "shards", "splits")
    assert {k: got[k] for k in keys} == {k: want[k] for k in keys} and got["chunks"] > 100
    assert f"dry run of {local.name} with" in capsys.readouterr().out
    reqs = proxy.take()
    assert reqs and all(r.range for r in reqs if r.method == "GET")
    assert not [r for r in reqs if r.method not in ("GET", "HEAD")]  # a dry run writes nothing


def test_the_cli_takes_a_corpus_uri_and_refuses_other_schemes(tmp_path):
    import click

    from producer.options import CORPUS

    assert CORPUS.convert("s3://corpora/c.jsonl.gz", None, None) == "s3://corpora/c.jsonl.gz"
    with pytest.raises(click.BadParameter, match="unsupported scheme 'ftp'"):
        CORPUS.convert("ftp://host/c.jsonl", None, None)
    with pytest.raises(click.BadParameter, match="does not exist"):
        CORPUS.convert(str(tmp_path / "missing.jsonl"), None, None)


def test_the_readme_reads_outputs_straight_from_the_bucket(s3, tmp_path):
    """The README's reader block, run as written (only its job URI pointed at this bucket)."""
    import re
    from pathlib import Path

    import pyarrow.fs as pafs

    srv, _ = s3
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- bucket-readers -->\n```python\n(.*?)```", readme, re.DOTALL)
    assert block, "README.md lost its bucket-readers block"
    code = block.group(1)
    job = re.search(r'job = "(s3://[^"]+)"', code).group(1)
    bucket, key = job.removeprefix("s3://").split("/", 1)
    srv.bucket(bucket)
    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], region="us-east-1")
    table = pa.table({"doc_id": ["a", "b", "c"], "embedding": [[0.1, 0.2]] * 3})
    for n in range(2):
        pq.write_table(table, f"{bucket}/{key}/embeddings/part-{n:05d}.parquet", filesystem=fs)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet
    assert len(scope["vectors"]) == scope["frame"].height == 6
