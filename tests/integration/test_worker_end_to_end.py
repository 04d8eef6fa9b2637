"""End to end through real Celery workers, a real redis-server and the real MiniLM bundle."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from producer.job import submit
from storage.readers import read_matrix
from tests.conftest import sample_records, write_jsonl
from tests.procs import rabbitmq_up

pytestmark = pytest.mark.integration


def corpus_of_sentences(path: Path, n_docs: int = 1500) -> Path:
    """Real sentences of the sample as many short documents (plus the whole long ones)."""
    docs = []
    for rec in sample_records():
        for k, part in enumerate(re.split(r"(?<=[.!?。])\s+|\n+", rec["text"])):
            if len(part.strip()) > 20:
                docs.append({"id": f"{rec['id']}-{k}", "text": part.strip()})
    docs = docs[: n_docs - 10]
    docs += [{"id": r["id"], "text": r["text"]} for r in sample_records()
             if len(r["text"]) > 4000][:10]
    return write_jsonl(path, docs)


def direct_vectors(bundle: Path, texts: list[str]) -> np.ndarray:
    from worker.model.session import load_model

    return load_model(bundle, device="cpu", precision="fp32").embed(texts)


def test_end_to_end_every_chunk_once_and_equal_to_direct_session(
        tmp_path, fleet, redis_url, minilm_bundle):
    corpus = corpus_of_sentences(tmp_path / "corpus.jsonl")
    fleet()
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), precision="fp32",
                 broker=redis_url, shard_tokens=8000, job_id="e2e")
    st = job.wait(timeout_s=600)
    assert st.status == "succeeded", st
    m = job.dir.reload()
    assert len(m.shards) >= 4
    assert (job.path / "_SUCCESS").exists()

    # Every expected chunk exactly once (Jepsen-style: lost / duplicated / unexpected).
    staged = Counter()
    texts: dict[tuple[str, int], str] = {}
    for s in m.shards:
        t = pq.read_table(job.dir.input_path(s.shard))
        for d, c, x in zip(t["doc_id"].to_pylist(), t["chunk_index"].to_pylist(),
                           t["text"].to_pylist()):
            staged[(d, c)] += 1
            texts[(d, c)] = x
    ids, matrix = read_matrix(job.path)
    got = Counter(ids)
    assert sum(staged.values()) == m.totals["chunks"] > 1500
    assert not [k for k in staged if got[k] == 0], "lost chunks"
    assert not [k for k, n in got.items() if n > 1], "duplicated chunks"
    assert not [k for k in got if k not in staged], "unexpected chunks"

    # Each vector equals the direct session output for that text.
    ref = direct_vectors(minilm_bundle, [texts[k] for k in ids])
    cos = (matrix * ref).sum(axis=1)
    assert cos.min() >= 0.9999, cos.min()
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-4)

    # Per-batch metrics exist for every shard and add up to the chunk and token totals.
    met = duckdb.sql(f"SELECT * FROM read_parquet('{job.dir.metrics_dir}/*.parquet')").df()
    assert set(met["shard"]) == {s.shard for s in m.shards}
    assert met["chunks"].sum() == m.totals["chunks"]
    assert met["real_tokens"].sum() == m.totals["tokens"]
    assert (met["provider"] == "CPUExecutionProvider").all()
    assert (met["precision"] == "fp32").all()
    inf = met[met["batch_index"] >= 0]  # batch_index -1: the shard's cache hits
    assert (inf["padded_tokens"] >= inf["real_tokens"]).all()
    assert inf["padded_tokens"].sum() <= 1.15 * inf["real_tokens"].sum()  # length-sorted
    assert m.result["embedded_chunks"] == m.totals["chunks"]

    # The same corpus as a new job computes nothing: every row cached, metrics 100% hits.
    job2 = submit(corpus, tmp_path / "out", model=str(minilm_bundle), precision="fp32",
                  broker=redis_url, shard_tokens=8000, job_id="e2e-again")
    assert job2.wait(timeout_s=300).status == "succeeded"
    t2 = job2.read_table()
    assert t2.num_rows == m.totals["chunks"]
    assert all(t2["cached"].to_pylist())
    met2 = duckdb.sql(f"SELECT * FROM read_parquet('{job2.dir.metrics_dir}/*.parquet')").df()
    assert met2["cache_hits"].sum() == met2["chunks"].sum() == m.totals["chunks"]
    assert met2["inference_ms"].sum() == 0
    ids2, matrix2 = read_matrix(job2.path)
    order = {k: i for i, k in enumerate(ids)}
    cos2 = (matrix2 * matrix[[order[k] for k in ids2]]).sum(axis=1)
    assert cos2.min() >= 0.9999  # float16 in the cache


def test_gpu_queue_without_cuda_embeds_on_cpu_and_records_fallback(
        tmp_path, fleet, redis_url, minilm_bundle):
    recs = sample_records()[:40]
    corpus = write_jsonl(tmp_path / "c.jsonl", recs)
    w = fleet(queue="gpu")
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), queue="gpu",
                 broker=redis_url, job_id="gpu-fallback")
    assert job.wait(timeout_s=300).status == "succeeded"
    met = pq.read_table(job.dir.metrics_dir).to_pandas()
    assert met["fallback"].all()
    assert (met["queue"] == "gpu").all()
    assert (met["provider"] == "CPUExecutionProvider").all()
    # fp16 is the GPU default; on the CPU fallback it still runs the fp16 variant if present.
    assert "CUDA REQUESTED BUT NOT AVAILABLE" in w.text()
    ids, matrix = read_matrix(job.path)
    assert len(ids) == job.dir.manifest.totals["chunks"]
    assert np.isfinite(matrix).all()


def test_inference_failure_becomes_a_reject_and_the_rest_lands(
        tmp_path, fleet, redis_url, minilm_bundle):
    recs = sample_records()[:30]
    recs[7] = {"id": "poison", "text": "POISON-PILL this chunk makes inference fail"}
    corpus = write_jsonl(tmp_path / "c.jsonl", recs)
    fleet(env={"EMBED_FAULTS": "raise_if_text=POISON-PILL"})
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), broker=redis_url,
                 job_id="poison")
    st = job.wait(timeout_s=300)
    assert st.status == "succeeded"
    rejects = [json.loads(x) for x in job.dir.rejects_path.read_text().splitlines()]
    assert [r["doc_id"] for r in rejects] == ["poison"]
    assert "inference failed" in rejects[0]["reason"] and rejects[0]["line"] == 8
    ids, _ = read_matrix(job.path)
    assert "poison" not in {d for d, _ in ids}
    assert len(ids) == job.dir.manifest.totals["chunks"] - 1


@pytest.mark.skipif(not rabbitmq_up(), reason="RabbitMQ not running on 127.0.0.1:5672")
def test_end_to_end_with_rabbitmq_broker(tmp_path, fleet, redis_server, minilm_bundle):
    queue = f"cpu-{uuid.uuid4().hex[:8]}"  # never touch shared queues
    broker = "amqp://guest:guest@127.0.0.1:5672//"
    recs = sample_records()[:60]
    corpus = write_jsonl(tmp_path / "c.jsonl", recs)
    fleet(queue=queue, broker=broker, cache=redis_server.url(1),
          env={"EMBED_CPU_QUEUE": queue})
    job = submit(corpus, tmp_path / "out", model=str(minilm_bundle), broker=broker,
                 job_id="amqp", cpu_queue=queue)
    assert job.wait(timeout_s=300).status == "succeeded"
    ids, matrix = read_matrix(job.path)
    assert len(ids) == len(set(ids)) == job.dir.manifest.totals["chunks"]
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-3)
