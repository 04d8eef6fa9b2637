"""``producer`` CLI: help texts, the shared options, and the one error → exit-code table
(each type through a real command where one can raise it here, and all through the group)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from producer import cli
from producer.cli import EXIT_CODES, exit_code, main, submit_options
from storage.errors import EmbedfleetError
from producer.errors import (BrokerFull, BrokerUnreachable, CorpusError, FleetError, Interrupted,
                             JobConflict, JobFailed, UsageError)
from producer.local import free_port
from storage.errors import (BundleError, CompactError, DatabaseUnreachable, InvalidJobId,
                            InvalidTableName, JobNotFound, LoadConflict, TableMismatch)
from storage.jobdir import JobDir
from tests.procs import ROOT

SAMPLE = ROOT / "examples" / "sample.jsonl"


def invoke(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _shared_option_names() -> set[str]:
    cmd = click.command()(submit_options(lambda **_: None))
    return {p.name for p in cmd.params}


def test_help_lists_every_command_and_every_exit_code() -> None:
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    for name in ("run", "submit", "status", "resume", "export", "bench", "report", "load",
                 "compact"):
        assert f"  {name} " in res.output
    assert "Exit codes:" in res.output
    for _, code, meaning in EXIT_CODES:
        assert f"{code:<4} {meaning}" in res.output


@pytest.mark.parametrize("command", ["run", "submit", "status", "resume", "export", "bench",
                                     "report", "load", "compact"])
def test_every_command_has_help(command: str) -> None:
    res = invoke(command, "--help")
    assert res.exit_code == 0 and f"Usage: main {command}" in res.output, res.output


def test_shared_options_are_on_submit_and_run() -> None:
    shared = _shared_option_names()
    assert {"job_id", "model", "overlap", "prefix", "max_tokens", "shard_tokens"} <= shared
    for name in ("submit", "run"):
        assert shared <= {p.name for p in main.commands[name].params}, name
    assert "--max-attempts" in invoke("run", "--help").output
    assert "--max-attempts" in invoke("submit", "--help").output


def test_job_commands_do_not_import_the_heavy_tools() -> None:
    code = ("import sys, producer.cli; "
            "print(sorted(m for m in ('onnxruntime', 'torch', 'producer.tools.bench', "
            "'producer.tools.report', 'producer.tools.html') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out


# -- the table, through the group --------------------------------------------------------------
RAISED = [UsageError("--overlap 999: too big"), InvalidJobId("job id 'a/b': bad"),
          BrokerUnreachable("cannot reach the broker at redis://u:***@h:1/0"),
          BrokerFull("the broker at redis://h:1/0 is full: used memory 1M is over its "
                     "maxmemory 1M (policy noeviction)"),
          JobFailed("1 of 3 shard(s) failed"), JobConflict("out/j already holds a job"),
          CorpusError("c.parquet has no column 'text'"), BundleError("m/: no tokenizer.json"),
          JobNotFound("x: not an embedfleet job directory"), FleetError("worker exited with 1"),
          Interrupted("interrupted: run `producer run --resume out/j`"), KeyboardInterrupt(),
          OSError("disk full"), ValueError("bad value"),
          DatabaseUnreachable("cannot connect to postgresql://u:***@h:1/x"),
          InvalidTableName("--table 'A;': use [schema.]name"),
          CompactError("--out c: exists and is not empty"),
          TableMismatch("t.embedding is vector(16); this job needs vector(8)"),
          LoadConflict("Key (doc_id, chunk_index)=(d, 0) already exists")]
EXPECTED = {UsageError: 3, InvalidJobId: 3, BrokerUnreachable: 1, BrokerFull: 1, JobFailed: 2,
            JobConflict: 4,
            CorpusError: 5, BundleError: 6, JobNotFound: 7, FleetError: 8, Interrupted: 130,
            KeyboardInterrupt: 130, OSError: 1, ValueError: 1, DatabaseUnreachable: 1,
            InvalidTableName: 3, CompactError: 4, TableMismatch: 9, LoadConflict: 9}


def _group_raising(exc: BaseException) -> click.Group:
    group = cli._Main()

    @group.command()
    def boom() -> None:
        raise exc

    return group


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
def test_group_maps_each_error_type_to_its_exit_code(exc: BaseException) -> None:
    res = CliRunner().invoke(_group_raising(exc), ["boom"])
    assert res.exit_code == EXPECTED[type(exc)], res.output
    assert (str(exc) or "interrupted") in res.output
    assert "Traceback" not in res.output


def test_every_row_of_the_table_is_tested() -> None:
    covered = {t for types, _, _ in EXIT_CODES for t in types} - {click.UsageError}
    assert covered - {type(e) for e in RAISED} <= {EmbedfleetError}


def test_a_bug_is_not_hidden_behind_an_exit_code() -> None:
    res = CliRunner().invoke(_group_raising(RuntimeError("a bug")), ["boom"])
    assert isinstance(res.exception, RuntimeError)
    assert exit_code(RuntimeError("x")) is None


# -- real commands -----------------------------------------------------------------------------
def test_click_usage_errors_exit_with_the_usage_code() -> None:
    res = invoke("submit", "--overlap", "-1", SAMPLE)
    assert res.exit_code == 3 and "--overlap" in res.output


def test_status_of_a_directory_that_is_not_a_job(tmp_path: Path) -> None:
    res = invoke("status", tmp_path)
    assert res.exit_code == 7 and str(tmp_path) in res.output and "manifest.json" in res.output


def test_unreachable_broker_names_the_masked_url(tmp_path: Path) -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    res = invoke("submit", SAMPLE, "--out", tmp_path, "--broker", url)
    assert res.exit_code == 1, res.output
    assert f"redis://user:***@127.0.0.1:{url.rsplit(':', 1)[1]}" in res.output
    assert "s3cret" not in res.output
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_missing_bundle_exits_with_the_bundle_code(tmp_path: Path) -> None:
    res = invoke("bench", "--model", tmp_path / "nope", "--limit", "2", "--providers", "cpu")
    assert res.exit_code == 6 and str(tmp_path / "nope") in res.output, res.output


def test_bad_overlap_names_the_option(tmp_path: Path, redis_url: str,
                                      minilm_bundle: Path) -> None:
    res = invoke("submit", SAMPLE, "--out", tmp_path, "--broker", redis_url,
                 "--model", minilm_bundle, "--overlap", "5000")
    assert res.exit_code == 3 and "--overlap 5000" in res.output, res.output


def test_existing_job_is_a_conflict(tmp_path: Path, redis_url: str,
                                    minilm_bundle: Path) -> None:
    job = JobDir.create(tmp_path, "j1")
    job.write_manifest({"job_id": "j1"})
    before = json.loads(job.manifest_path.read_text())
    res = invoke("submit", SAMPLE, "--out", tmp_path, "--broker", redis_url,
                 "--model", minilm_bundle, "--job-id", "j1")
    assert res.exit_code == 4 and str(job.root) in res.output, res.output
    assert json.loads(job.manifest_path.read_text()) == before
