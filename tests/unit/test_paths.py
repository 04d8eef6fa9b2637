"""Which job directories and bundles a worker accepts (real directories and symlinks)."""

from __future__ import annotations

import os

import pytest

from worker.errors import PathNotAllowed
from worker.paths import check_under
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
