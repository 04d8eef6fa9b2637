"""``producer report``: figures from a synthetic job directory, the HTML page and its charts
(rendered in headless Chromium when it is installed), a running job, and the SVG helpers."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.tools.report import load_report, summarize
from producer.tools.svg import bar_chart, line_chart, nice_ticks
from storage.hashing import text_sha256
from storage.jobdir import JobDir
from storage.shards import input_table, metrics_table, write_table

CHROMIUM = "/usr/bin/chromium"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _row(shard: int, b: int, host: str, queue: str, prec: str, fallback: bool, chunks: int,
         real: int, padded: int, hits: int, total_ms: float, at_s: float) -> dict:
    return {"shard": shard, "batch_index": b, "hostname": host, "queue": queue,
            "provider": "CPUExecutionProvider", "precision": prec, "fallback": fallback,
            "chunks": chunks, "real_tokens": real, "padded_tokens": padded, "cache_hits": hits,
            "tokenize_ms": 0.0, "inference_ms": total_ms, "total_ms": total_ms,
            "tokens_per_s": 0.0, "rss_mb": 200.0, "attempt": 1,
            "timestamp": T0 + timedelta(seconds=at_s)}


def make_job(out: Path, *, finished: bool = True) -> JobDir:
    """Two shards: a CPU worker (4 batches) and a "GPU" worker that fell back to CPU
    (2 batches and 10 cache hits). Inference: 4,500 real / 5,000 padded tokens."""
    job = JobDir.create(out, "job-r")
    cpu = [_row(0, b, "cpu-1@box", "cpu", "int8", False, 8, 900, 1000, 0, ms, at)
           for b, (ms, at) in enumerate([(10, 0), (20, 2), (30, 6), (40, 11)])]
    gpu = [_row(1, -1, "gpu-1@box", "gpu", "fp32", True, 10, 300, 0, 10, 0.0, 1),
           _row(1, 0, "gpu-1@box", "gpu", "fp32", True, 4, 450, 500, 0, 100, 3),
           _row(1, 1, "gpu-1@box", "gpu", "fp32", True, 4, 450, 500, 0, 200, 8)]
    write_table(job.metrics_path(0), metrics_table(cpu))
    write_table(job.metrics_path(1), metrics_table(gpu))
    for shard, lengths in ((0, [20] * 16 + [200] * 16), (1, [50] * 18)):
        write_table(job.input_path(shard), input_table([
            {"line": i + 1, "doc_id": f"d{i}", "chunk_index": 0, "chunk_count": 1,
             "char_start": 0, "char_end": 1, "n_tokens": n, "text": "x",
             "text_sha256": text_sha256("x")} for i, n in enumerate(lengths)]))
    manifest = {
        "job_id": "job-r", "staged": True, "status": "succeeded" if finished else "running",
        "submitted_at": time.time() - 20, "model": {"source": "test/model"},
        "totals": {"accepted": 30, "rejected": 2, "chunks": 50, "tokens": 4800},
        "shards": [{"shard": 0, "chunks": 32, "tokens": 3600},
                   {"shard": 1, "chunks": 18, "tokens": 1200}],
    }
    if finished:
        manifest["result"] = {"wall_s": 12.0, "rejects": 3, "embedded_chunks": 50}
    job.write_manifest(manifest)
    return job


def test_report_prints_the_figures(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    res = CliRunner().invoke(main, ["report", str(job.root)])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "30 accepted, 2 rejected" in out
    assert "50/50 done, rejects 3" in out
    assert "4,500 real / 5,000 padded" in out and "padding 10.0%" in out
    assert "300 from the cache" in out
    assert "12.0 s" in out
    assert "400 tokens/s, 2.5 docs/s" in out          # 4,800 tokens, 30 docs in 12 s
    assert "p50 35.0" in out and "p95 175.0" in out and "p99 195.0" in out
    assert "20.0% hit rate (10/50" in out
    cpu_line = next(line for line in out.splitlines() if line.startswith("cpu-1@box"))
    gpu_line = next(line for line in out.splitlines() if line.startswith("gpu-1@box"))
    assert "36,000" in cpu_line and cpu_line.rstrip().endswith("no")   # 3,600 tokens in 0.1 s
    assert "3,000" in gpu_line and gpu_line.rstrip().endswith("FALLBACK")
    assert "FALLBACK   1 worker(s)" in out


def test_report_json(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    res = CliRunner().invoke(main, ["report", str(job.root), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert s["padding_fraction"] == 0.1
    assert s["latency_ms"] == {"p50": 35.0, "p95": 175.0, "p99": 195.0}
    assert s["cache"]["hit_rate"] == 0.2
    assert s["fallback_workers"] == ["gpu-1@box"]
    assert [g["batches"] for g in s["workers"]] == [4, 2]


def test_running_job_estimates_docs(tmp_path: Path) -> None:
    job = make_job(tmp_path, finished=False)
    manifest, rows, lengths = load_report(job.root)
    s = summarize(manifest, rows, now=manifest["submitted_at"] + 10)
    assert s["wall_s"] == 10.0 and not s["finished"] and s["docs_per_s_estimated"]
    assert s["tokens_per_s"] == 480.0
    assert len(lengths) == 50


def test_html_report_has_charts(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    html = tmp_path / "r" / "report.html"
    res = CliRunner().invoke(main, ["report", str(job.root), "--html", str(html)])
    assert res.exit_code == 0, res.output
    page = html.read_text()
    assert page.count("<svg") == 4
    for title in ("Throughput per worker", "Batch latency vs batch size", "Chunk length",
                  "Cache hits over time"):
        assert title in page
    assert 'class="fallback"' in page and "gpu-1@box (CPU fp32) FALLBACK" in page
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # self-contained


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs /usr/bin/chromium")
def test_html_report_renders_in_chromium(tmp_path: Path) -> None:
    job = make_job(tmp_path)
    html = tmp_path / "report.html"
    assert CliRunner().invoke(main, ["report", str(job.root), "--html", str(html)]).exit_code == 0
    png = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={png}", "--window-size=1200,1600", html.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), "chromium wrote no screenshot"
    assert png.stat().st_size > 10_000


def test_empty_job_reports_no_metrics(tmp_path: Path) -> None:
    job = JobDir.create(tmp_path, "empty")
    job.write_manifest({"job_id": "empty", "status": "staging"})
    res = CliRunner().invoke(main, ["report", str(job.root), "--html", str(tmp_path / "e.html")])
    assert res.exit_code == 0, res.output
    assert "no metrics yet" in res.output and "p50 -" in res.output
    assert "no data" in (tmp_path / "e.html").read_text()


def test_svg_helpers() -> None:
    assert nice_ticks(0, 97) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
    chart = line_chart({"a": [(0, 1), (5, 3)], "b<&>": [(0, 2)]}, title="T", xlabel="x",
                       ylabel="y")
    assert chart.startswith("<svg") and "b&lt;&amp;&gt;" in chart
    assert bar_chart([0, 1, 2], [3, 4], title="H", xlabel="x", ylabel="n").count("<rect") >= 3
    assert "no data" in line_chart({}, title="T", xlabel="x", ylabel="y")


def test_report_shows_the_eval_gate_figures_of_the_unchanged_bundle(tmp_path: Path) -> None:
    from tests.unit.storage.test_bundle import CONFIG, make_bundle
    from storage.bundle import load_bundle

    figures = {"data": "dev.jsonl", "task": "triplets", "metric": "accuracy", "max_drop": 0.01,
               "variants": {"fp32": {"metrics": {"accuracy": 0.9}},
                            "int8": {"metrics": {"accuracy": 0.85}, "drop": 0.05,
                                     "passed": False}}}
    bundle = make_bundle(tmp_path / "b", config={**CONFIG, "evaluation": figures})
    job = make_job(tmp_path / "out")
    m = job.manifest.to_dict()
    m["model"] = {"source": "test/model", "bundle_path": str(bundle),
                  "fingerprints": {"fp32": load_bundle(bundle).fingerprint("fp32")}}
    job.write_manifest(m)
    out = CliRunner().invoke(main, ["report", str(job.root)]).output
    assert "eval gate  triplets on dev.jsonl, accuracy, allowed drop 0.01" in out
    assert "int8  accuracy 0.8500  drop 0.0500  refused" in out
    m["model"]["fingerprints"] = {"fp32": "another bundle since"}
    job.write_manifest(m)
    assert "eval gate" not in CliRunner().invoke(main, ["report", str(job.root)]).output


@pytest.mark.parametrize(("dtype", "raw"), [("float32", 80), ("float16", 40), ("int8", 20),
                                            ("binary", 3)])
def test_report_shows_bytes_per_chunk_by_output(tmp_path: Path, dtype: str, raw: int) -> None:
    """The dense column's bytes per chunk from the shard footers, beside its stored form."""
    import pyarrow.parquet as pq

    from tests.unit.storage.test_readers import compact_job

    jd, _ = compact_job(tmp_path, dtype)
    paths = sorted(jd.embeddings_dir.glob("part-*.parquet"))
    disk = sum(pq.read_metadata(p).row_group(0).column(6).total_compressed_size for p in paths)
    assert pq.read_metadata(paths[0]).row_group(0).column(6).path_in_schema.startswith(
        "embedding")
    res = CliRunner().invoke(main, ["report", str(jd.root), "--json"])
    assert res.exit_code == 0, res.output
    b = json.loads(res.output)["bytes_per_chunk"]
    assert b["dense"]["disk"] == round(disk / 7, 1)  # 7 chunks in the job
    assert (b["dense"]["dtype"], b["dense"]["dim"], b["dense"]["raw"]) == (dtype, 20, raw)
    text = CliRunner().invoke(main, ["report", str(jd.root)]).output
    assert f"bytes      per chunk on disk: dense {disk / 7:,.1f} ({dtype}, 20 dims, {raw} raw)" \
        in text
