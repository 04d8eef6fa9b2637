"""Fakes for the unit tests of the worker flow: what cannot be real in a test of seconds.

``FakeModel`` has the interface of ``worker.model.session.LoadedModel`` that the pipeline uses
(``bundle.config.dim``, ``tokenizer``, ``pad_id``, ``run(batch)``, ``provider``, ``precision``,
``fallback``, ``fingerprint``), with a real word-level ``tokenizers`` tokenizer and vectors that
are a deterministic function of the token ids, so a test can compute what every row must be.
The job directory is real (``staged_job``): the same files the producer writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from billiard.exceptions import SoftTimeLimitExceeded

from storage.hashing import content_key, text_sha256
from storage.jobdir import JobDir
from storage.shards import input_table, write_table
from worker.errors import InferenceError
from worker.pipeline import ShardContext

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi "
         "rho sigma tau upsilon phi chi psi omega bad poison").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


def word_tokenizer() -> Any:
    """A real ``tokenizers`` WordLevel tokenizer: [CLS] words [SEP], [PAD] = 0."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIALS + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def text(i: int, extra: int = 1) -> str:
    """A text of ``2 + extra`` words, distinct for every ``i < 576`` (``4 + extra`` tokens)."""
    return " ".join([WORDS[i % 24], WORDS[i // 24 % 24]]
                    + [WORDS[(i + k) % 24] for k in range(extra)])


def fake_vectors(ids: np.ndarray, mask: np.ndarray, dim: int) -> np.ndarray:
    """Unit vectors from token ids: a bag of ids hashed into ``dim`` buckets, plus a constant."""
    out = np.full((ids.shape[0], dim), 0.01, dtype=np.float32)
    for r in range(ids.shape[0]):
        for t in ids[r][mask[r].astype(bool)]:
            out[r, (int(t) * 7) % dim] += 1.0
    return out / np.linalg.norm(out, axis=1, keepdims=True)


class FakeModel:
    """The LoadedModel interface the pipeline uses; records every batch it is asked to run."""

    provider = "FakeExecutionProvider"
    precision = "fp32"
    fallback = False
    fingerprint = "fake-fingerprint"
    pad_id = 0

    def __init__(self, dim: int = 8, *, fail_word: str | None = None,
                 soft_time_limit: bool = False) -> None:
        self.bundle = SimpleNamespace(config=SimpleNamespace(dim=dim, source="fake:test",
                                                             max_length=512))
        self.tokenizer = word_tokenizer()
        self.fail_id = self.tokenizer.token_to_id(fail_word) if fail_word else None
        self.soft_time_limit = soft_time_limit
        self.calls: list[list[int]] = []

    def run(self, batch: Any) -> np.ndarray:
        self.calls.append(list(batch.positions))
        try:  # like LoadedModel.run: every exception comes out as an InferenceError
            if self.soft_time_limit:
                raise SoftTimeLimitExceeded()
            if self.fail_id is not None and (batch.input_ids == self.fail_id).any():
                raise RuntimeError("fake session cannot run this batch")
        except Exception as exc:
            raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
        return fake_vectors(batch.input_ids, batch.attention_mask, self.bundle.config.dim)

    def expected(self, texts: list[str]) -> np.ndarray:
        """What ``run`` gives each text alone (rows in order)."""
        ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        return np.vstack([fake_vectors(np.array([x]), np.ones((1, len(x))), self.bundle.config.dim)
                          for x in ids])


class DictCache:
    """The EmbeddingCache interface (get_many / put_many) over a dict."""

    def __init__(self) -> None:
        self.data: dict[str, np.ndarray] = {}
        self.lookups = 0

    def get_many(self, keys: list[str]) -> list[np.ndarray | None]:
        self.lookups += 1
        return [self.data.get(k) for k in keys]

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> int:
        for k, v in items:
            self.data[k] = np.array(v, dtype=np.float32)
        return len(items)

    def preload(self, model: FakeModel, texts: list[str]) -> None:
        for t, v in zip(texts, model.expected(texts)):
            self.data[content_key(model.fingerprint, text_sha256(t))] = v


def staged_job(out: Path, shards: list[list[str]], job_id: str = "job-1",
               ids: dict[str, list[int]] | None = None) -> JobDir:
    """A real job directory with staged input shards and a manifest, as the producer writes.

    ``ids``: token ids staged for these texts (the producer stores a one-chunk document's ids).
    """
    job = JobDir.create(out, job_id)
    tok = word_tokenizer()
    line, entries = 0, []
    for n, texts in enumerate(shards):
        rows = []
        for t in texts:
            line += 1
            rows.append({"line": line, "doc_id": f"doc{line}", "chunk_index": 0,
                         "chunk_count": 1, "char_start": 0, "char_end": len(t),
                         "n_tokens": len(tok.encode(t).ids), "text": t,
                         "text_sha256": text_sha256(t), "input_ids": (ids or {}).get(t)})
        write_table(job.input_path(n), input_table(rows))
        entries.append({"shard": n, "chunks": len(rows),
                        "tokens": sum(r["n_tokens"] for r in rows)})
    job.write_manifest({"job_id": job_id, "staged": True, "submitted_at": time.time(),
                        "shards": entries})
    return job


def context(job: JobDir, model: FakeModel, *, shard: int = 0, cache: DictCache | None = None,
            max_attempts: int = 3, faults: str = "", max_batch_tokens: int = 64,
            soft_time_limit: float = 5, load_model: Any = None) -> ShardContext:
    cache = cache if cache is not None else DictCache()
    return ShardContext(job=job, shard=shard, queue="cpu", hostname="test@host",
                        max_attempts=max_attempts, max_batch_tokens=max_batch_tokens,
                        load_model=load_model or (lambda: model), cache_for=lambda dim: cache,
                        faults=faults, soft_time_limit=soft_time_limit)
