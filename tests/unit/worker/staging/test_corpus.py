"""Stage 1: streaming ingest of an untrusted corpus.

Every non-blank line must come out as exactly one Record or one Reject.
"""

from __future__ import annotations

import gzip
import hashlib
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.staging.corpus import Record, Reject, file_checksum, iter_records

CAP = 200_000
GOOD = object()  # expectation marker: a Record
BAD_ID = "id field 'id' must be a string or integer"

# (raw line bytes without terminator, expected: GOOD or a reason prefix, expected doc_id)
# A good line follows every bad one, so a bad line cannot swallow or damage its neighbour.
LINES: list[tuple[bytes, object, str | None]] = [
    (b'\xef\xbb\xbf{"id": "a", "text": "alpha"}', GOOD, "a"),  # BOM at file start
    (b"", None, None),  # blank
    (b'{"id": "b", "text": "bad \xff\xfe bytes"}', "invalid UTF-8", None),
    (b'{"id": "c", "text": "gamma"}', GOOD, "c"),
    (b'{"id": "d", "text": "x \\ud800 y"}', "text contains lone surrogates", "d"),
    (b'{"id": "e", "text": "epsilon \\ud83d\\ude00"}', GOOD, "e"),  # a valid surrogate pair
    (b'{"id": "f", "text": "fine", "score": NaN, "w": -Infinity}', GOOD, "f"),
    (b'{"id": "g", "text": NaN}', "text field 'text' is not a string (got float)", "g"),
    (b'{"id": "h", "text": ' + b"9" * 10_000 + b"}", "integer too large", None),
    (b'{"id": "i", "text": "iota"}', GOOD, "i"),
    (b'{"id": ' + b"7" * 10_000 + b', "text": "big id"}', "integer too large", None),
    (b'{"id": "j", "text": "kappa"}', GOOD, "j"),
    (b"[" * 100_000, "nesting too deep", None),
    (b'{"id": "k", "text": "lambda"}', GOOD, "k"),
    (b'{"a":' * 30_000 + b"1" + b"}" * 30_000, "nesting too deep", None),
    (b'{"id": "l", "text": "mu"}', GOOD, "l"),
    (b"[1, 2, 3]", "not a JSON object (got list)", None),
    (b'"just a string"', "not a JSON object (got str)", None),
    (b'{"id": "m", "text": null}', "text field 'text' is null", "m"),
    (b'{"id": "n", "text": 42}', "text field 'text' is not a string (got int)", "n"),
    (b'{"id": "o", "text": " \\t\\n\\u3000 "}', "empty or whitespace-only text", "o"),
    (b'{"id": "p", "text": ""}', "empty or whitespace-only text", "p"),
    (b'{"id": "q", "text": "' + b"x" * 300_000 + b'"}', "line is 300023 bytes, over the cap", None),
    (b'{"id": "r", "text": "nu"}', GOOD, "r"),
    (b"   \t  ", None, None),  # whitespace-only line
    (b'{"id": "../../etc/passwd", "text": "path-like ids are data"}', GOOD, "../../etc/passwd"),
    (b'{"id": "s"}', "missing text field 'text'", "s"),
    (b'{"id": true, "text": "bool"}', f"{BAD_ID} (got bool)", None),
    (b'{"id": 1.5, "text": "float"}', f"{BAD_ID} (got float)", None),
    (b'{"id": ["t"], "text": "list"}', f"{BAD_ID} (got list)", None),
    (b'{"id": "\\udc00", "text": "surrogate id"}', "id field 'id' contains lone surrogates", None),
    (b'{"id": 42, "text": "int id"}', GOOD, "42"),
    (b'{"text": "no id"}', GOOD, "<line>"),
    (b'{"id": null, "text": "null id"}', GOOD, "<line>"),
    (b'{"id": "u", "text": ', "malformed JSON: Expecting value", None),
    (b'{"id": "v", "text": "dup", "text": "last wins"}', GOOD, "v"),
    (b'{"id": "w", "text": "tab\\tand \\u00e9 and \xc3\xa9 and \\u0000"}', GOOD, "w"),
    (b'{"id": "x", "text": "last line, no newline"}', GOOD, "x"),
]


def write_corpus(path: Path, lines: list[bytes], newline: bytes = b"\r\n") -> None:
    path.write_bytes(newline.join(lines))  # no terminator after the last line


def check_results(results: list[Record | Reject]) -> None:
    by_line = {r.line: r for r in results}
    assert len(by_line) == len(results), "a line was reported twice"
    expected = {n: (want, i) for n, (_, want, i) in enumerate(LINES, 1) if want is not None}
    assert sorted(by_line) == sorted(expected)
    accepted = [r for r in results if isinstance(r, Record)]
    rejected = [r for r in results if isinstance(r, Reject)]
    assert len(accepted) + len(rejected) == len(expected)
    for line, (want, doc_id) in expected.items():
        got = by_line[line]
        doc_id = str(line) if doc_id == "<line>" else doc_id
        if want is GOOD:
            assert isinstance(got, Record), (line, got)
        else:
            assert isinstance(got, Reject) and got.reason.startswith(str(want)), (line, got)
        assert got.doc_id == doc_id, (line, got)
    texts = {r.doc_id: r.text for r in accepted}
    assert texts["a"] == "alpha" and texts["c"] == "gamma" and texts["r"] == "nu"
    assert texts["e"] == "epsilon \U0001F600"
    assert texts["v"] == "last wins"  # duplicate keys: the last one wins (json module default)
    assert texts["w"] == "tab\tand é and é and \x00"
    assert texts["x"] == "last line, no newline"


def test_every_kind_of_bad_line_is_accounted_for(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, [raw for raw, _, _ in LINES])
    check_results(list(iter_records(path, max_line_bytes=CAP)))


def test_lf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    write_corpus(path, [raw for raw, _, _ in LINES], newline=b"\n")
    check_results(list(iter_records(path, max_line_bytes=CAP)))


@pytest.mark.parametrize("name", ["corpus.jsonl.gz", "corpus.jsonl"])  # by suffix and by magic
def test_gzip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"\r\n".join(raw for raw, _, _ in LINES)))
    check_results(list(iter_records(path, max_line_bytes=CAP)))


def test_truncated_gzip_raises_oserror(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    data = gzip.compress(b'{"text": "hello"}\n' * 10_000)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="truncated"):
        list(iter_records(path))


def test_line_cap_is_exact_and_ignores_the_terminator(tmp_path: Path) -> None:
    def line(n: int) -> bytes:
        body = b'{"text": "' + b"y" * (n - 12) + b'"}'
        assert len(body) == n
        return body

    path = tmp_path / "cap.jsonl"
    path.write_bytes(line(100) + b"\r\n" + line(101) + b"\r\n" + line(100) + b"\n" + line(101))
    results = list(iter_records(path, max_line_bytes=100))
    assert [type(r) for r in results] == [Record, Reject, Record, Reject]
    assert results[1].reason == "line is 101 bytes, over the cap of 100 bytes"
    assert results[3].reason == "line is 101 bytes, over the cap of 100 bytes"


@pytest.mark.parametrize("compress", [False, True])
def test_huge_line_is_skipped_in_small_memory(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / ("huge.jsonl.gz" if compress else "huge.jsonl")
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        head, tail = b'{"id": "huge", "text": "', b'"}'
        f.write(b'{"id": "before", "text": "ok"}\n' + head)
        for _ in range(20):
            f.write(b"z" * 2**20)  # 20 MiB on one line, never in memory at once here either
        f.write(tail + b'\r\n{"id": "after", "text": "still ok"}\n')
    tracemalloc.start()
    try:
        results = list(iter_records(path, max_line_bytes=2**20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.doc_id for r in results] == ["before", None, "after"]
    size = len(head) + 20 * 2**20 + len(tail)
    assert results[1].reason == f"line is {size} bytes, over the cap of {2**20} bytes"
    assert results[2] == Record(3, "after", "still ok")
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_custom_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"key": "k1", "body": "text one", "text": 3}\n{"key": 7, "text": "x"}\n')
    results = list(iter_records(path, text_field="body", id_field="key"))
    assert results == [Record(1, "k1", "text one"), Reject(2, "7", "missing text field 'body'")]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert list(iter_records(path)) == []
    path.write_bytes(b"\xef\xbb\xbf\n\n  \r\n")
    assert list(iter_records(path)) == []


def test_parquet(tmp_path: Path) -> None:
    n = 2500  # several record batches: row numbers must run on across them
    texts: list[str | None] = [f"doc {i}" for i in range(n)]
    texts[5], texts[6], texts[7] = None, "   ", " padded "  # null, blank, fine
    ids: list[str | None] = [f"id-{i}" for i in range(n)]
    ids[9] = None
    path = tmp_path / "corpus.parquet"
    table = pa.table({"id": ids, "text": texts, "other": list(range(n))})
    pq.write_table(table, path, row_group_size=1000)
    results = list(iter_records(path))
    assert [r.line for r in results] == list(range(1, n + 1))
    assert results[0] == Record(1, "id-0", "doc 0")
    assert results[5] == Reject(6, "id-5", "text field 'text' is null")
    assert results[6] == Reject(7, "id-6", "empty or whitespace-only text")
    assert results[7] == Record(8, "id-7", " padded ")
    assert results[9] == Record(10, "10", "doc 9")
    assert results[-1] == Record(n, f"id-{n - 1}", f"doc {n - 1}")
    assert sum(isinstance(r, Reject) for r in results) == 2


def test_parquet_int_ids_binary_text_and_no_id_column(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"  # detected by the PAR1 magic, not the suffix
    table = pa.table({"n": pa.array([1, 2, 3], pa.int64()),
                      "body": pa.array([b"caf\xc3\xa9", b"\xff", b"ok"], pa.binary())})
    pq.write_table(table, path)
    assert list(iter_records(path, text_field="body", id_field="n")) == [
        Record(1, "1", "café"),
        Reject(2, "2", "invalid UTF-8 in text field 'body' at byte 0"),
        Record(3, "3", "ok"),
    ]
    assert [r.doc_id for r in iter_records(path, text_field="body")] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="no column 'text'"):
        list(iter_records(path))


def test_parquet_non_string_text_column(tmp_path: Path) -> None:
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    reasons = [r.reason for r in iter_records(path)]
    assert reasons == ["text field 'text' is not a string (got int)"] * 2


def test_parquet_text_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": ["é" * 60, "é" * 50, "small"]}), path)
    assert list(iter_records(path, max_line_bytes=100)) == [
        Reject(1, None, "text is 120 bytes, over the cap of 100 bytes"),
        Record(2, "2", "é" * 50),
        Record(3, "3", "small"),
    ]


def test_file_checksum(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 10_000
    path.write_bytes(data)
    assert file_checksum(path) == hashlib.sha256(data).hexdigest()
    assert file_checksum(str(path)) == file_checksum(path)


def test_integer_digit_limit_does_not_depend_on_the_interpreter_setting(tmp_path: Path) -> None:
    path = tmp_path / "ints.jsonl"
    path.write_bytes(
        b'{"text": "ok", "n": -' + b"9" * 4300 + b'}\n{"text": "no", "n": ' + b"9" * 4301 + b"}"
    )
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # lifts Python's CVE-2020-10735 guard for the whole process
    try:
        results = list(iter_records(path))
    finally:
        sys.set_int_max_str_digits(old)
    assert results[0] == Record(1, "1", "ok")
    assert results[1] == Reject(2, None, "integer too large (over 4300 digits)")


def test_memory_does_not_grow_with_corpus_size(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    with path.open("wb") as f:
        for i in range(20_000):  # 800 KB of lines
            f.write(b'{"id": %d, "text": "document number %d"}\n' % (i, i))
    tracemalloc.start()
    try:
        count = sum(1 for r in iter_records(path) if isinstance(r, Record))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 20_000
    assert peak < 200_000, f"peak {peak} bytes"  # far below the file size
