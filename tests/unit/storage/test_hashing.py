"""Content hashes and cache keys: stable across processes, sensitive to every embedded byte."""

from __future__ import annotations

from storage.hashing import KEY_VERSION, content_key, text_sha256


def test_text_sha256_is_the_sha256_of_the_utf8_bytes():
    assert text_sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert text_sha256("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_every_byte_counts():
    base = text_sha256("passage: café")
    assert text_sha256("café") != base  # the prefix is part of the embedded text
    assert text_sha256("passage: cafe\u0301") != base  # no unicode normalisation
    assert text_sha256("passage: café ") != base
    assert len({base, text_sha256("passage: café")}) == 1


def test_content_key_layout_and_separation():
    key = content_key("fp1", text_sha256("x"))
    assert key == f"{KEY_VERSION}:fp1:{text_sha256('x')}"
    assert content_key("fp2", text_sha256("x")) != key  # another model/precision never collides
