"""The options ``producer submit`` (also ``--dry-run``) and ``producer run`` share.

Their defaults equal ``producer.spec.JobOptions``'s (tests/unit/producer/test_spec.py checks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

class JobLocation(click.ParamType):
    """A job: an existing local directory, or an ``s3://bucket/prefix/job`` URI (checked when
    the job is opened: a store is not contacted while parsing options)."""

    name = "job_dir"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> str:
        from storage.objstore import check_location, is_object_uri

        if is_object_uri(str(value)):
            return check_location(str(value), "job directory")
        return str(click.Path(exists=True, file_okay=False).convert(value, param, ctx))


JOB_DIR = JobLocation()


class CorpusType(click.ParamType):
    """A corpus argument: an existing file, or an object URI (``s3://bucket/corpus.jsonl``)
    that is read where it lives (checked when staging opens it)."""

    name = "corpus"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        from storage.errors import UsageError
        from storage.objstore import check_location

        if "://" in str(value):
            try:
                return check_location(str(value), "corpus")
            except UsageError as exc:
                self.fail(str(exc), param, ctx)
        return click.Path(exists=True, dir_okay=False).convert(value, param, ctx)


CORPUS = CorpusType()

STAGE_PROCS = click.option("--stage-procs", type=click.IntRange(1, 256), envvar="EMBED_STAGE_PROCS",
                           help="Processes that read and chunk the corpus (default: cores).")

PRIORITY = click.option("--priority", type=click.Choice(["low", "normal", "high"]),
                        default="normal", show_default=True,
                        help="Task priority on a Redis broker: a worker takes high before "
                        "normal before low, one shard at a time (README: Running a shared "
                        "fleet).")


DENSE_OPTIONS = [
    click.option("--dim", type=click.IntRange(1, None), default=None,
                 help="Keep the first DIM dimensions of the dense vector and re-normalise "
                 "(Matryoshka; the bundle must declare it, see `producer export --matryoshka`)."),
    click.option("--dtype", type=click.Choice(["float32", "float16", "int8", "uint8", "binary",
                                               "ubinary"]), default="float32",
                 show_default=True, help="Stored dense type: int8/uint8 with per-dimension "
                 "ranges calibrated on the job's first shard; binary/ubinary: packed sign bits."),
    click.option("--force-dim", is_flag=True, help="Allow --dim on a bundle not declared "
                 "Matryoshka-trained (the manifest records it as forced)."),
]


SUBMIT_OPTIONS = [
    click.option("--out", type=click.Path(file_okay=False), default="out", show_default=True,
                 envvar="EMBED_OUT", help="Output root; the job lands in OUT/<job-id>/."),
    click.option("--job-id", default=None, help="Job id (A-Z a-z 0-9 _ . -); default: "
                 "a timestamp plus random suffix."),
    click.option("--model", "-m", default=None, envvar="EMBED_MODEL",
                 help="Bundle directory (see `producer export`); default: all-MiniLM-L6-v2, "
                 "exported once into EMBED_HOME."),
    click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "int8", "bf16"]),
                 default="auto", show_default=True, envvar="EMBED_PRECISION",
                 help="auto: fp16 on gpu workers; on cpu workers the fastest of CPU-EP "
                 "int8/fp32 and OpenVINO fp32/bf16 that passes its quality gate (measured "
                 "once per machine; EMBED_CPU_PROVIDER overrides). bf16: OpenVINO EP."),
    click.option("--queue", "-q", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
                 show_default=True, help="Where tasks go; auto = gpu when a worker consumes "
                 "the gpu queue, else cpu."),
    click.option("--text-field", default="text", show_default=True,
                 help="JSON field with the text."),
    click.option("--id-field", default="id", show_default=True,
                 help="JSON field with the document id (missing: the line number)."),
    click.option("--max-tokens", type=click.IntRange(8, None), default=None,
                 help="Chunk window in tokens incl. special tokens (default and maximum: "
                 "the model's window, e.g. 256 for MiniLM, 8192 for BGE-M3)."),
    click.option("--overlap", type=click.IntRange(0, None), default=0, show_default=True,
                 help="Tokens shared by consecutive chunks of one document."),
    click.option("--prefix", type=click.Choice(["passage", "query", "none"]),
                 default="passage", show_default=True,
                 help="Which prefix from the bundle config to prepend (if it has one)."),
    click.option("--max-line-bytes", type=click.IntRange(1, None), default=64 * 2**20,
                 show_default=True, help="Longer JSONL lines are rejected, never read whole."),
    click.option("--shard-tokens", type=click.IntRange(64, None), default=32768,
                 show_default=True, help="Real tokens per task (one input/output shard)."),
    click.option("--max-batch-tokens", type=click.IntRange(16, None), default=None,
                 envvar="EMBED_MAX_BATCH_TOKENS",
                 help="Padded tokens per inference batch (default: the worker's; 4096 on "
                 "CPU; on GPU sized to its free memory)."),
    click.option("--max-attempts", type=click.IntRange(1, 100), default=3, show_default=True,
                 help="Deliveries of one shard before it is marked failed."),
    click.option("--outputs", default="dense", show_default=True,
                 help="Comma-separated: dense, sparse, colbert (sparse and colbert need a "
                 "BGE-M3 bundle; dense is always written)."),
    *DENSE_OPTIONS,
    STAGE_PROCS,
    click.option("--on-duplicate-id", type=click.Choice(["reject", "last"]),
                 default="reject", show_default=True,
                 help="A repeated id: reject the later record (reject) or the earlier "
                 "(last); the reject names both lines."),
    click.option("--since", type=click.Path(exists=True, file_okay=False), default=None,
                 help="A finished job OUT/JOB: documents whose id and text are unchanged "
                 "are carried over from it, not embedded; the job records the delta."),
    click.option("--full-reembed", is_flag=True,
                 help="With --since: embed every document (another model or chunking)."),
    PRIORITY,
    click.option("--split-bytes", type=click.IntRange(4096, None), default=None,
                 envvar="EMBED_SPLIT_BYTES", help="Input bytes per split (default: 1/32 of "
                 "the corpus, between 1 and 16 MiB; the manifest records it)."),
]
"""The options ``submit`` (also ``--dry-run``) and ``run`` share, in ``--help`` order."""


def submit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options ``submit`` (also ``--dry-run``) and ``run`` share; all but ``--out`` reach
    ``producer.job.submit`` as keyword arguments."""
    for opt in reversed(SUBMIT_OPTIONS):
        f = opt(f)
    return f
