"""``--outputs``: which vectors a job writes, checked against the bundle before anything is staged.

``dense`` (the default) is the one embedding per chunk every bundle gives. A BGE-M3 bundle
(exported with its heads, worker/export/m3.py) also gives ``sparse`` (lexical weights) and
``colbert`` (one vector per token) from the same session run; the dense vector comes with them
at no extra cost and is always written. The disk estimate is what ``--dry-run`` prints:
ColBERT output is ``(n_tokens - 1) x colbert_dim`` float32 per chunk, about ``4 x colbert_dim``
bytes per token (4 KB per token for BGE-M3's 1,024), which dwarfs the dense vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from producer.errors import UsageError
from storage.bundle import OUTPUTS, BundleConfig
from storage.quantize import DTYPES, bytes_per_vector


def parse_outputs(value: str | Sequence[str] | None, config: BundleConfig, bundle: str
                  ) -> tuple[str, ...]:
    """The canonical output set (dense first) for ``--outputs``.

    Raises:
        UsageError: an unknown name, or one the bundle at ``bundle`` cannot produce.
    """
    raw = value.split(",") if isinstance(value, str) else list(value or ["dense"])
    names = [n.strip().lower() for n in raw if n.strip()]
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise UsageError(f"--outputs {','.join(unknown)}: unknown output; valid: "
                           f"{', '.join(OUTPUTS)}")
    missing = [n for n in names if n not in config.outputs]
    if missing:
        raise UsageError(
            f"--outputs {','.join(missing)}: the bundle {bundle} cannot produce it (it has: "
            f"{', '.join(config.outputs)}); export a BGE-M3 directory with colbert_linear.pt "
            "and sparse_linear.pt to get sparse and colbert")
    return tuple(o for o in OUTPUTS if o in names or o == "dense")


def parse_dense(dim: int | None, dtype: str | None, force_dim: bool, config: BundleConfig,
                bundle: str) -> dict[str, Any] | None:
    """The manifest's ``dense`` for ``--dim``/``--dtype``/``--force-dim`` (None: float32 at
    the model's dimension, the manifest as before these options).

    Raises:
        UsageError: an unknown dtype; a dim not below the model's; ``--dim`` on a bundle not
            declared Matryoshka-trained without ``--force-dim``.
    """
    dtype = (dtype or "float32").lower()
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: unknown; valid: {', '.join(DTYPES)}")
    if dim is None or dim == config.dim:
        return None if dtype == "float32" else {"dim": None, "dtype": dtype,
                                                "full_dim": config.dim}
    if not 0 < dim < config.dim:
        raise UsageError(f"--dim {dim}: must be between 1 and the model's {config.dim}")
    if config.matryoshka is None and not force_dim:
        raise UsageError(
            f"--dim {dim}: the bundle {bundle} does not declare its model Matryoshka-trained, "
            "so a prefix of its vector is not a trained embedding (recall can collapse); "
            "re-export with `producer export --matryoshka` if it is, or pass --force-dim and "
            "measure the cost with `producer eval --dim`")
    allowed = "matryoshka" if config.matryoshka is not None else "forced"
    return {"dim": dim, "dtype": dtype, "full_dim": config.dim, "dim_allowed": allowed}


def estimate_bytes(outputs: Sequence[str], config: BundleConfig, chunks: int, tokens: int,
                   dense: dict[str, Any] | None = None) -> dict[str, int]:
    """Raw (uncompressed) bytes each output column takes for ``chunks`` chunks of ``tokens``.

    Sparse is an upper bound: at most one (int32 id, float32 weight) pair per non-special token.
    ``dense``: the job's ``--dim``/``--dtype`` (``parse_dense``).

    >>> from storage.bundle import Pooling
    >>> cfg = BundleConfig("m", Pooling.CLS, True, 8192, 1024, outputs=OUTPUTS, colbert_dim=1024)
    >>> estimate_bytes(OUTPUTS, cfg, chunks=10, tokens=5010)
    {'dense': 40960, 'sparse': 39920, 'colbert': 20480000}
    >>> estimate_bytes(["dense"], cfg, 10, 5010, {"dim": 256, "dtype": "binary"})
    {'dense': 320}
    """
    dense = dense or {}
    est = {"dense": bytes_per_vector(dense.get("dtype", "float32"),
                                     dense.get("dim") or config.dim) * chunks}
    if "sparse" in outputs:
        est["sparse"] = 8 * max(0, tokens - 2 * chunks)
    if "colbert" in outputs:
        est["colbert"] = 4 * config.colbert_dim * max(0, tokens - chunks)
    return est


def format_bytes(n: float) -> str:
    """Decimal units, one decimal.

    >>> format_bytes(20480000)
    '20.5 MB'
    """
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
