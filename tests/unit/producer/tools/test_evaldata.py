"""Labelled eval data: shape detection, rejected lines with reasons, the BEIR layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer.tools.evaldata import EvalDataError, read_eval_data


def _lines(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _reasons(data) -> dict[int, str]:
    return {r.line: r.reason for r in data.rejects}


def test_triplets_keep_good_lines_and_name_the_bad_ones(tmp_path: Path) -> None:
    good = json.dumps({"query": "q", "positive": "p", "negative": "n"})
    data = read_eval_data(_lines(
        tmp_path / "t.jsonl", good, "",
        json.dumps({"query": "q", "positive": " ", "negative": "n"}),
        json.dumps({"text1": "a", "text2": "b", "score": 1}),
        json.dumps({"query": "q", "positive": 3, "negative": "n"}),
        "[1, 2]", "{broken", good))
    assert data.task == "triplets" and data.rows == [("q", "p", "n")] * 2
    r = _reasons(data)
    assert r[3] == "field 'positive' is empty or whitespace-only"
    assert r[4].startswith("missing field 'query' (fields: score, text1, text2)")
    assert r[5] == "field 'positive' is not a string (got int)"
    assert r[6] == "not a JSON object (got list)" and r[7].startswith("malformed JSON")


def test_pairs_need_a_finite_number(tmp_path: Path) -> None:
    data = read_eval_data(_lines(
        tmp_path / "p.jsonl", json.dumps({"text1": "a", "text2": "b", "score": 0.5}),
        json.dumps({"text1": "a", "text2": "b", "score": "high"}),
        json.dumps({"text1": "a", "text2": "b", "score": True}),
        '{"text1": "a", "text2": "b", "score": NaN}',
        json.dumps({"text1": "a", "text2": "b"})), task="pairs")
    assert data.rows == [("a", "b", 0.5)]
    assert set(_reasons(data)) == {2, 3, 4, 5}
    assert "finite number" in _reasons(data)[4] and "missing field 'score'" in _reasons(data)[5]


def test_no_usable_line_is_an_error_that_names_the_first_reasons(tmp_path: Path) -> None:
    path = _lines(tmp_path / "t.jsonl", json.dumps({"query": "", "positive": "p",
                                                    "negative": "n"}))
    with pytest.raises(EvalDataError, match=r"no usable triplets line \(line 1: field 'query'"):
        read_eval_data(path)


def test_unknown_fields_are_an_error_with_the_expected_ones(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match=r"line 2 has fields \['a'\]; expected"):
        read_eval_data(_lines(tmp_path / "x.jsonl", "not json", json.dumps({"a": 1})))


def _beir(root: Path, qrels: list[str]) -> Path:
    (root / "qrels").mkdir(parents=True)
    _lines(root / "corpus.jsonl", json.dumps({"_id": "d1", "title": "T", "text": "one"}),
           json.dumps({"_id": "d2", "text": "two"}), json.dumps({"_id": "d2", "text": "dup"}),
           json.dumps({"_id": "d3", "title": "Only a title", "text": ""}),
           json.dumps({"_id": 7, "text": "int id"}), json.dumps({"text": "no id"}))
    _lines(root / "queries.jsonl", json.dumps({"_id": "q1", "text": "first"}),
           json.dumps({"_id": "q2", "text": "second"}), json.dumps({"_id": "q3", "text": "x"}))
    _lines(root / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore", *qrels)
    return root


def test_beir_directory(tmp_path: Path) -> None:
    root = _beir(tmp_path / "set", ["q1\td1\t1", "q1\td7\t1", "q2\td2\t2", "q2\td1\t0",
                                    "q2\tnope\t1", "q9\td1\t1", "q1\td3\tx", "q1 d3 1"])
    data = read_eval_data(root)
    assert data.task == "retrieval"
    assert data.corpus == {"d1": "T one", "d2": "two", "d3": "Only a title", "7": "int id"}
    assert data.relevant == {"q1": {"d1"}, "q2": {"d2"}}  # score 0 is not relevant
    assert data.size == 2 and data.notes == [
        "1 of 3 queries have no relevant document in the qrels and are not scored"]
    by_file = {(Path(r.path).name, r.line): r.reason for r in data.rejects}
    assert by_file["corpus.jsonl", 3] == "duplicate id 'd2'"
    assert by_file["corpus.jsonl", 6].startswith("missing or invalid id")
    assert by_file["test.tsv", 3] == "corpus id 'd7' is not in the corpus file (or was rejected)"
    assert by_file["test.tsv", 6].startswith("corpus id 'nope'")
    assert by_file["test.tsv", 7].startswith("query id 'q9' is not in the queries file")
    assert by_file["test.tsv", 8] == "score 'x' is not an integer"
    assert by_file["test.tsv", 9].startswith("expected 3 tab-separated columns")


def test_json_spec_names_three_files(tmp_path: Path) -> None:
    root = _beir(tmp_path / "set", ["q1\td1\t1"])
    spec = tmp_path / "set.json"
    spec.write_text(json.dumps({"queries": "set/queries.jsonl", "corpus": "set/corpus.jsonl",
                                "qrels": "set/qrels/test.tsv"}))
    assert read_eval_data(spec).relevant == {"q1": {"d1"}}
    (root / "qrels" / "test.tsv").unlink()
    with pytest.raises(EvalDataError, match="missing the retrieval qrels file"):
        read_eval_data(spec)


def test_retrieval_with_no_usable_judgement_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="no usable retrieval line"):
        read_eval_data(_beir(tmp_path / "set", ["q1\tmissing\t1"]))
