"""``--model`` and EMBED_HOME (producer/models.py). Exporting the default on first use needs
torch: tests/model_fixtures.py exports it once for the whole suite."""

from __future__ import annotations

from pathlib import Path

from producer.models import embedfleet_home, resolve_model


def test_home_follows_embed_home_then_xdg() -> None:
    assert embedfleet_home({"EMBED_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h")
    assert embedfleet_home({"XDG_CACHE_HOME": "/x"}) == Path("/x/embedfleet")
    assert embedfleet_home({}) == Path.home() / ".cache" / "embedfleet"


def test_a_bundle_path_is_taken_as_given(tmp_path) -> None:
    assert resolve_model(str(tmp_path / "b"), tmp_path) == tmp_path / "b"
    assert resolve_model("~/b", tmp_path) == Path.home() / "b"


def test_a_bundle_uri_is_kept_for_the_bundle_cache(tmp_path) -> None:
    # a URI through Path() would lose a slash (s3:/b/m); storage.bundlecache copies it
    assert resolve_model("s3://models/minilm", tmp_path) == "s3://models/minilm"
