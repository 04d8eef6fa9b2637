"""Benchmark ``producer load`` (vector and halfvec), the HNSW build, and ``producer compact``.

    python benchmarks/pgload.py                    # 100,000 rows of 384-d, shards of 1,000
    python benchmarks/pgload.py --rows 20000 --json benchmarks/results/pgload.json

A throwaway PostgreSQL + pgvector (pgserver, Unix socket, temp dir; the portable pgvector of
tests/build_pgvector.sh when built). Vectors: random unit vectors (load and compact speed do not
depend on the values; HNSW build time does a little). Rows/s is the whole ``load_job`` call
before the index (set-up, COPY, ledger, ANALYZE); index time is the ``CREATE INDEX`` alone
(m=16, ef_construction=64, the pgvector defaults), one maintenance worker. Compact MB/s is
input shard bytes over the whole ``compact_job`` call. Figures from a shared machine are only
comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from storage.compact import compact_job  # noqa: E402
from storage.pgload import load_job  # noqa: E402
from tests.pgjobs import PgServer, make_job  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--shard-rows", type=int, default=1000)
    ap.add_argument("--maintenance-work-mem", default="1GB")
    ap.add_argument("--parallel-workers", type=int, default=0)
    ap.add_argument("--no-index", action="store_true", help="Skip the HNSW builds.")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="embedfleet-pgbench-"))
    tmp.chmod(0o755)
    rows: dict[str, float | int | str] = {"rows": args.rows, "dim": args.dim,
                                          "shard_rows": args.shard_rows}
    srv = PgServer(tmp / "pg")
    try:
        v = np.random.default_rng(0).standard_normal((args.rows, args.dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        job = make_job(tmp / "out", "bench", v, shard_rows=args.shard_rows)
        del v
        dsn = srv.new_database()
        for vtype in ("vector", "halfvec"):
            res = load_job(job, dsn, f"bench_{vtype}", create=True, vector_type=vtype,
                           index="none" if args.no_index else "hnsw",
                           maintenance_work_mem=args.maintenance_work_mem,
                           parallel_workers=args.parallel_workers)
            rows[f"{vtype}_load_s"] = res.load_s
            rows[f"{vtype}_rows_per_s"] = round(res.rows_added / res.load_s)
            if not args.no_index:
                rows[f"{vtype}_hnsw_build_s"] = res.index_s
            print(f"{vtype:8s} load {res.rows_added} rows in {res.load_s:.1f}s = "
                  f"{res.rows_added / res.load_s:,.0f} rows/s" +
                  ("" if args.no_index else f"; hnsw build {res.index_s:.1f}s"), flush=True)
        res2 = compact_job(job, tmp / "compact", rows_per_file=max(args.rows // 4, 1))
        mb = res2.bytes_in / 2**20
        rows.update(compact_files_in=res2.files_in, compact_files_out=res2.files_out,
                    compact_mb=round(mb, 1), compact_s=res2.seconds,
                    compact_mb_per_s=round(mb / res2.seconds, 1))
        print(f"compact  {res2.files_in} → {res2.files_out} files, {mb:.1f} MB in "
              f"{res2.seconds:.1f}s = {mb / res2.seconds:.1f} MB/s")
        rows["portable_pgvector"] = str(srv.portable)
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
