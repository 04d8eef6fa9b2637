"""The tool commands: ``export``, ``bench``, ``report`` (not stages of the job flow).

Heavy imports (torch, onnxruntime, numpy charts) stay inside the functions, so ``producer
--help`` and the job commands never load them. Errors are mapped to exit codes by the group
(``producer.cli.EXIT_CODES``), so a command just raises. To add a command, write it (here or in
its own module) and add one line to ``register``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from producer.options import JOB_DIR
from producer.errors import UsageError
from producer.tools import load as load_cmds
from producer.tools.evalcli import eval_command
from producer.tools.evaldata import TASKS


@click.command()
@click.argument("src")
@click.option("--out", "-o", type=click.Path(file_okay=False), required=True,
              help="Bundle directory to write.")
@click.option("--precision", default="fp32,fp16,int8", show_default=True,
              help="Comma-separated variants to export; int8 is kept only if it passes the gate.")
@click.option("--opset", type=click.IntRange(14, 25), default=18, show_default=True)
@click.option("--pooling", type=click.Choice(["cls", "mean", "last"]), default=None,
              help="Only for models without a sentence-transformers 1_Pooling/config.json.")
@click.option("--max-length", type=click.IntRange(8, None), default=None,
              help="Override the model window (tokens incl. special tokens).")
@click.option("--eval-data", type=click.Path(exists=True), default=None,
              help="Labelled data (as for `producer eval`): a variant that loses more than "
              "--min-metric-drop of the metric vs fp32 on it is not written.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="Shape of --eval-data (default: detected).")
@click.option("--min-metric-drop", type=click.FloatRange(0, 1), default=None,
              help="Largest absolute loss of the --eval-data metric (accuracy, Spearman, "
              "nDCG@10) a written variant may have (default: metric_gate.DEFAULT_MAX_DROP, 0.01).")
@click.option("--dim", type=click.IntRange(4, 8192), default=None,
              help="Only with SRC=hashing: width of the feature-hashing test bundle.")
@click.option("--matryoshka", is_flag=True, help="Declare the model Matryoshka-trained (jobs "
              "may then use --dim) when its model card does not list matryoshka_dims.")
def export(src: str, out: str, precision: str, opset: int, pooling: str | None,
           max_length: int | None, eval_data: str | None, task: str | None,
           min_metric_drop: float | None, dim: int | None, matryoshka: bool) -> None:
    """Export SRC (a local sentence-transformers dir, or all-MiniLM-L6-v2) to an ONNX bundle.

    SRC ``hashing`` with ``--dim D`` writes a deterministic feature-hashing bundle for smoke and
    load tests of the plumbing (vectors without meaning; a local model directory called
    ``hashing`` is ``./hashing``).
    """
    if (src == "hashing") != (dim is not None):
        raise UsageError("--dim goes with SRC hashing, and SRC hashing needs --dim "
                         "(`producer export hashing --dim 64 --out DIR`)")
    try:
        from worker.export import MetricGate, export_bundle
        from worker.export.hashing import export_hashing_bundle
    except ImportError as exc:
        raise UsageError(f"export needs the `export` extra (pip install "
                         f"'embedfleet[export]'): {exc}") from None
    if dim is not None:
        path = export_hashing_bundle(out, dim, max_length=max_length, log=click.echo)
        click.echo(f"bundle written to {path}")
        return
    if min_metric_drop is not None and not eval_data:
        raise UsageError("--min-metric-drop needs --eval-data (the data the metric is taken on)")
    gate = None
    if eval_data:  # read and check the data before the long export
        from producer.tools.evaldata import read_eval_data
        from producer.tools.evalmetrics import primary_metric
        from producer.tools.evaluate import variant_metrics

        data = read_eval_data(eval_data, task)
        click.echo(f"eval gate: {data.task} on {eval_data}, {data.size} scored, "
                   f"{len(data.rejects)} line(s) rejected")
        drop = {} if min_metric_drop is None else {"max_drop": min_metric_drop}
        gate = MetricGate(variant_metrics(data), primary_metric(data.task), data=eval_data,
                          task=data.task, **drop)
    precs = tuple(p.strip() for p in precision.split(",") if p.strip())
    path = export_bundle(src, out, precisions=precs, opset=opset, pooling=pooling,
                         max_length=max_length, log=click.echo, eval_gate=gate,
                         matryoshka=matryoshka)
    click.echo(f"bundle written to {path}")


@click.command()
@click.argument("job_dir", type=JOB_DIR)
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a self-contained HTML report with SVG charts to this file.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(job_dir: str, html_path: str | None, as_json: bool) -> None:
    """Throughput, padding, latency, cache hits and a per-worker breakdown of JOB_DIR."""
    from producer.tools.report import format_text, load_report, summarize

    manifest, rows, lengths = load_report(job_dir)
    summary = summarize(manifest, rows)
    if html_path:
        from producer.tools.html import write_html

        write_html(html_path, summary, rows, lengths)
    click.echo(json.dumps(summary, indent=2) if as_json else format_text(summary))
    if html_path and not as_json:
        click.echo(f"\nhtml report: {html_path}")


@click.command()
@click.option("--model", "-m", default=None, envvar="EMBED_MODEL",
              help="Bundle directory; default: all-MiniLM-L6-v2, exported once into EMBED_HOME.")
@click.option("--precisions", default="fp32,int8,fp16,bf16", show_default=True,
              help="Comma-separated variants (bf16: the fp32 graph at bf16 on OpenVINO); ones "
              "the bundle or machine lacks are listed as skipped.")
@click.option("--providers", default="cpu,openvino,cuda", show_default=True,
              help="Comma-separated: cpu, openvino, cuda; unavailable ones are listed as "
              "skipped.")
@click.option("--corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Texts to embed (.jsonl, .jsonl.gz, .parquet); default: examples/sample.jsonl.")
@click.option("--text-field", default="text", show_default=True, help="JSON field with the text.")
@click.option("--limit", type=click.IntRange(1, None), default=None,
              help="Use only the first N documents.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, envvar="EMBED_THREADS",
              help="ONNX Runtime intra-op threads (default: ONNX Runtime's, all cores).")
@click.option("--max-batch-tokens", type=click.IntRange(16, None), default=None,
              help="Padded tokens per inference batch (default: 4096 on CPU, 32768 on CUDA).")
@click.option("--home", type=click.Path(file_okay=False), envvar="EMBED_HOME", default=None,
              help="Where the default model lives (default ~/.cache/embedfleet).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows as JSON to this file.")
def bench(model: str | None, precisions: str, providers: str, corpus: str | None,
          text_field: str, limit: int | None, threads: int | None, max_batch_tokens: int,
          home: str | None, json_path: str | None) -> None:
    """Embed a sample through each variant × provider directly (no broker) and compare them."""
    from producer.models import embedfleet_home, resolve_model
    from producer.tools.bench import format_bench_table, read_texts, run_bench
    from producer.tools.evaluate import evaluation_lines
    from storage.bundle import load_bundle

    precs = [p.strip() for p in precisions.split(",") if p.strip()]
    provs = [p.strip().lower() for p in providers.split(",") if p.strip()]
    path = resolve_model(model, Path(home) if home else embedfleet_home())
    texts = read_texts(corpus, text_field, limit)
    if not texts:
        raise UsageError(f"--corpus {corpus or 'examples/sample.jsonl'}: no texts to embed")
    click.echo(f"bench {path}: {len(texts)} documents (truncated to the model window)")
    rows = run_bench(path, texts, precisions=precs, providers=provs, threads=threads,
                     max_batch_tokens=max_batch_tokens, log=click.echo)
    click.echo(format_bench_table(rows))
    for line in evaluation_lines(load_bundle(path).config.evaluation):
        click.echo(line)
    if json_path:
        Path(json_path).write_text(json.dumps([r.to_dict() for r in rows], indent=2))


def register(main: click.Group) -> None:
    """Add the tool commands to the ``producer`` group (one line per command)."""
    main.add_command(export)
    main.add_command(bench)
    main.add_command(report)
    main.add_command(load_cmds.load)
    main.add_command(load_cmds.compact)
    main.add_command(eval_command)
