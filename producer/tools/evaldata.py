"""``producer eval``'s labelled data: read and check triplets, scored pairs or a retrieval set.

Not a stage of the job flow. Lines are read with ``worker.staging.corpus.iter_objects`` (the corpus
reader's byte cap, UTF-8 and JSON checks), then judged here: every bad line becomes a
``DataReject`` with its file, line number and reason, and the rest is kept, as a job keeps the
good documents of a corpus. A file (or retrieval set) with no usable line is an error.

Shapes (``detect_task`` picks one from the first object's fields; ``--task`` forces it):

- triplets, JSONL: ``{"query", "positive", "negative"}`` (seed 003's training data);
- pairs, JSONL: ``{"text1", "text2", "score"}``, score any finite number;
- retrieval: a directory in BEIR's layout (``corpus.jsonl``, ``queries.jsonl``,
  ``qrels/test.tsv``) or a JSON file ``{"queries": F, "corpus": F, "qrels": F}`` naming the
  three files (relative to it). Corpus and query lines are ``{"_id" or "id", "text"}`` (a
  corpus ``title`` is put before the text with a space, as BEIR's dense retrievers do); qrels
  is TSV ``query-id corpus-id score`` with an optional header, score > 0 relevant, 0 ignored.
  Queries without a relevant document are not scored (as InformationRetrievalEvaluator).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.staging.corpus import Reject, iter_objects
from producer.errors import CorpusError

TASKS = ("triplets", "pairs", "retrieval")
FIELDS = {"triplets": ("query", "positive", "negative"), "pairs": ("text1", "text2", "score")}
BEIR_FILES = {"corpus": "corpus.jsonl", "queries": "queries.jsonl", "qrels": "qrels/test.tsv"}
_SURROGATE = re.compile("[\ud800-\udfff]")


class EvalDataError(CorpusError):
    """Labelled data that cannot be evaluated at all (no usable line, unknown shape)."""


@dataclass(frozen=True)
class DataReject:
    """One refused line of labelled data."""

    path: str
    line: int
    reason: str


@dataclass
class EvalData:
    """Usable labelled data of one task; ``rows`` per task:

    triplets: ``(query, positive, negative)``; pairs: ``(text1, text2, score)``; retrieval:
    ``queries`` and ``corpus`` map id -> text, ``relevant`` maps query id -> relevant ids."""

    task: str
    source: str
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    queries: dict[str, str] = field(default_factory=dict)
    corpus: dict[str, str] = field(default_factory=dict)
    relevant: dict[str, set[str]] = field(default_factory=dict)
    rejects: list[DataReject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.relevant) if self.task == "retrieval" else len(self.rows)


def read_eval_data(data: str | Path, task: str | None = None) -> EvalData:
    """Read ``data`` as ``task`` (default: detected).

    Raises:
        EvalDataError: an unknown shape, or nothing usable is left.
        OSError: a file cannot be read.
    """
    path = Path(data)
    task = task or detect_task(path)
    if task not in TASKS:
        raise EvalDataError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    out = read_retrieval(path) if task == "retrieval" else read_labelled(path, task)
    if not out.size:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in out.rejects[:3])
        raise EvalDataError(f"{path}: no usable {task} line" + (f" ({first})" if first else ""))
    return out


def detect_task(path: Path) -> str:
    """``retrieval`` for a directory or a JSON spec naming the files, else from the fields of
    the first JSON object line."""
    if path.is_dir() or _retrieval_spec(path) is not None:
        return "retrieval"
    for item in iter_objects(path):
        if isinstance(item, tuple) and isinstance(item[1], dict):
            for task, names in FIELDS.items():
                if all(n in item[1] for n in names):
                    return task
            raise EvalDataError(
                f"{path}: line {item[0]} has fields {sorted(item[1])}; expected "
                f"{' / '.join(str(list(v)) for v in FIELDS.values())}, or pass --task")
    raise EvalDataError(f"{path}: no JSON object line to tell the task from")


def read_labelled(path: Path, task: str) -> EvalData:
    """Triplets or pairs: one row per good line, a DataReject per bad one."""
    out = EvalData(task, str(path))
    names = FIELDS[task]
    for item in iter_objects(path):
        if isinstance(item, Reject):
            out.rejects.append(DataReject(str(path), item.line, item.reason))
            continue
        line, obj = item
        try:
            texts = [_text(obj, n) for n in names[:2]]
            third = _score(obj) if task == "pairs" else _text(obj, names[2])
        except ValueError as exc:
            out.rejects.append(DataReject(str(path), line, str(exc)))
            continue
        out.rows.append((*texts, third))
    return out


def read_retrieval(path: Path) -> EvalData:
    """Queries, corpus and qrels; qrels lines naming an unknown id are rejected."""
    files = _retrieval_files(path)
    out = EvalData("retrieval", str(path))
    out.corpus = _read_texts(files["corpus"], out.rejects, title=True)
    out.queries = _read_texts(files["queries"], out.rejects, title=False)
    _read_qrels(files["qrels"], out)
    unjudged = len(out.queries) - len(out.relevant)
    if unjudged:
        out.notes.append(f"{unjudged} of {len(out.queries)} queries have no relevant document "
                         "in the qrels and are not scored")
    return out


def _retrieval_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        files = {k: path / v for k, v in BEIR_FILES.items()}
    else:
        spec = _retrieval_spec(path)
        if spec is None:
            raise EvalDataError(f"{path}: not a retrieval set (a BEIR directory or a JSON "
                                "file {\"queries\": .., \"corpus\": .., \"qrels\": ..})")
        files = {k: (path.parent / str(spec[k])) for k in BEIR_FILES}
    for name, f in files.items():
        if not f.is_file():
            raise EvalDataError(f"{f}: missing the retrieval {name} file")
    return files


def _retrieval_spec(path: Path) -> dict[str, Any] | None:
    if not path.is_file() or path.suffix != ".json":
        return None
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: invalid JSON ({exc})") from exc
    ok = isinstance(spec, dict) and all(isinstance(spec.get(k), str) for k in BEIR_FILES)
    return spec if ok else None


def _read_texts(path: Path, rejects: list[DataReject], title: bool) -> dict[str, str]:
    texts: dict[str, str] = {}
    for item in iter_objects(path):
        if isinstance(item, Reject):
            rejects.append(DataReject(str(path), item.line, item.reason))
            continue
        line, obj = item
        try:
            doc_id = _id(obj)
            if doc_id in texts:
                raise ValueError(f"duplicate id {doc_id!r}")
            head = obj.get("title") if title else None
            if head is not None and not isinstance(head, str):
                raise ValueError("field 'title' must be a string")
            text = _text(obj, "text", allow_empty=bool(head and head.strip()))
            texts[doc_id] = f"{head} {text}".strip() if head else text
        except ValueError as exc:
            rejects.append(DataReject(str(path), line, str(exc)))
    return texts


def _read_qrels(path: Path, out: EvalData) -> None:
    with path.open(encoding="utf-8", errors="replace") as f:
        for line_no, raw in enumerate(f, 1):
            cols = raw.rstrip("\r\n").split("\t")
            if not raw.strip() or (line_no == 1 and cols[0] == "query-id"):
                continue
            try:
                qid, cid, score = _qrel(cols, out)
            except ValueError as exc:
                out.rejects.append(DataReject(str(path), line_no, str(exc)))
                continue
            if score > 0:
                out.relevant.setdefault(qid, set()).add(cid)


def _qrel(cols: list[str], out: EvalData) -> tuple[str, str, int]:
    if len(cols) != 3:
        raise ValueError(f"expected 3 tab-separated columns (query-id, corpus-id, score), "
                         f"got {len(cols)}")
    qid, cid, score = cols
    try:
        value = int(score)
    except ValueError:
        raise ValueError(f"score {score!r} is not an integer") from None
    if qid not in out.queries:
        raise ValueError(f"query id {qid!r} is not in the queries file (or was rejected)")
    if cid not in out.corpus:
        raise ValueError(f"corpus id {cid!r} is not in the corpus file (or was rejected)")
    return qid, cid, value


def _id(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object (got {type(obj).__name__})")
    value = obj.get("_id", obj.get("id"))
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError("missing or invalid id: '_id' (or 'id') must be a non-empty string "
                         "or an integer")
    return value


def _text(obj: Any, name: str, allow_empty: bool = False) -> str:
    if not isinstance(obj, dict):
        raise ValueError(f"not a JSON object (got {type(obj).__name__})")
    if name not in obj:
        raise ValueError(f"missing field {name!r} (fields: {', '.join(sorted(obj)) or 'none'})")
    value = obj[name]
    if not isinstance(value, str):
        raise ValueError(f"field {name!r} is not a string (got {type(value).__name__})")
    if (not value or value.isspace()) and not allow_empty:
        raise ValueError(f"field {name!r} is empty or whitespace-only")
    if _SURROGATE.search(value):
        raise ValueError(f"field {name!r} contains lone surrogates")
    return value


def _score(obj: dict[str, Any]) -> float:
    if "score" not in obj:
        raise ValueError(f"missing field 'score' (fields: {', '.join(sorted(obj))})")
    value = obj["score"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field 'score' must be a finite number (got {value!r})")
    return float(value)
