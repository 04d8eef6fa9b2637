"""``producer eval BUNDLE DATA``: the click command (registered by the producer CLI).

Only click and the data reader (no numpy) at import time; onnxruntime loads when it runs.
Errors are raised and mapped to exit codes by the ``producer`` group (``EXIT_CODES``): bad
labelled data is a CorpusError (5), a broken bundle a BundleError (6).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from producer.errors import ProducerError
from producer.tools.evaldata import TASKS, EvalData

ALL_VARIANTS = "fp32,fp16,int8"


@click.command("eval")
@click.argument("bundle")
@click.argument("data", type=click.Path(exists=True))
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="Data shape (default: detected: a BEIR directory or a JSON file naming "
              "queries/corpus/qrels is retrieval; else the first line's fields).")
@click.option("--variants", default="all", show_default=True,
              help=f"Comma-separated precisions, or all ({ALL_VARIANTS}); ones the bundle "
              "lacks are listed as skipped.")
@click.option("--providers", default="cpu,cuda", show_default=True,
              help="Comma-separated: cpu, cuda; unavailable ones are listed as skipped.")
@click.option("--threads", type=click.IntRange(1, 256), default=None, envvar="EMBED_THREADS",
              help="ONNX Runtime intra-op threads (default: ONNX Runtime's, all cores).")
@click.option("--max-batch-tokens", type=click.IntRange(16, None), default=None,
              help="Padded tokens per inference batch (default: 4096 on CPU, 32768 on CUDA).")
@click.option("--home", type=click.Path(file_okay=False), envvar="EMBED_HOME", default=None,
              help="Where the default model lives (BUNDLE all-MiniLM-L6-v2).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the rows, rejects and notes as JSON to this file.")
@click.option("--dim", "dims", default="", help="Comma-separated dimensions to also score "
              "(first N dims, re-normalised, as a job's --dim), e.g. 128,256.")
@click.option("--dtype", "dtypes", default="", help="Comma-separated stored types to also "
              "score: float32, float16, int8, uint8, binary, ubinary (binary on retrieval "
              "data adds a row rescored in float32).")
def eval_command(bundle: str, data: str, task: str | None, variants: str, providers: str,
                 threads: int | None, max_batch_tokens: int | None, home: str | None,
                 json_path: str | None, dims: str, dtypes: str) -> None:
    """Score BUNDLE on labelled DATA (triplets, scored pairs, or a retrieval set) per variant
    and provider: accuracy / Spearman / nDCG@10, the difference from fp32, tokens/s; with
    --dim/--dtype also each compact form of every variant's vectors and its bytes."""
    from producer.models import embedfleet_home, resolve_model
    from producer.tools.evaldata import read_eval_data
    from producer.tools.evaluate import format_eval_table, run_eval

    precs = [p.strip() for p in (ALL_VARIANTS if variants == "all" else variants).split(",")
             if p.strip()]
    provs = [p.strip().lower() for p in providers.split(",") if p.strip()]
    path = resolve_model(bundle, Path(home) if home else embedfleet_home())
    labelled = read_eval_data(data, task)
    try:
        dim_list = [int(d) for d in dims.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"{dims!r}: comma-separated integers", param_hint="--dim"
                                 ) from None
    rows = run_eval(path, labelled, variants=precs, providers=provs, threads=threads,
                    max_batch_tokens=max_batch_tokens, log=click.echo, dims=dim_list,
                    dtypes=[t.strip().lower() for t in dtypes.split(",") if t.strip()])
    _describe(labelled)
    click.echo(format_eval_table(rows, labelled.task))
    if json_path:
        doc = {"bundle": str(path), "data": data, "task": labelled.task,
               "size": labelled.size, "rows": [r.to_dict() for r in rows],
               "rejects": [r.__dict__ for r in labelled.rejects], "notes": labelled.notes}
        Path(json_path).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n",
                                   encoding="utf-8")
    if not any(r.status == "ok" for r in rows):
        raise ProducerError("no variant × provider could be evaluated (reasons in the table)")


def _describe(d: EvalData) -> None:
    click.echo(f"{d.task}: {d.size} scored from {d.source}, {len(d.rejects)} line(s) rejected")
    for r in d.rejects[:10]:
        click.echo(f"rejected   {Path(r.path).name} line {r.line}: {r.reason}")
    if len(d.rejects) > 10:
        click.echo(f"rejected   ... and {len(d.rejects) - 10} more (see --json)")
    for note in d.notes:
        click.echo(f"note       {note}")
