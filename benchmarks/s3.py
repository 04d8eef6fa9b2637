"""Object storage against local disk, in one run (issue 26): staging MB/s, ``producer run``
tokens/s, requests per shard and bytes moved, with the corpus, the bundle and the job directory
on local disk or in a bucket.

    python benchmarks/s3.py [--staging-docs 20000] [--run-docs 400] \
        [--models hashing,minilm] [--json benchmarks/results/s3.json]

The store is moto's S3 server on this machine (tests/objstore.py), behind a loopback proxy
that counts every request (tests/s3proxy.py); every ``producer`` command runs as a subprocess
with ``AWS_ENDPOINT_URL`` pointed at the proxy, exactly as against MinIO. Rows, per model (the
hashing bundle, whose inference is nearly free, so the pipeline's own cost shows; and the
default model, all-MiniLM-L6-v2 fp32):

  local          corpus, bundle and job directory on local disk
  corpus s3      the corpus in the bucket (ranged reads), the rest local
  corpus+model   the corpus and the bundle in the bucket (a fresh EMBED_HOME: the run
                 includes the bundle's one-time copy)
  all s3         the job directory in the bucket as well (``--out s3://``); printed as "not
                 supported yet" with the command's last error line while ``--out`` takes
                 only a directory

Staging MB/s is what ``producer submit CORPUS --dry-run`` (2 staging processes) prints for
the staging corpus (synthetic short documents, benchmarks/corpus.py): plan, read, tokenise and
chunk, without process start-up; ``producer run`` tokens/s is the
job's tokens over the command's whole wall time (start-up, staging, one local worker,
finalise) on a real-text corpus. moto is a Python server: a real store is faster per request,
so the bucket rows are a floor. On a shared machine compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import build_corpus, synthetic_docs, write_jsonl  # noqa: E402
from tests.objstore import S3Server  # noqa: E402
from tests.s3proxy import CountingProxy, summary  # noqa: E402

BUCKET = "bench"
PLACES = ("local", "corpus s3", "corpus+model s3", "all s3")


def producer(args: list[str], env: dict[str, str], timeout: float = 1800
             ) -> tuple[int, str, float]:
    """Run ``producer ARGS`` in a scratch directory (a relative path it writes stays there)."""
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "producer", *args], cwd=env["BENCH_CWD"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stray = Path(env["BENCH_CWD"]) / "s3:"  # an --out URI taken for a relative directory
    why = ""
    while p.poll() is None and not why:
        time.sleep(0.5)
        if stray.exists():
            why = f"--out s3://... was taken for the local directory {stray}"
        elif time.monotonic() - t0 > timeout:
            why = f"timed out after {timeout:.0f}s"
    if why:  # Ctrl-C: `producer run` stops its private fleet
        p.send_signal(signal.SIGINT)
        try:
            out, _ = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        shutil.rmtree(stray, ignore_errors=True)
        return 124, out + f"\n{why}", time.monotonic() - t0
    out, _ = p.communicate()
    return p.returncode, out, time.monotonic() - t0


def upload_dir(client, directory: Path, prefix: str) -> str:  # noqa: ANN001 - boto3 client
    for p in sorted(directory.iterdir()):
        client.upload_file(str(p), BUCKET, f"{prefix}/{p.name}")
    return f"s3://{BUCKET}/{prefix}"


def bundles(names: list[str], tmp: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if "hashing" in names:
        from worker.export.hashing import export_hashing_bundle

        out["hashing"] = export_hashing_bundle(tmp / "hashing-64", 64, log=lambda _: None)
    if "minilm" in names:
        from producer.models import embedfleet_home, resolve_model

        test_copy = ROOT / ".embedfleet" / "test-models" / "all-MiniLM-L6-v2"
        out["minilm"] = (test_copy if (test_copy / "embedfleet.json").is_file()
                         else Path(resolve_model(None, embedfleet_home())))
    return out


def staging_row(corpus: str, size: int, model: str, env: dict[str, str], cache: str,
                proxy: CountingProxy) -> dict[str, object]:
    proxy.take()
    rc, text, wall = producer(["submit", corpus, "--dry-run", "--model", model,
                               "--cache-url", cache, "--stage-procs", "2"], env)
    if rc:
        raise RuntimeError(text[-3000:])
    reqs = summary(proxy.take())
    printed = re.search(r"MB in ([\d.]+)s = ([\d.]+) MB/s", text)  # staging only, no start-up
    assert printed, text
    return {"staging_mb_s": float(printed.group(2)), "staging_s": float(printed.group(1)),
            "command_s": round(wall, 2), "staging_requests": reqs}


def run_row(corpus: str, model: str, out: str, home: Path, env: dict[str, str],
            proxy: CountingProxy, timeout: float) -> dict[str, object]:
    proxy.take()
    rc, text, wall = producer(["run", corpus, "--out", out, "--model", model, "--job-id",
                               "bench", "--home", str(home), "--precision", "fp32",
                               "--shard-tokens", "20000"], {**env, "EMBED_HOME": str(home)},
                              timeout=timeout)
    reqs = summary(proxy.take())
    if rc:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["?"]
        return {"status": f"not supported yet (exit {rc}): {last[0][:160]}"}
    try:
        m = _manifest(out)
    except OSError as exc:  # e.g. an --out URI taken for a relative directory name
        return {"status": f"not supported yet: no manifest at {out}/bench ({exc})"[:200]}
    shards = max(1, len(m.get("shards") or []))
    tokens = int(m["totals"]["tokens"])
    per_shard = {k: round(v / shards, 1) for k, v in reqs.items() if not k.startswith("bytes")}
    return {"status": "ok", "run_tokens_s": round(tokens / wall, 1), "run_wall_s": round(wall, 2),
            "tokens": tokens, "shards": shards, "requests_per_shard": per_shard,
            "mb_down": round(reqs["bytes_down"] / 1e6, 2),
            "mb_up": round(reqs["bytes_up"] / 1e6, 2)}


def _manifest(out: str) -> dict[str, object]:
    from storage.objstore import join, resolve

    fs, path = resolve(join(out, "bench", "manifest.json"))
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--staging-docs", type=int, default=20_000)
    ap.add_argument("--run-docs", type=int, default=300, help="documents of the run corpus "
                    "(the hashing bundle)")
    ap.add_argument("--minilm-docs", type=int, default=80, help="its first N documents for "
                    "the default model (about 20 times slower per token on a CPU)")
    ap.add_argument("--models", default="hashing,minilm")
    ap.add_argument("--repeat", type=int, default=1, help="dry runs per staging row (the best "
                    "is shown: a shared machine's load only ever slows a run down)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from producer.local import LocalRedis

    names = [m for m in a.models.split(",") if m]
    meta = {"command": " ".join(["benchmarks/s3.py", *sys.argv[1:]]), "cores": os.cpu_count(),
            "load_before": round(os.getloadavg()[0], 2)}
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        srv = S3Server(tmp / "s3").start()
        proxy = CountingProxy(srv.endpoint)
        redis = LocalRedis(tmp / "redis")
        redis.start()
        os.environ.update(srv.env())  # this script's own reads (manifests) go around the proxy
        env = {**os.environ, **srv.env(), "AWS_ENDPOINT_URL": proxy.endpoint,
               "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
               "BENCH_CWD": str(tmp)}
        try:
            client = srv.client()
            client.create_bucket(Bucket=BUCKET)
            stage = tmp / "staging.jsonl"
            write_jsonl(stage, synthetic_docs(a.staging_docs, log=lambda *_: None))
            docs = build_corpus(a.run_docs, log=lambda *_: None)
            client.upload_file(str(stage), BUCKET, "corpora/staging.jsonl")
            meta.update(staging_mb=round(stage.stat().st_size / 1e6, 2))
            for name, bundle in bundles(names, tmp).items():
                model_uri = upload_dir(client, bundle, f"models/{name}")
                small = tmp / f"run-{name}.jsonl"
                write_jsonl(small, docs[:a.minilm_docs] if name == "minilm" else docs)
                client.upload_file(str(small), BUCKET, f"corpora/{small.name}")
                meta[f"run_mb_{name}"] = round(small.stat().st_size / 1e6, 3)
                corpus = {"local": str(small), "s3": f"s3://{BUCKET}/corpora/{small.name}"}
                for place in PLACES:
                    row: dict[str, object] = {"model": name, "place": place}
                    if place in ("local", "corpus s3"):
                        src = str(stage) if place == "local" else f"s3://{BUCKET}/corpora/staging.jsonl"
                        tries = [staging_row(src, stage.stat().st_size, str(bundle), env,
                                             redis.cache_url, proxy) for _ in range(a.repeat)]
                        row.update(max(tries, key=lambda t: float(t["staging_mb_s"])),
                                   staging_mb_s_tries=[t["staging_mb_s"] for t in tries])
                    model = str(bundle) if place in ("local", "corpus s3") else model_uri
                    out = (f"s3://{BUCKET}/jobs/{name}" if place == "all s3"
                           else str(tmp / "out" / name / place.replace(" ", "-")))
                    # a job directory in the bucket may not be supported: bound its wait
                    limit = (max(120.0, 3 * float(rows[-3].get("run_wall_s", 60)))  # type: ignore[arg-type]
                             if place == "all s3" else 3600.0)
                    row.update(run_row(corpus["local" if place == "local" else "s3"], model,
                                       out, tmp / "home" / name / place.replace(" ", "-"),
                                       env, proxy, timeout=limit))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if a.json:  # as it goes: a long run interrupted keeps its rows
                        a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        finally:
            redis.stop()
            proxy.stop()
            srv.stop()
    meta["load_after"] = round(os.getloadavg()[0], 2)
    table(rows, meta)
    if a.json:
        a.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


def table(rows: list[dict[str, object]], meta: dict[str, object]) -> None:
    runs = ", ".join(f"{k[7:]} {v} MB" for k, v in meta.items() if k.startswith("run_mb_"))
    print(f"\nstaging corpus {meta['staging_mb']} MB, run corpus {runs}; "
          f"{meta['cores']} cores, load average {meta['load_before']} -> {meta['load_after']}")
    head = ("model", "place", "staging MB/s", "x local", "run tok/s", "x local",
            "GET/HEAD/PUT/LIST per shard", "MB down/up")
    print("".join(f"{h:>{w}}" for h, w in zip(head, (9, 17, 14, 9, 11, 9, 30, 14))))
    base: dict[str, dict[str, object]] = {}
    for r in rows:
        if r["place"] == "local":
            base[str(r["model"])] = r
        b = base.get(str(r["model"]), {})
        st = r.get("staging_mb_s")
        tok = r.get("run_tokens_s")
        rq = r.get("requests_per_shard") or {}
        cells = [r["model"], r["place"], st if st is not None else "-",
                 _ratio(st, b.get("staging_mb_s")), tok if tok is not None else "-",
                 _ratio(tok, b.get("run_tokens_s")),
                 "/".join(str(rq.get(k, 0)) for k in ("GET", "HEAD", "PUT", "LIST"))
                 if rq else "-",
                 f"{r.get('mb_down', '-')}/{r.get('mb_up', '-')}"]
        print("".join(f"{str(c):>{w}}" for c, w in zip(cells, (9, 17, 14, 9, 11, 9, 30, 14))))
        if r.get("status", "ok") != "ok":
            print(f"{'':26}{r['status']}")


def _ratio(x: object, y: object) -> str:
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) and y:
        return f"{x / y:.2f}"
    return "-"


if __name__ == "__main__":
    main()
