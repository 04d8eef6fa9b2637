"""The staging ledger: durable checkpoints, torn lines, repeated segments, totals."""

from __future__ import annotations

from dataclasses import replace

import pytest

from storage import ledger
from storage.ledger import Checkpoint


def cp(seq: int, shard: int | None, done: bool = False) -> Checkpoint:
    return Checkpoint(split=2, seq=seq, shard=shard, pos=100 * seq, line=10 * seq, skip=0,
                      done=done, records=3, accepted=2, rejected=1, chunks=4, tokens=50,
                      bytes=100)


def test_append_then_read_back_in_order_with_rejects(tmp_path):
    ledger.append(tmp_path, cp(0, 20000), [b'{"line": 3}\n'])
    ledger.append(tmp_path, cp(1, None, done=True), [])
    assert ledger.read_split(tmp_path, 2) == [cp(0, 20000), cp(1, None, done=True)]
    assert [p.name for p in ledger.reject_files(tmp_path)] == ["rejects-00002-00000.jsonl"]
    t = ledger.totals(ledger.read_all(tmp_path))
    assert (t["shards"], t["splits_done"], t["records"], t["chunks"]) == (1, 1, 6, 8)


def test_a_torn_last_line_is_ignored_and_cut_before_the_next_append(tmp_path):
    ledger.append(tmp_path, cp(0, 20000), [])
    with open(ledger.ledger_path(tmp_path, 2), "ab") as f:
        f.write(b'{"split": 2, "seq": 1, "sha')  # the writer died mid-line
    assert ledger.read_split(tmp_path, 2) == [cp(0, 20000)]
    ledger.append(tmp_path, cp(1, 20001), [])
    assert ledger.read_split(tmp_path, 2) == [cp(0, 20000), cp(1, 20001)]
    assert ledger.ledger_path(tmp_path, 2).read_bytes().count(b"\n") == 2


def test_a_repeated_segment_counts_once(tmp_path):
    ledger.append(tmp_path, cp(0, 20000), [])
    ledger.append(tmp_path, replace(cp(0, 20000)), [])  # a redelivered stage task
    assert len(ledger.read_split(tmp_path, 2)) == 1


def test_shard_numbers_come_from_split_and_position():
    assert ledger.shard_number(0, 7) == 7
    assert ledger.shard_number(3, 0) == 3 * ledger.SHARDS_PER_SPLIT
    with pytest.raises(ValueError):
        ledger.shard_number(1, ledger.SHARDS_PER_SPLIT)


def test_an_append_that_finds_no_space_leaves_the_ledger_as_it_was(tmp_path, monkeypatch):
    import errno
    import os

    from storage.errors import DiskFull

    ledger.append(tmp_path, cp(0, 20000), [])
    path = ledger.ledger_path(tmp_path, 2)
    before = path.read_bytes()
    real_write, calls = os.write, []

    def full_disk(fd: int, data: bytes) -> int:
        if not os.readlink(f"/proc/self/fd/{fd}").endswith(path.name):
            return real_write(fd, data)
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:12]))  # part of the line fits
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(DiskFull) as exc:
        ledger.append(tmp_path, cp(1, 20001), [])
    monkeypatch.undo()
    assert len(calls) == 2  # the short write was followed by the rest, which found no space
    assert "no space left" in str(exc.value) and str(path) in str(exc.value)
    assert exc.value.errno == errno.ENOSPC
    assert path.read_bytes() == before  # no torn line
    ledger.append(tmp_path, cp(1, 20001), [])  # space again: the same segment is recorded
    assert ledger.read_split(tmp_path, 2) == [cp(0, 20000), cp(1, 20001)]
