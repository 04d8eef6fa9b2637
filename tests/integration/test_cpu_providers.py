"""CPU providers through real Celery workers: OpenVINO EP vs CPU EP, bf16, the start-up probe,
and cache keys that never mix vectors of different numerics (issue 14)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from producer.job import submit
from storage.bundle import load_bundle
from storage.readers import read_matrix
from worker.model.probe import read_figures
from worker.model.providers import choose_cpu_runtime
from tests.conftest import sample_records, write_jsonl

pytestmark = pytest.mark.integration
OPENVINO = "OpenVINOExecutionProvider"
BF16_FLAGS = {"amx_bf16", "avx512_bf16"}


def _available() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def _flags() -> frozenset[str]:
    from worker.model.session import cpu_flags

    return cpu_flags()


needs_openvino = pytest.mark.skipif(OPENVINO not in _available(),
                                    reason="needs onnxruntime-openvino (the default `cpu` extra "
                                    "on x86-64 Linux)")


def _metrics(job):
    return pq.read_table(job.dir.metrics_dir).to_pandas()


def _direct_fp32(bundle, texts):
    from worker.model.session import load_model

    return load_model(bundle, device="cpu", precision="fp32", cpu_provider="cpu").embed(texts)


def _job(corpus, tmp_path, bundle, redis_url, job_id, precision):
    job = submit(corpus, tmp_path / "out", model=str(bundle), precision=precision,
                 broker=redis_url, job_id=job_id, max_attempts=1)
    st = job.wait(timeout_s=300)
    return job, st


@needs_openvino
@pytest.mark.skipif(not BF16_FLAGS & _flags(), reason="CPU has no amx_bf16/avx512_bf16: "
                    "OpenVINO would compute bf16 requests in f32 (see the refusal test)")
def test_worker_embeds_bf16_on_openvino_and_fp32_job_does_not_reuse_it(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:60])
    fleet()
    job, st = _job(corpus, tmp_path, minilm_bundle, redis_url, "bf16", "bf16")
    assert st.status == "succeeded", st
    met = _metrics(job)
    assert (met["provider"] == OPENVINO).all() and (met["precision"] == "bf16").all()
    ids, matrix = read_matrix(job.path)
    ref = _direct_fp32(minilm_bundle, _texts_in_order(job, ids))
    assert float((matrix * ref).sum(axis=1).min()) >= 0.9995
    job2, st2 = _job(corpus, tmp_path, minilm_bundle, redis_url, "fp32-after-bf16", "fp32")
    assert st2.status == "succeeded", st2
    assert not any(job2.read_table()["cached"].to_pylist()), "fp32 job reused bf16 vectors"
    met2 = _metrics(job2)
    assert (met2["provider"] == "CPUExecutionProvider").all()
    assert (met2["precision"] == "fp32").all()


@needs_openvino
def test_openvino_and_cpu_ep_vectors_never_share_cache_entries(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:40])
    w = fleet(env={"EMBED_CPU_PROVIDER": "openvino"})
    job, st = _job(corpus, tmp_path, minilm_bundle, redis_url, "ov", "fp32")
    assert st.status == "succeeded", st
    met = _metrics(job)
    assert (met["provider"] == OPENVINO).all() and (met["precision"] == "fp32").all()
    ids, matrix = read_matrix(job.path)
    ref = _direct_fp32(minilm_bundle, _texts_in_order(job, ids))
    assert float((matrix * ref).sum(axis=1).min()) >= 0.9995
    w.stop()
    fleet(env={"EMBED_CPU_PROVIDER": "cpu"})
    job2, st2 = _job(corpus, tmp_path, minilm_bundle, redis_url, "cpu-ep", "fp32")
    assert st2.status == "succeeded", st2
    assert not any(job2.read_table()["cached"].to_pylist()), "CPU EP reused OpenVINO vectors"
    assert (_metrics(job2)["provider"] == "CPUExecutionProvider").all()
    job3, _ = _job(corpus, tmp_path, minilm_bundle, redis_url, "cpu-ep-again", "fp32")
    assert all(job3.read_table()["cached"].to_pylist())  # same numerics: every row a hit


@needs_openvino
def test_auto_measures_once_per_machine_logs_the_figures_and_runs_the_choice(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:20])
    w = fleet()
    job, st = _job(corpus, tmp_path, minilm_bundle, redis_url, "auto", "auto")
    assert st.status == "succeeded", st
    log = w.text()
    assert "CPU RUNTIME CHOICE" in log and "tok/s" in log, log[-3000:]
    files = list((tmp_path / "home" / "runtime").glob("*.json"))
    assert len(files) == 1
    rows = json.loads(files[0].read_text())["rows"]
    labels = {(r["provider"], r["precision"]) for r in rows}
    assert {("CPUExecutionProvider", "fp32"), (OPENVINO, "fp32")} <= labels
    assert ((OPENVINO, "bf16") in labels) == bool(BF16_FLAGS & _flags())
    # The worker runs what the rule gives for the figures it stored (fastest that passed its
    # gate; int8 only when LOSSY_MARGIN faster than the best near-lossless candidate).
    measured = read_figures(files[0])
    assert measured is not None and len(measured) == len(rows)
    want = choose_cpu_runtime(_available(), _flags(), load_bundle(minilm_bundle).variants,
                              measured)
    ok = [m for m in measured.values() if not m.error]
    assert any((m.candidate.provider, m.candidate.precision) == (want.provider, want.precision)
               for m in ok), (want, rows)  # the choice came from a measured row, not a default
    met = _metrics(job)
    assert (met["provider"] == want.provider).all(), (want, rows)
    assert (met["precision"] == want.precision).all(), (want, rows)
    w.stop()
    w2 = fleet()  # a second worker start reads the figures instead of measuring again
    job2, st2 = _job(corpus, tmp_path, minilm_bundle, redis_url, "auto-again", "auto")
    assert st2.status == "succeeded"
    assert "CPU RUNTIME CHOICE" in w2.text() and "CPU runtime probe:" not in w2.text()
    assert all(job2.read_table()["cached"].to_pylist())


@needs_openvino
@pytest.mark.skipif(bool(BF16_FLAGS & _flags()), reason="this CPU has bf16 math")
def test_bf16_on_a_cpu_without_bf16_math_fails_the_job_with_the_reason(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:5])
    fleet()
    job, st = _job(corpus, tmp_path, minilm_bundle, redis_url, "bf16-refused", "bf16")
    assert st.status == "failed"
    assert "avx512_bf16" in st.failed_shards[0]["reason"], st.failed_shards


def _texts_in_order(job, ids):
    texts = {}
    for s in job.dir.reload().shards:
        t = pq.read_table(job.dir.input_path(s.shard))
        for d, c, x in zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist(),
                           t["text"].to_pylist()):
            texts[(d, c)] = x
    return [texts[k] for k in ids]


@needs_openvino
def test_dry_run_after_an_auto_job_counts_its_chunks_as_cached(
        tmp_path, fleet, redis_server, redis_url, minilm_bundle, monkeypatch):
    """The dry run asks the worker's policy (the probe's stored choice), so after a job its
    precision is the one the worker ran and every chunk counts as cached (issue 25: it keyed
    the cache with the CPU-EP default and said 0 cached after an OpenVINO job)."""
    from producer.dryrun import dry_run

    import time

    from worker.model.probe import PROBE_VERSION, machine_key

    # Stored figures where the OpenVINO EP won (as it does on AMX machines): the worker reads
    # them instead of measuring, so its choice is not left to timing noise.
    bundle = load_bundle(minilm_bundle)
    key = machine_key(bundle, _available(), _flags(), 1)  # EMBED_THREADS=1
    # One row per candidate this machine's probe would measure (on an AMX or avx512_bf16 CPU
    # that includes OpenVINO bf16; missing rows make the worker measure again).
    from worker.model.providers import cpu_candidates

    rows = [{"provider": c.provider, "precision": c.precision, "tokens_per_s":
             3000.0 if c.provider == OPENVINO else 1000.0, "cos_min": 1.0, "error": ""}
            for c in cpu_candidates(_available(), _flags(), bundle.variants)]
    path = tmp_path / "home" / "runtime" / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": PROBE_VERSION, "bundle": str(bundle.path),
                                "measured_at": time.time(), "rows": rows}))
    corpus = write_jsonl(tmp_path / "c.jsonl", sample_records()[:20])
    w = fleet()
    job, st = _job(corpus, tmp_path, minilm_bundle, redis_url, "auto", "auto")
    assert st.status == "succeeded", st
    assert "CPU runtime probe:" not in w.text()  # it used the stored figures
    met = _metrics(job)
    assert (met["provider"] == OPENVINO).all()
    monkeypatch.setenv("EMBED_HOME", str(tmp_path / "home"))
    got = dry_run(str(corpus), cache_url=redis_server.url(1), model=str(minilm_bundle),
                  precision="auto", queue="cpu", text_field="text", id_field="id",
                  max_line_bytes=2**20, max_tokens=None, overlap=0, prefix="passage",
                  shard_tokens=32768)
    assert (got["provider"], got["precision"]) == (met["provider"][0], met["precision"][0])
    assert got["chunks"] == st.chunks and got["cached"] == got["chunks"], got
