"""Rebuild benchmark on a real corpus: the Django docs, 4.2.17 then 5.1.4.

Each run starts from nothing in a fresh folder and times, as separate `kbguard rebuild`
processes (so import and model-load time count, as they do for a user):

    first    build of the 4.2.17 docs (589 reST files)
    noop     the same corpus again: nothing to do
    update   the corpus replaced by the 5.1.4 docs (every file rewritten, so every mtime is new)
    noop2    once more after the update

and checks that the update embedded only texts the cache did not hold (no chunk whose text did
not change). With the fake embedder it also builds a corpus twice the size, to show that peak
memory follows the batch size and not the corpus.

    .venv/bin/python benchmarks/bench_rebuild.py --provider fake --runs 5
    .venv/bin/python benchmarks/bench_rebuild.py --provider minilm --runs 1

The Django sdists are fetched once with pip into benchmarks/data/ (git-ignored); raw results go
to benchmarks/runs/ (git-ignored) and a summary is printed as Markdown for RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import duckdb

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
RUNS = HERE / "runs"
OLD, NEW = "4.2.17", "5.1.4"


def django_docs(version: str) -> Path:
    """The docs folder of a Django sdist, downloaded and unpacked on first use."""
    out = DATA / f"Django-{version}"
    if (out / "docs").is_dir():
        return out / "docs"
    DATA.mkdir(parents=True, exist_ok=True)
    archive = DATA / f"Django-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--no-binary", ":all:", f"django=={version}", "-d", str(DATA)],
                       check=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.startswith(f"Django-{version}/docs/") and m.isfile()]
        tar.extractall(DATA, members=members, filter="data")
    return out / "docs"


def write_config(root: Path, provider: str, batch: int) -> Path:
    if provider == "fake":
        space = 'provider = "fake"\nmodel = "fake-hash"\ndim = 384'
    else:
        space = 'provider = "sentence-transformers"\nmodel = "all-MiniLM-L6-v2"\ndim = 384'
    cfg = root / "kbguard.toml"
    cfg.write_text(textwrap.dedent("""\
        [kb]
        name = "django"
        [corpus]
        path = "corpus"
        include = ["**/*.txt"]
        [parsing]
        read_as = {{ ".txt" = ".rst" }}   # Django keeps its reST sources as .txt
        [chunking]
        max_tokens = 256
        [[spaces]]
        name = "local"
        {space}
        batch_size = {batch}
        [store]
        backend = "edge"
        path = "state/store"
        [manifest]
        path = "state/manifest.duckdb"
        [rebuild]
        upsert_batch = 256
        parse_workers = 2
        """).format(space=space.replace("\n", "\n        "), batch=batch))
    return cfg


def timed_rebuild(cfg: Path) -> dict:
    """One `kbguard rebuild --json` process: wall time, peak RSS and its report."""
    out = cfg.parent / "report.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    with open(out, "w") as fh:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kbguard", "rebuild", "--json",
                                 "--quiet", "--config", str(cfg)], stdout=fh, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"rebuild failed (exit {proc.returncode}); see {out}")
    report = json.loads(out.read_text())
    # ru_maxrss (KiB) of the rebuild process; parse workers are its waited-for children, so
    # this is the largest single process, not the sum.
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "report": report}


def cached_hashes(manifest: Path) -> set[str]:
    with duckdb.connect(str(manifest), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT content_hash FROM embeddings").fetchall()}


def chunk_hashes(manifest: Path) -> set[str]:
    with duckdb.connect(str(manifest), read_only=True) as con:
        return {r[0] for r in con.execute("SELECT DISTINCT content_hash FROM chunks").fetchall()}


def one_run(work: Path, provider: str, batch: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, provider, batch)
    manifest = work / "state" / "manifest.duckdb"
    shutil.copytree(django_docs(OLD), work / "corpus")
    phases = {"first": timed_rebuild(cfg), "noop": timed_rebuild(cfg)}
    before = cached_hashes(manifest)
    shutil.rmtree(work / "corpus")
    shutil.copytree(django_docs(NEW), work / "corpus")
    phases["update"] = timed_rebuild(cfg)
    phases["noop2"] = timed_rebuild(cfg)
    after_chunks = chunk_hashes(manifest)
    new_texts = after_chunks - before
    update = phases["update"]["report"]
    return {
        "phases": phases,
        "update_check": {
            "embedded": update["chunks"]["embedded"],
            "total_chunks": update["chunks"]["total"],
            "texts_new_since_4.2": len(new_texts),
            # every embedded text must be one the cache lacked, and each only once
            "only_new_texts_embedded": update["chunks"]["embedded"] == len(new_texts),
        },
    }


def double_corpus_peak(work: Path, batch: int) -> dict:
    """Peak RSS of a first build of both versions side by side: ~2x the corpus."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, "fake", batch)
    shutil.copytree(django_docs(OLD), work / "corpus" / "old")
    shutil.copytree(django_docs(NEW), work / "corpus" / "new")
    res = timed_rebuild(cfg)
    return {"wall_s": res["wall_s"], "peak_rss_mib": res["peak_rss_mib"],
            "documents": res["report"]["documents"]["added"],
            "chunks": res["report"]["chunks"]["total"]}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    except OSError:
        mem = 0.0
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def summarize(runs: list[dict], scale: dict | None, provider: str, batch: int) -> str:
    def med(phase: str, key: str) -> float:
        return statistics.median(r["phases"][phase][key] for r in runs)

    lines = [
        f"### {provider} embedder, batch {batch}, {len(runs)} run(s), "
        f"{dt.date.today().isoformat()}",
        f"Machine: {machine()}", "",
        "| phase | median wall s | min | max | peak RSS MiB (median) |",
        "|---|---|---|---|---|",
    ]
    for phase in ("first", "noop", "update", "noop2"):
        walls = [r["phases"][phase]["wall_s"] for r in runs]
        lines.append(f"| {phase} | {statistics.median(walls):.2f} | {min(walls):.2f} | "
                     f"{max(walls):.2f} | {med(phase, 'peak_rss_mib'):.0f} |")
    r0 = runs[0]
    first, update = r0["phases"]["first"]["report"], r0["phases"]["update"]["report"]
    chk = r0["update_check"]
    lines += [
        "",
        f"- first build: {first['documents']['added']} documents, {first['chunks']['total']} "
        f"chunks, {first['chunks']['embedded']} texts embedded; stages (s) {first['stages']}",
        f"- update {OLD} -> {NEW}: documents {update['documents']}; embedded "
        f"{chk['embedded']} of {chk['total_chunks']} chunks "
        f"({100 * chk['embedded'] / chk['total_chunks']:.1f} %), texts new since {OLD}: "
        f"{chk['texts_new_since_4.2']}; only new texts embedded: {chk['only_new_texts_embedded']}"
        f"; deleted {update['chunks']['deleted']} points",
        f"- no-op rebuild stages (s): {r0['phases']['noop']['report']['stages']}",
    ]
    if scale:
        lines.append(
            f"- memory vs corpus size: first build of {scale['documents']} documents / "
            f"{scale['chunks']} chunks (2x) peaked at {scale['peak_rss_mib']:.0f} MiB against "
            f"{med('first', 'peak_rss_mib'):.0f} MiB for 1x")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--provider", choices=["fake", "minilm"], default="fake")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32, help="embedding batch size")
    ap.add_argument("--no-scale", action="store_true", help="skip the 2x-corpus memory check")
    args = ap.parse_args()

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = RUNS / f"rebuild-{args.provider}-{stamp}"
    runs = []
    for i in range(args.runs):
        res = one_run(base / f"run{i}", args.provider, args.batch)
        print(f"run {i}: " + ", ".join(f"{k} {v['wall_s']:.2f}s"
                                       for k, v in res["phases"].items()), file=sys.stderr)
        runs.append(res)
        shutil.rmtree(base / f"run{i}" / "corpus", ignore_errors=True)
    scale = None
    if args.provider == "fake" and not args.no_scale:
        scale = double_corpus_peak(base / "scale", args.batch)
    (base / "results.json").write_text(json.dumps({"runs": runs, "scale": scale}, indent=1,
                                                  default=str))
    print(summarize(runs, scale, args.provider, args.batch))


if __name__ == "__main__":
    main()
