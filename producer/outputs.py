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

from producer.errors import UsageError
from storage.bundle import OUTPUTS, BundleConfig


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


def estimate_bytes(outputs: Sequence[str], config: BundleConfig, chunks: int, tokens: int
                   ) -> dict[str, int]:
    """Raw (uncompressed) bytes each output column takes for ``chunks`` chunks of ``tokens``.

    Sparse is an upper bound: at most one (int32 id, float32 weight) pair per non-special token.

    >>> from storage.bundle import Pooling
    >>> cfg = BundleConfig("m", Pooling.CLS, True, 8192, 1024, outputs=OUTPUTS, colbert_dim=1024)
    >>> estimate_bytes(OUTPUTS, cfg, chunks=10, tokens=5010)
    {'dense': 40960, 'sparse': 39920, 'colbert': 20480000}
    """
    est = {"dense": 4 * config.dim * chunks}
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
