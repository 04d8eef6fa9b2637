"""The start-up probe's workload and timing (worker/model/probe.py). The choice itself:
tests/unit/worker/model/test_providers.py; the real probe through workers:
tests/integration/test_cpu_providers.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np

from worker.export.samples import SAMPLE_TEXTS
from worker.model import probe


def test_probe_texts_add_chunk_sized_texts_capped_at_the_window() -> None:
    texts = probe.probe_texts(8192)
    assert texts[:len(SAMPLE_TEXTS)] == list(SAMPLE_TEXTS)
    extra = texts[len(SAMPLE_TEXTS):]
    assert sorted({len(t) for t in extra}) == [4 * 128, 4 * 256, 4 * 512]
    assert len(extra) == 9 and len(set(extra)) == 9  # different cuts, not one text repeated
    small = probe.probe_texts(64)[len(SAMPLE_TEXTS):]
    assert len(small) == 3 and {len(t) for t in small} == {256}


class FakeModel:
    """embed() takes 50 ms, except one repetition slowed to 400 ms by "other work"."""

    def __init__(self) -> None:
        self.calls = 0
        self.tokenizer = SimpleNamespace(
            encode_batch=lambda texts: [SimpleNamespace(ids=[0] * 10) for _ in texts])

    def embed(self, texts):
        self.calls += 1
        time.sleep(0.4 if self.calls == 2 else 0.05)
        return np.ones((len(texts), 4), dtype=np.float32)


def test_timed_reports_the_fastest_repetition(monkeypatch) -> None:
    monkeypatch.setattr(probe, "PROBE_SECONDS", 0.5)
    vecs, tps = probe._timed(FakeModel(), ["a"] * 10)  # 100 tokens per repetition
    assert vecs.shape == (10, 4)
    assert 1500 < tps <= 2000, tps  # ~100 / 0.05 s; a mean would be far lower
