"""Stage 9b against a real redis-server: exact float32 hits, float16 within rounding, corrupt
values as misses, TTLs, one MGET per lookup, big pipelined writes, and a server that goes away
mid-run (misses, no exception, one warning)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from storage.cache import DEFAULT_TTL_S, EmbeddingCache
from storage.hashing import content_key, text_sha256
from tests.procs import RedisServer

pytestmark = pytest.mark.integration

DIM = 384


@pytest.fixture
def cache_url(redis_server: RedisServer, redis_url: str) -> str:
    """The cache database (db 1) of the session server, flushed around the test by redis_url."""
    return redis_server.url(1)


@pytest.fixture
def client(redis_server: RedisServer, cache_url: str) -> redis.Redis:
    return redis_server.client(1)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, so the test can stop it."""
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    terminate(srv)


def terminate(srv: RedisServer) -> None:
    """Stop ``srv`` with SIGTERM (Redis shuts down cleanly). Faster than ``srv.stop()``, whose
    SHUTDOWN command redis-py retries with backoff once the server closes the connection."""
    if srv.proc is not None:
        os.kill(srv.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        srv.proc.terminate()
        srv.proc.wait(timeout=10)
        srv.proc = None


def keys_for(n: int, fingerprint: str = "fp-test") -> list[str]:
    return [content_key(fingerprint, text_sha256(f"text {i}")) for i in range(n)]


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_float32_hits_are_identical(cache_url):
    cache = EmbeddingCache.from_url(cache_url, DIM, dtype="float32")
    keys, vecs = keys_for(20), unit_vectors(20)
    assert cache.get_many(keys) == [None] * 20
    assert cache.put_many(list(zip(keys, vecs))) == 20
    got = cache.get_many(keys + ["emb:v1:fp-test:absent"])
    assert got[-1] is None
    for g, v in zip(got, vecs):
        assert g is not None and g.dtype == np.float32
        np.testing.assert_array_equal(g, v)
    assert cache.errors == 0


def test_float16_hits_are_within_half_precision_rounding(cache_url, client):
    cache = EmbeddingCache.from_url(cache_url, DIM)  # float16 is the default
    keys, vecs = keys_for(20), unit_vectors(20, seed=1)
    assert cache.put_many(list(zip(keys, vecs))) == 20
    assert client.strlen(keys[0]) == 2 * DIM  # raw little-endian halves, no header
    for g, v in zip(cache.get_many(keys), vecs):
        assert g is not None and g.dtype == np.float32
        np.testing.assert_array_equal(g, v.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(g, v, rtol=2.0 ** -11, atol=2.0 ** -24)


def test_wrong_length_and_non_finite_values_are_misses(cache_url, client):
    cache = EmbeddingCache.from_url(cache_url, DIM)
    k = keys_for(6)
    good = unit_vectors(1)[0]
    client.set(k[0], np.asarray(good, "<f2").tobytes()[:-2])             # one value short
    client.set(k[1], np.asarray(good, "<f2").tobytes() + b"\0\0")        # one value long
    client.set(k[2], np.asarray(good, "<f4").tobytes())                  # float32 in a f16 cache
    client.set(k[3], b"")
    nan = good.copy()
    nan[5] = np.nan
    inf = good.copy()
    inf[7] = 1e6  # finite in float32, inf once stored as float16
    client.set(k[4], np.asarray(nan, "<f2").tobytes())                   # written by hand
    with np.errstate(over="ignore"):
        client.set(k[5], np.asarray(inf, "<f2").tobytes())
    assert cache.get_many(k) == [None] * 6
    assert EmbeddingCache.from_url(cache_url, DIM // 2).get_many(k[:1]) == [None]
    assert cache.errors == 0  # a bad value is a miss, not a Redis error


def test_vectors_that_could_never_hit_are_not_written(cache_url, client, recwarn):
    cache = EmbeddingCache.from_url(cache_url, DIM)
    k = keys_for(4)
    good = unit_vectors(1)[0]
    nan, big = good.copy(), good.copy()
    nan[3] = np.nan
    big[3] = 1e6  # finite in float32, inf in float16
    items = [(k[0], nan), (k[1], big), (k[2], good[:-1]), (k[3], good)]
    assert cache.put_many(items) == 1
    assert [client.exists(x) for x in k] == [0, 0, 0, 1]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert EmbeddingCache.from_url(cache_url, DIM, dtype="float32").put_many(items[1:2]) == 1


def test_entries_get_a_ttl(cache_url, client):
    k = keys_for(2)
    EmbeddingCache.from_url(cache_url, DIM).put_many([(k[0], unit_vectors(1)[0])])
    assert 0 < client.ttl(k[0]) <= DEFAULT_TTL_S
    EmbeddingCache.from_url(cache_url, DIM, ttl_s=60).put_many([(k[1], unit_vectors(1)[0])])
    assert 0 < client.ttl(k[1]) <= 60
    EmbeddingCache.from_url(cache_url, DIM, ttl_s=None).put_many([(k[1], unit_vectors(1)[0])])
    assert client.ttl(k[1]) == -1  # no TTL asked: kept until evicted


def test_two_thousand_vectors_in_pipelines_and_one_mget(cache_url, client):
    cache = EmbeddingCache.from_url(cache_url, DIM)
    keys, vecs = keys_for(2000), unit_vectors(2000, seed=2)
    client.config_resetstat()
    assert cache.put_many(list(zip(keys, vecs))) == 2000
    assert client.dbsize() == 2000
    got = cache.get_many(keys)
    stats = client.info("commandstats")
    assert stats["cmdstat_set"]["calls"] == 2000
    assert stats["cmdstat_mget"]["calls"] == 1
    assert "cmdstat_multi" not in stats  # transaction=False: plain pipelines
    np.testing.assert_array_equal(np.stack(got), vecs.astype(np.float16).astype(np.float32))


def test_server_stopped_mid_run_means_misses_and_one_warning(own_server, caplog):
    cache = EmbeddingCache.from_url(own_server.url(1), DIM)
    keys, vecs = keys_for(50), unit_vectors(50, seed=3)
    assert cache.put_many(list(zip(keys[:25], vecs[:25]))) == 25
    assert sum(v is not None for v in cache.get_many(keys)) == 25

    terminate(own_server)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="storage.cache"):
        for _ in range(3):
            assert cache.get_many(keys) == [None] * 50
            assert cache.put_many(list(zip(keys, vecs))) == 0
    assert time.monotonic() - t0 < 10  # a dead cache must not stall the shard
    warnings = [r for r in caplog.records if r.name == "storage.cache"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "unavailable" in warnings[0].getMessage()
    assert cache.errors == 6

    own_server.start()  # same port, empty (no persistence): the cache works again by itself
    assert cache.get_many(keys[:1]) == [None]
    assert cache.put_many(list(zip(keys[:1], vecs[:1]))) == 1
    assert cache.get_many(keys[:1])[0] is not None


def test_a_hung_server_is_a_miss_after_one_timeout(own_server, caplog):
    """SIGSTOP: the server accepts nothing and answers nothing; lookups time out as misses."""
    client = redis.Redis.from_url(own_server.url(1), socket_timeout=0.5)
    cache = EmbeddingCache(client, DIM)
    keys, vecs = keys_for(10), unit_vectors(10, seed=4)
    assert cache.put_many(list(zip(keys, vecs))) == 10
    assert own_server.proc is not None
    os.kill(own_server.proc.pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="storage.cache"):
            t0 = time.monotonic()
            assert cache.get_many(keys) == [None] * 10
            assert time.monotonic() - t0 < 1.5
            t0 = time.monotonic()
            assert cache.put_many(list(zip(keys, vecs))) == 0
            assert time.monotonic() - t0 < 1.5
    finally:
        os.kill(own_server.proc.pid, signal.SIGCONT)
    assert len([r for r in caplog.records if r.name == "storage.cache"]) == 1


def test_unreachable_url_is_a_miss_not_an_error(caplog):
    from producer.local import free_port

    cache = EmbeddingCache.from_url(f"redis://127.0.0.1:{free_port()}/1", DIM)
    with caplog.at_level(logging.WARNING, logger="storage.cache"):
        assert cache.get_many(keys_for(3)) == [None] * 3
        assert cache.put_many([(keys_for(1)[0], unit_vectors(1)[0])]) == 0
    assert len([r for r in caplog.records if r.name == "storage.cache"]) == 1


@pytest.mark.parametrize("url", [None, ""])
def test_no_url_always_misses(url):
    cache = EmbeddingCache.from_url(url, DIM)
    assert cache.client is None
    keys = keys_for(3)
    assert cache.put_many(list(zip(keys, unit_vectors(3)))) == 0
    assert cache.get_many(keys) == [None] * 3
    assert cache.get_many([]) == []
    assert cache.errors == 0


def test_unknown_dtype_is_a_setup_error():
    with pytest.raises(ValueError, match="float16, float32"):
        EmbeddingCache(None, DIM, dtype="bfloat16")


# --- BGE-M3 multi-output entries --------------------------------------------------------------


def m3_entry(seed: int, n_sparse: int = 5, n_tokens: int = 7, cdim: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(1000, n_sparse, replace=False)).astype(np.int32)
    return {"dense": unit_vectors(1, seed=seed)[0],
            "sparse": (ids, rng.random(n_sparse).astype(np.float32)),
            "colbert": unit_vectors(n_tokens, dim=cdim, seed=seed + 100)}


def test_multi_output_entries_round_trip(cache_url):
    cache = EmbeddingCache.from_url(cache_url, DIM)  # float16 dense and ColBERT
    keys = [content_key("fp", text_sha256(f"t{i}"), ("dense", "sparse", "colbert"))
            for i in range(3)]
    entries = [m3_entry(i, n_sparse=i * 3, n_tokens=2 + i) for i in range(3)]
    assert cache.put_entries(list(zip(keys, entries))) == 3
    got = cache.get_entries(keys + [keys[0] + "x"])
    assert got[-1] is None
    for g, e in zip(got, entries):
        np.testing.assert_array_equal(g["sparse"][0], e["sparse"][0])
        np.testing.assert_array_equal(g["sparse"][1], e["sparse"][1])  # float32: exact
        np.testing.assert_allclose(g["colbert"], e["colbert"], atol=1e-3)
        np.testing.assert_allclose(g["dense"], e["dense"], atol=1e-3)
    only_sparse = {k: v for k, v in entries[0].items() if k != "colbert"}
    cache.put_entries([("k-sparse", only_sparse)])
    assert set(cache.get_entries(["k-sparse"])[0]) == {"dense", "sparse"}


def test_dense_entry_is_not_a_hit_for_a_job_that_also_wants_sparse(cache_url):
    cache = EmbeddingCache.from_url(cache_url, DIM)
    sha = text_sha256("same text")
    cache.put_many([(content_key("fp", sha), unit_vectors(1)[0])])
    m3_key = content_key("fp", sha, ("dense", "sparse"))
    assert m3_key != content_key("fp", sha)
    assert cache.get_entries([m3_key]) == [None]


def test_corrupt_or_unstorable_multi_output_values_are_misses(cache_url, client):
    cache = EmbeddingCache.from_url(cache_url, DIM)
    client.set("short", b"\x00" * 10)
    client.set("vector", unit_vectors(1)[0].astype("<f2").tobytes())  # a dense-only value
    assert cache.get_entries(["short", "vector"]) == [None, None]
    bad = m3_entry(0)
    bad["colbert"][0, 0] = np.inf
    assert cache.put_entries([("bad", bad)]) == 0 and client.get("bad") is None
