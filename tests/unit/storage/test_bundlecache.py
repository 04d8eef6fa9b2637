"""Bundles from a bucket (a real S3 server behind a counting proxy): copied once per machine
into EMBED_HOME keyed by the bundle's fingerprints, reused without a download, and a bundle
replaced at the same URI is another bundle, which a job pinned to the first one refuses."""

from __future__ import annotations

import json
import shutil

import pytest

from storage.bundle import load_bundle
from storage.bundlecache import (BundleChanged, bundle_key, default_home, fetch_bundle,
                                 job_bundle_dir, open_bundle)
from storage.errors import BundleError
from tests.s3proxy import counted_s3, summary


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    pytest.importorskip("moto.server")
    with counted_s3(tmp_path_factory.mktemp("s3")) as (srv, proxy):
        srv.bucket("models")
        yield srv, proxy


@pytest.fixture(scope="module")
def hashing(tmp_path_factory):
    from worker.export.hashing import export_hashing_bundle

    return export_hashing_bundle(tmp_path_factory.mktemp("m") / "hashing-32", 32,
                                 log=lambda _: None)


def upload(srv, directory, prefix: str) -> str:
    for p in sorted(directory.iterdir()):
        srv.client().upload_file(str(p), "models", f"{prefix}/{p.name}")  # not counted
    return f"s3://models/{prefix}"


def fingerprints(path) -> dict[str, str]:
    b = load_bundle(path)
    return {p: b.fingerprint(p) for p in b.variants}


def test_a_bucket_bundle_is_copied_once_then_reused(s3, hashing, tmp_path):
    srv, proxy = s3
    uri = upload(srv, hashing, "reuse/hashing")
    home = tmp_path / "home"
    proxy.take()
    bundle = open_bundle(uri + "/", home)
    want = fingerprints(hashing)
    assert bundle.location == uri and bundle.source_location == uri
    assert bundle.path == (home / "bundles" / bundle_key(want)).resolve()
    assert fingerprints(bundle.path) == want
    reqs = proxy.take()
    assert summary(reqs)["GET"] == len(list(hashing.iterdir()))  # each object read once
    assert (sum(r.received for r in reqs if r.kind == "GET")
            == sum(p.stat().st_size for p in hashing.iterdir()))
    assert open_bundle(uri, home).path == bundle.path  # found by its listing: no download
    again = summary(proxy.take())
    assert again.get("GET", 0) == 0 and again["bytes_down"] < 10_000, again
    # a worker knowing the job's fingerprints needs no request at all
    assert fetch_bundle(uri, home, expect=want) == bundle.path
    assert job_bundle_dir(uri, want, home) == str(bundle.path)
    assert proxy.take() == []
    assert job_bundle_dir(str(hashing), want, home) == str(hashing)  # a path stays a path
    assert [p.name for p in (home / "bundles").iterdir() if p.name.startswith(".")] == []


def test_a_bundle_changed_at_the_same_uri_is_another_bundle(s3, hashing, tmp_path):
    srv, proxy = s3
    uri = upload(srv, hashing, "moving/hashing")
    home = tmp_path / "home"
    old = open_bundle(uri, home)
    pinned = fingerprints(old.path)
    changed = tmp_path / "changed"
    shutil.copytree(hashing, changed)
    cfg = json.loads((changed / "embedfleet.json").read_text())
    (changed / "embedfleet.json").write_text(json.dumps({**cfg, "passage_prefix": "doc: "}))
    upload(srv, changed, "moving/hashing")
    new = open_bundle(uri, home)  # a new job gets the new bundle, in its own directory
    assert new.path != old.path and fingerprints(new.path) == fingerprints(changed)
    assert new.config.passage_prefix == "doc: " and old.path.is_dir()
    # the running job keeps its own copy where it has one ...
    assert fetch_bundle(uri, home, expect=pinned) == old.path
    # ... and a worker without it refuses the new one, naming the URI and both fingerprints
    with pytest.raises(BundleChanged) as err:
        job_bundle_dir(uri, pinned, tmp_path / "other-worker")
    text = str(err.value)
    assert uri in text and pinned["fp32"][:16] in text
    assert fingerprints(changed)["fp32"][:16] in text and "never mixes two models" in text


def test_a_uri_without_a_bundle_is_refused_by_name(s3, tmp_path):
    srv, _ = s3
    with pytest.raises(BundleError, match="s3://models/nothing: no model bundle there"):
        open_bundle("s3://models/nothing", tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("not a bundle")
    uri = upload(srv, tmp_path / "junk", "junk")
    with pytest.raises(BundleError, match="s3://models/junk: not a valid model bundle"):
        open_bundle(uri, tmp_path / "home")
    assert [p.name for p in (tmp_path / "home" / "bundles").iterdir()] == []  # no leftovers


def test_default_home_follows_the_environment(tmp_path):
    assert default_home({"EMBED_HOME": str(tmp_path)}) == tmp_path
    assert default_home({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "embedfleet"
