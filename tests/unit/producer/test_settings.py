"""The producer's environment, read once (producer/settings.py) and passed down."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from producer.settings import ProducerSettings


def test_from_env_reads_broker_home_and_events() -> None:
    s = ProducerSettings.from_env({"CELERY_BROKER_URL": "redis://h/0", "EMBED_HOME": "/h",
                                   "EMBED_EVENTS": "1"})
    assert (s.broker, s.home, s.events) == ("redis://h/0", Path("/h"), True)
    s = ProducerSettings.from_env({"XDG_CACHE_HOME": "/x"})
    assert (s.broker, s.home, s.events) == (None, Path("/x/embedfleet"), False)
    assert s.fast_tokenizer and not ProducerSettings.from_env(
        {"EMBED_FAST_TOKENIZER": "0"}).fast_tokenizer


def test_the_cli_group_reads_them_once_for_its_commands(monkeypatch, tmp_path) -> None:
    import producer.settings as mod
    from producer.cli import main

    calls: list[int] = []
    real = mod.ProducerSettings.from_env.__func__  # type: ignore[attr-defined]

    def counted(cls, env):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real(cls, env)

    monkeypatch.setattr(mod.ProducerSettings, "from_env", classmethod(counted))
    res = CliRunner().invoke(main, ["status", str(tmp_path)])
    assert res.exit_code == 7, res.output  # not a job directory: JobNotFound
    assert len(calls) == 1
