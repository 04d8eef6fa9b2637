"""The dry run uses the same prefix rule as submit: an unknown prefix is an error, not ""."""

from __future__ import annotations

import pytest

from producer.dryrun import dry_run
from tests.conftest import SAMPLE

ARGS = dict(cache_url=None, precision="auto", queue="cpu", text_field="text", id_field="id",
            max_line_bytes=2**20, max_tokens=None, overlap=0, shard_tokens=50_000)


def test_unknown_prefix_raises_like_submit(minilm_bundle):
    with pytest.raises(ValueError, match="--prefix 'title': use passage, query or none"):
        dry_run(str(SAMPLE), model=str(minilm_bundle), prefix="title", **ARGS)


def test_counts_the_sample(minilm_bundle, capsys):
    got = dry_run(str(SAMPLE), model=str(minilm_bundle), prefix="none", **ARGS)
    assert got["accepted"] == 375 and got["cached"] == 0 and got["chunks"] >= 375
    assert "375 accepted, 0 rejected" in capsys.readouterr().out


def test_dim_is_refused_on_minilm_and_the_estimate_uses_the_stored_size(minilm_bundle, capsys):
    from click.testing import CliRunner

    from producer.cli import main

    res = CliRunner().invoke(main, ["submit", str(SAMPLE), "--dry-run", "--model",
                                    str(minilm_bundle), "--dim", "128", "--dtype", "binary"])
    assert res.exit_code == 3
    assert "--dim 128: the bundle" in res.output and "Matryoshka" in res.output
    got = dry_run(str(SAMPLE), model=str(minilm_bundle), prefix="none", dim=128,
                  dtype="binary", force_dim=True, **ARGS)
    assert got["dense"] == {"dim": 128, "dtype": "binary", "full_dim": 384,
                            "dim_allowed": "forced"}
    assert got["disk_bytes"]["dense"] == 16 * got["chunks"]


def test_precision_and_cache_keys_follow_the_worker_probe(minilm_bundle, tmp_path, monkeypatch,
                                                          capsys):
    """After a worker chose OpenVINO bf16, the dry run says so and keys the cache with it
    (it said int8 and counted 0 cached)."""
    from storage.bundle import load_bundle
    from tests.unit.worker.model.test_policy import ROWS_OV_BF16, _figures

    monkeypatch.setenv("EMBED_HOME", str(tmp_path))
    _figures(tmp_path, str(load_bundle(minilm_bundle).path), ROWS_OV_BF16)
    got = dry_run(str(SAMPLE), model=str(minilm_bundle), prefix="none", **ARGS)
    assert (got["precision"], got["provider"]) == ("bf16", "OpenVINOExecutionProvider")
    assert "(bf16 on OpenVINO)" in capsys.readouterr().out
