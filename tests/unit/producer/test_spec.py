"""The job spec (producer/spec.py): options resolved against the bundle once, for submit, the
dry run and resume."""

from __future__ import annotations

from dataclasses import fields

import pytest

from producer.errors import UsageError
from producer.spec import CHUNKING_KEYS, JobOptions, chunking_of, job_spec


def test_spec_caps_the_window_and_records_the_chunking(minilm_bundle, tmp_path) -> None:
    spec = job_spec(JobOptions(model=str(minilm_bundle), max_tokens=1000, prefix="none",
                               overlap=8), tmp_path)
    assert spec.window == 256 and spec.budget == 254  # [CLS] ... [SEP]
    assert spec.outputs == ("dense",) and spec.stage.bundle_path == str(spec.bundle.path)
    assert spec.chunking() == {"max_tokens": 256, "overlap": 8, "prefix": "", "text_field": "text",
                               "id_field": "id", "max_line_bytes": 64 * 2**20,
                               "shard_tokens": 32768, "shard_max_chunks": 2048}
    assert tuple(spec.chunking()) == CHUNKING_KEYS == tuple(chunking_of(spec.stage))


def test_spec_refuses_what_submit_refuses_before_staging(minilm_bundle, tmp_path) -> None:
    with pytest.raises(UsageError, match="--overlap 200: must be between 0 and 127"):
        job_spec(JobOptions(model=str(minilm_bundle), overlap=200, prefix="none"), tmp_path)
    with pytest.raises(UsageError, match="--prefix 'title'"):
        job_spec(JobOptions(model=str(minilm_bundle), prefix="title"), tmp_path)
    with pytest.raises(UsageError, match="--outputs sparse"):
        job_spec(JobOptions(model=str(minilm_bundle), outputs="sparse"), tmp_path)


def test_runtime_is_the_worker_policy_for_the_queue(minilm_bundle, tmp_path) -> None:
    cpu = job_spec(JobOptions(model=str(minilm_bundle)), tmp_path).runtime(tmp_path)
    assert cpu.provider == "CPUExecutionProvider"  # no probe figures stored under tmp_path
    gpu = job_spec(JobOptions(model=str(minilm_bundle), queue="gpu"), tmp_path)
    assert gpu.runtime(tmp_path).precision == "fp16"


def test_pick_splits_job_options_from_the_rest() -> None:
    opts, rest = JobOptions.pick({"overlap": 4, "job_id": "j", "cache_url": None})
    assert opts.overlap == 4 and rest == {"job_id": "j", "cache_url": None}
    with pytest.raises(TypeError):
        JobOptions(no_such_option=1)  # type: ignore[call-arg]


def test_cli_defaults_are_the_job_option_defaults() -> None:
    """The flags of submit/run default to what the Python API defaults to."""
    import click

    from producer.cli import submit

    ctx = click.Context(submit)
    params = {p.name: p.get_default(ctx, call=False) for p in submit.params}
    checked = [f for f in fields(JobOptions)
               if f.default is not None  # None: unset on both sides
               and f.name != "shard_max_chunks"]  # no flag: the Python API's knob only
    assert len(checked) >= 10
    for f in checked:
        assert params[f.name] == f.default, f.name
