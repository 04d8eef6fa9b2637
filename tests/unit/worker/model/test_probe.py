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


class CostModel:
    """embed() sleeps ``per_token`` seconds per token (10 tokens per text)."""

    def __init__(self, per_token: float) -> None:
        self.per_token = per_token
        self.tokenizer = SimpleNamespace(
            encode_batch=lambda texts: [SimpleNamespace(ids=[0] * 10) for _ in texts])

    def embed(self, texts):
        time.sleep(self.per_token * 10 * len(texts))
        return np.ones((len(texts), 4), dtype=np.float32)


def test_sample_is_sized_to_the_budget_from_one_small_batch() -> None:
    texts = [f"t{i}" for i in range(100)]  # 1,000 tokens
    slow = probe.fit_sample(CostModel(0.001), texts, seconds=1.0)  # 1 ms/token
    # (1 s - 20 ms calibration) / 2 passes / 1 ms = ~490 tokens: 49 texts (a busy machine
    # oversleeps, which prices a token higher: fewer texts, never more)
    assert 8 <= len(slow) <= 49 and slow == texts[:len(slow)], len(slow)
    assert probe.fit_sample(CostModel(1e-6), texts, seconds=1.0) == texts  # cheap: all of it
    floor = probe.fit_sample(CostModel(0.01), texts, seconds=0.1)  # too slow for any budget
    assert floor == texts[:probe.CALIBRATION_TEXTS]


def test_mixed_interleaves_short_and_chunk_sized_texts() -> None:
    texts = probe.mixed(probe.probe_texts(8192))
    assert sorted(texts) == sorted(probe.probe_texts(8192))  # the same texts, reordered
    head = [len(t) for t in texts[:6]]
    assert head[1::2] == [4 * 128, 4 * 256, 4 * 512]  # a prefix already has every length
    assert all(n < 4 * 128 for n in head[0::2])


def test_measure_keeps_to_its_budget_for_a_slow_model() -> None:
    bundle = SimpleNamespace(config=SimpleNamespace(max_length=8192), path="b")
    model = CostModel(0.002)
    model.provider = probe.CPU
    cands = [probe.Candidate(probe.CPU, "fp32"), probe.Candidate(probe.OPENVINO, "fp32")]
    model2 = CostModel(0.001)
    model2.provider = probe.OPENVINO
    models = {probe.CPU: model, probe.OPENVINO: model2}
    t0 = time.perf_counter()
    out = probe.measure(bundle, cands, 1,  # type: ignore[arg-type]
                        lambda b, **kw: models[kw["choice"].provider], budget_s=2.0)
    took = time.perf_counter() - t0
    assert took < 4.0, took  # the whole set would take 2 × 56 texts × 20 ms × 2 passes = 4.5 s
    assert out[cands[1]].tokens_per_s > out[cands[0]].tokens_per_s  # still the right order
    assert not any(m.error for m in out.values())
    probe._kept.clear()


def test_a_model_too_slow_for_the_budget_runs_the_calibration_batch_once_more_only() -> None:
    model = CostModel(0.01)  # 100 ms per text: one text costs the whole 0.1 s budget
    calls: list[int] = []
    embed = model.embed
    model.embed = lambda texts: calls.append(len(texts)) or embed(texts)  # type: ignore
    model.provider = probe.CPU
    out = probe.measure(SimpleNamespace(config=SimpleNamespace(max_length=8192),  # type: ignore
                                        path="b"), [probe.Candidate(probe.CPU, "fp32")], 1,
                        lambda b, **kw: model, budget_s=0.1)
    probe._kept.clear()
    assert calls == [1, 1]  # calibration (the warm-up too) and one timed pass, one text each
    assert out[probe.Candidate(probe.CPU, "fp32")].tokens_per_s > 0


def test_the_last_candidate_measured_is_handed_to_the_worker_only_if_chosen(tmp_path) -> None:
    bundle = SimpleNamespace(config=SimpleNamespace(max_length=64), path=tmp_path)
    cands = [probe.Candidate(probe.CPU, "fp32"), probe.Candidate(probe.OPENVINO, "fp32")]
    models = {}

    def load(b, **kw):
        m = CostModel(1e-5)
        m.provider = kw["choice"].provider
        models[m.provider] = m
        return m

    probe.measure(bundle, cands, 2, load, budget_s=0.5)  # type: ignore[arg-type]
    key = (str(tmp_path), cands[1], 2)
    assert list(probe._kept) == [key] and probe._kept[key] is models[probe.OPENVINO]
    probe._kept.clear()
