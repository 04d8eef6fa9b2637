"""Tests mirror the packages: ``<package>/<sub>/<module>.py`` is tested in
``tests/unit/<package>/<sub>/test_<module>.py`` (a package's ``__init__.py`` with code in
``test_<package>.py`` beside its modules' tests), unless ``EXEMPT`` says where it is tested."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SMALL_INIT = 25
"""An ``__init__.py`` shorter than this (a docstring, lazy re-exports) needs no test file."""
EXEMPT = {
    "producer/__main__.py": "`python -m producer`: two lines calling cli.main",
    "producer/exitcodes.py": "tests/unit/producer/test_cli.py maps every row of EXIT_CODES",
    "producer/local.py": "the private fleet of `producer run` (real redis-server and workers): "
                         "tests/integration/test_resume.py, test_paths.py",
    "producer/tools/bench.py": "tests/integration/test_bench.py (a real model and session)",
    "producer/tools/cli.py": "its commands: tests/unit/producer/tools/test_report.py, "
                             "tests/integration/test_bench.py, test_eval.py, test_export.py",
    "producer/tools/evalcli.py": "tests/integration/test_eval.py",
    "producer/tools/evaluate.py": "tests/integration/test_eval.py (real bundles and data)",
    "producer/tools/html.py": "the report page: tests/unit/producer/tools/test_report.py",
    "producer/tools/svg.py": "the report's charts: tests/unit/producer/tools/test_report.py",
    "producer/tools/table.py": "tables of bench/eval: tests/integration/test_bench.py",
    "producer/tools/load.py": "`producer load`: tests/integration/test_pgload.py (PostgreSQL)",
    "worker/errors.py": "one-line classes; raised and mapped in tests/unit/producer/test_cli.py",
    "storage/errors.py": "one-line classes; raised and mapped in tests/unit/producer/test_cli.py",
    "worker/faults.py": "failpoints: tests/integration/test_faults.py",
    "worker/staging/faults.py": "failpoints: tests/integration/test_staging.py",
    "worker/staging/shards.py": "stage_split through tests/unit/worker/staging/test_pool.py, "
                                "its chunk rules in test_chunking.py and test_tokenwise.py",
    "worker/export/m3.py": "BGE-M3 heads: tests/integration/test_m3.py",
    "worker/export/onnx.py": "torch export: tests/integration/test_export.py",
    "worker/export/samples.py": "data: the gate's sample texts",
    "storage/atomic.py": "tests/unit/storage/test_shards.py, test_jobdir.py and "
                         "tests/integration/test_full_disk.py",
    "storage/calibration.py": "the claimed ranges: tests/unit/worker/test_dense.py "
                              "(shards of one job share them), tests/unit/storage/test_quantize.py",
    "producer/options.py": "click options: tests/unit/producer/test_spec.py (their defaults are "
                           "JobOptions'), tests/unit/producer/test_cli.py",
    "producer/fleetcli.py": "cancel/metrics/estimate commands: tests/integration/test_cancel.py, "
                            "test_fleet_metrics.py, tests/unit/producer/test_estimate.py",
    "producer/priority.py": "doctests; tests/integration/test_priority.py (a real worker)",
    "worker/cancel.py": "skip on receipt and at batches: tests/integration/test_cancel.py",
    "storage/cancel.py": "the cancel record: tests/unit/producer/test_cancel.py",
    "producer/reconcile.py": "heartbeats: tests/unit/producer/test_resume.py; slow and killed "
                             "shards: tests/integration/test_reconcile.py",
    "worker/model/gpumem.py": "the GPU budget from injected figures: "
                              "tests/unit/worker/model/test_batching.py (no CUDA here)",
    "worker/recycle.py": "a real worker kept or replaced: tests/integration/test_recycle.py",
    "producer/since.py": "--since checks against a real base job: tests/integration/test_delta.py",
    "storage/carry.py": "carried rows copied byte for byte: tests/integration/test_delta.py",
    "storage/pgdelta.py": "delta loads into a real PostgreSQL: tests/integration/test_delta.py",
    "storage/cache.py": "tests/integration/test_cache.py (a real Redis)",
    "storage/integrity.py": "tests/unit/storage/test_jobdir.py, "
                            "tests/integration/test_corrupt_state.py",
    "storage/metrics.py": "tests/unit/worker/test_pipeline.py, "
                          "tests/unit/producer/tools/test_report.py",
    "storage/schema.py": "tests/unit/storage/test_shards.py, test_readers.py",
}


def mirror_of(path: str) -> Path | None:
    """The test file a module's tests live in (None: a small ``__init__``)."""
    parts = list(Path(path).with_suffix("").parts)
    if parts[-1] == "__init__":
        if (ROOT / path).read_text(encoding="utf-8").count("\n") < SMALL_INIT:
            return None
        return ROOT / "tests" / "unit" / Path(*parts[:-1]) / f"test_{parts[-2]}.py"
    return ROOT / "tests" / "unit" / Path(*parts[:-1]) / f"test_{parts[-1]}.py"


def modules() -> list[str]:
    return [str(p.relative_to(ROOT)) for pkg in ("producer", "worker", "storage")
            for p in sorted((ROOT / pkg).rglob("*.py"))]


def test_each_module_has_its_test_file_or_a_reason():
    missing = [m for m in modules() if m not in EXEMPT
               and (t := mirror_of(m)) is not None and not t.is_file()]
    assert not missing, "modules without tests/unit/<package>/.../test_<module>.py: " + \
        ", ".join(missing)


def test_the_exemptions_are_current():
    stale = [m for m in EXEMPT if not (ROOT / m).is_file()
             or (mirror_of(m) or Path("/nonexistent")).is_file()]
    assert not stale, f"exempt but moved, gone or tested in place: {stale}"


def test_no_test_file_is_orphaned():
    """A test file under a package mirror names a module that exists."""
    wanted = {mirror_of(m) for m in modules()} - {None}
    found = set((ROOT / "tests" / "unit").rglob("test_*.py"))
    top = {p for p in found if p.parent == ROOT / "tests" / "unit"}  # tests of all packages
    assert found - top - wanted == set()
