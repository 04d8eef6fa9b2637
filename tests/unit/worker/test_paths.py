"""Which job directories and bundles a worker accepts (real directories and symlinks)."""

from __future__ import annotations

import os
import re

import pytest

from worker.errors import PathNotAllowed
from worker.paths import check_under, check_uri_under
from worker.settings import WorkerSettings


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "jobs" / "j1").mkdir(parents=True)
    (tmp_path / "elsewhere" / "j2").mkdir(parents=True)
    (tmp_path / "jobs" / "j2").symlink_to(tmp_path / "elsewhere" / "j2")
    (tmp_path / "jobs" / "j3").mkdir()
    (tmp_path / "jobs" / "j3" / "embeddings").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "jobs" / "inside").symlink_to(tmp_path / "jobs" / "j1")
    return tmp_path


def test_a_path_under_a_root_is_accepted(tree):
    roots = [str(tree / "other"), str(tree / "jobs")]
    assert check_under(tree / "jobs" / "j1", roots, "job") == (tree / "jobs" / "j1").resolve()
    # a symlink that stays inside the root is fine
    assert check_under(tree / "jobs" / "inside", roots, "job") == (tree / "jobs" / "j1").resolve()


def test_no_roots_accepts_anything(tree):
    assert check_under("relative/../x", (), "job") == check_under("relative/../x", [], "job")


@pytest.mark.parametrize("rel, reason", [
    ("elsewhere/j2", "is outside"),
    ("jobs/j2", "resolves to"),  # a symlink leaving the root
    ("jobs/j3", "resolves to"),  # a shard directory that is a symlink leaving the root
    ("jobs/../elsewhere/j2", "'..' is not allowed"),
    ("jobs/j1/..", "'..' is not allowed"),
    ("jobsx", "is outside"),  # a sibling whose name starts like the root
])
def test_rejected_paths_name_the_path(tree, rel, reason):
    path = f"{tree}/{rel}"
    with pytest.raises(PathNotAllowed, match=reason) as err:
        check_under(path, [str(tree / "jobs")], "job directory")
    assert path in str(err.value)


def test_relative_paths_are_rejected_when_roots_are_set(tree, monkeypatch):
    monkeypatch.chdir(tree)
    with pytest.raises(PathNotAllowed, match="not an absolute path"):
        check_under("jobs/j1", [str(tree / "jobs")], "job directory")


def test_roots_setting_is_a_path_list():
    s = WorkerSettings.from_env({"EMBED_JOB_ROOTS": f"/a{os.pathsep}/b/c{os.pathsep}",
                                 "EMBED_MODEL_ROOTS": "/models"})
    assert s.job_roots == ("/a", "/b/c") and s.model_roots == ("/models",)
    assert WorkerSettings.from_env({}).job_roots == ()


def test_bucket_prefixes_are_roots_for_uris_and_only_for_uris(tree):
    roots = ["s3://data/models/", str(tree / "jobs")]
    for ok in ("s3://data/models/m1", "s3://data/models", "s3://data/models/a/b/"):
        assert str(check_under(ok, roots, "model bundle")).rstrip("/") == ok.rstrip("/")
    refused = {  # what the refusal names: never the credentials of a URI
        "s3://other/models/m1": "model bundle s3://other/models/m1 is outside",
        "s3://data/models-old/m1": "model bundle s3://data/models-old/m1 is outside",
        "s3://data/elsewhere/m1": "is outside",
        "gs://data/models/m1": "model bundle gs://data/models/m1 is outside",
        "s3://data/models/../private/k": "'..' is not allowed",
        "s3://key:secret@other/models/m1": "model bundle s3://other/models/m1 is outside",
    }
    for uri, named in refused.items():
        with pytest.raises(PathNotAllowed, match=re.escape(named)) as err:
            check_under(uri, roots, "model bundle")
        assert "secret" not in str(err.value)
    # a URI root never admits a path, a path root never admits a URI
    with pytest.raises(PathNotAllowed, match="is outside"):
        check_under(tree / "elsewhere" / "j2", ["s3://data/models/"], "job directory")
    with pytest.raises(PathNotAllowed, match="is outside"):
        check_uri_under("s3://data/models/m1", [str(tree / "jobs")], "model bundle")
    assert check_uri_under("s3://any/thing", [], "model bundle") == "s3://any/thing"


def test_roots_setting_keeps_uri_schemes_whole():
    s = WorkerSettings.from_env({"EMBED_MODEL_ROOTS": f"s3://b/models/{os.pathsep}/models",
                                 "EMBED_INPUT_ROOTS": "s3://b/corpora"})
    assert s.model_roots == ("s3://b/models/", "/models")
    assert s.input_roots == ("s3://b/corpora",)


def stage_job(tmp_path, corpus, stage_bundle):
    from storage.jobdir import JobDir
    from storage.manifest import Manifest

    (tmp_path / "models" / "b").mkdir(parents=True, exist_ok=True)
    job = JobDir.create(tmp_path / "jobs", "j")
    job.write_manifest(Manifest(job_id="j", input={"path": str(corpus)},
                                model={"bundle_path": str(tmp_path / "models" / "b")},
                                staging={"on": "fleet", "config": {"bundle_path": stage_bundle}}))
    return job


@pytest.mark.parametrize("env, corpus, stage_bundle, rejected", [
    ({"EMBED_INPUT_ROOTS": "{t}/corpora"}, "{t}/corpora/c.jsonl", "{t}/models/b", None),
    ({}, "{t}/jobs/c.jsonl", "{t}/models/b", None),  # no input roots: the job roots
    ({}, "{t}/corpora/c.jsonl", "{t}/models/b",
     "corpus (EMBED_INPUT_ROOTS unset: EMBED_JOB_ROOTS) {t}/corpora/c.jsonl is outside"),
    ({"EMBED_INPUT_ROOTS": "{t}/corpora"}, "{t}/corpora/../etc/passwd", "{t}/models/b",
     "corpus (EMBED_INPUT_ROOTS) {t}/corpora/../etc/passwd: '..' is not allowed"),
    ({"EMBED_INPUT_ROOTS": "{t}/corpora"}, "{t}/corpora/c.jsonl", "{t}/elsewhere",
     "model bundle (EMBED_MODEL_ROOTS) {t}/elsewhere is outside"),  # the staging tokenizer's
])
def test_a_stage_task_checks_its_corpus_and_its_staging_bundle(tmp_path, env, corpus,
                                                               stage_bundle, rejected):
    from celery.exceptions import Ignore

    from worker.paths import open_allowed_job

    t = str(tmp_path)
    job = stage_job(tmp_path, corpus.format(t=t), stage_bundle.format(t=t))
    s = WorkerSettings.from_env({"EMBED_JOB_ROOTS": f"{t}/jobs", "EMBED_MODEL_ROOTS": f"{t}/models",
                                 **{k: v.format(t=t) for k, v in env.items()}})
    assert open_allowed_job(s, job.root).root == job.root  # the shard task checks neither
    if rejected is None:
        assert open_allowed_job(s, job.root, stage=True).root == job.root
        return
    with pytest.raises(Ignore, match=re.escape(rejected.format(t=t))):
        open_allowed_job(s, job.root, stage=True)


def test_bucket_prefixes_accept_only_uris_under_them_and_never_mix_with_paths(tmp_path):
    from storage.jobfs import StorePath

    roots = ["s3://fleet/jobs/", str(tmp_path)]
    assert check_under("s3://fleet/jobs/j1", roots, "job") == StorePath("s3://fleet/jobs/j1")
    assert check_under(tmp_path / "j2", roots, "job") == (tmp_path / "j2").resolve()
    for bad, why in (("s3://fleet/jobs-x/j1", "is outside"), ("s3://other/jobs/j1", "is outside"),
                     ("s3://fleet/jobs/../secret/j1", "'..' is not allowed"),
                     ("gs://fleet/jobs/j1", "is outside")):
        with pytest.raises(PathNotAllowed, match=why):
            check_under(bad, roots, "job directory")
    with pytest.raises(PathNotAllowed, match="is outside"):  # a URI under local roots only
        check_under("s3://fleet/jobs/j1", [str(tmp_path)], "job directory")
    with pytest.raises(PathNotAllowed, match="bucket prefixes only"):  # a path, bucket roots
        check_under(tmp_path / "j3", ["s3://fleet/jobs/"], "job directory")
    assert check_under("s3://any/where", [], "job") == StorePath("s3://any/where")
