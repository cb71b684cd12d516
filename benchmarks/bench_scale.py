"""Scale benchmark: every operator-facing command on generated corpora of 10k to 100k+ documents.

For each corpus size (``--docs``, several allowed) a corpus of real prose is generated once into
benchmarks/data/scale/ (scale_corpus.py: the Rust books and the PostgreSQL manual, Markdown and
HTML, deterministic for ``--seed``), and each run builds a KB on a hard-linked copy of it with
the fake embedder and the Edge store. Every step is a separate ``python -m kbguard ... --json``
process, as a user or cron runs it, so start-up and imports count:

    first build        rebuild of the whole corpus
    no-op              rebuild with nothing changed
    status             status (with its corpus scan)
    search             one query, k = 5
    estimate           rebuild --estimate
    verify             full check
    verify --sample    full check plus N points re-embedded (--sample, default 1000)
    snapshot create
    restore --latest   (its catch-up has nothing to do)
    1 % update         rebuild after 1 % of the documents changed: 0.8 % edited (one paragraph
                       rewritten), 0.1 % added, 0.1 % removed
    drill store-lost   on a scratch copy beside the KB

Each step records wall time, the peak summed RSS of its whole process tree (sampled every
50 ms, proctree.py) and the largest single process's exact peak, its JSON report (stage times
included), and what it left running. Sizes: the manifest's, the store's and a snapshot's bytes
per chunk.

    .venv/bin/python benchmarks/bench_scale.py --docs 10000 --docs 100000
    .venv/bin/python benchmarks/bench_scale.py --docs 100000 --points-target 1000000

``--points-target`` makes the documents longer (more sections each) so that each corpus makes
about that many chunks. Results go to ``--out`` (default benchmarks/runs/scale/): SIZE/runN.json per
run, with its commands' logs in SIZE/runN-logs/; the KB of a run is deleted once its result is
written (``--keep`` keeps it).
After every run, the section of ``--out`` in benchmarks/RESULTS-scale.md and its plot
(benchmarks/plots/) are rewritten from all results there. Stopped, it resumes: rerun the same
command; finished runs are skipped, the generated corpus is reused, an unfinished run restarts.
``--report-only`` rewrites the section from the results already there.
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
import textwrap
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import svgplot
from proctree import become_subreaper, measure, stop_on_sigterm
from scale_corpus import (
    CorpusSpec,
    TextPool,
    apply_update,
    estimated_points,
    link_copy,
    load_pool,
    sections_for_points,
    update_plan,
    write_corpus,
)

DATA = HERE / "data" / "scale"
RESULTS = HERE / "RESULTS-scale.md"
QUERY = "How do I create an index on a partitioned table?"
# bytes of disk a run needs per chunk, measured at 2,000 documents: store ~12 KB (apparent),
# snapshot ~14 KB, the drill's scratch copy ~13 KB, restore's staging store ~12 KB, manifest
DISK_PER_CHUNK = 56_000

CONFIG = """\
[kb]
name = "scale"
[corpus]
path = "corpus"
include = ["**/*.md", "**/*.html"]
[[spaces]]
name = "local"
provider = "fake"
model = "fake-hash"
dim = 384
[store]
backend = "edge"
path = "state/store"
[manifest]
path = "state/manifest.duckdb"
[snapshots]
root = "state/snapshots"
"""

# (name, kbguard arguments before --json and --config); "1 % update" is preceded by the edit
STEPS: list[tuple[str, list[str]]] = [
    ("first build", ["rebuild", "--quiet"]),
    ("no-op", ["rebuild", "--quiet"]),
    ("status", ["status"]),
    ("search", ["search", QUERY, "-k", "5"]),
    ("estimate", ["rebuild", "--estimate", "--quiet"]),
    ("verify", ["verify", "--quiet"]),
    ("verify --sample", ["verify", "--quiet", "--sample", "{sample}"]),
    ("snapshot create", ["snapshot", "create", "--quiet"]),
    ("restore --latest", ["restore", "--latest", "--yes", "--quiet"]),
    ("1 % update", ["rebuild", "--quiet"]),
    ("drill store-lost", ["drill", "store-lost", "--quiet", "--scratch", "drill"]),
]


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1",
            "HF_HUB_OFFLINE": "1"}


def du(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under ``path``."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def run_step(name: str, args: list[str], work: Path, logs: Path) -> dict:
    slug = name.replace(" ", "-").replace("%", "pct").replace("--", "")
    out, err = logs / f"{slug}.json", logs / f"{slug}.stderr"
    argv = [sys.executable, "-m", "kbguard", *args, "--json", "--config",
            str(work / "kbguard.toml")]
    m = measure(argv, cwd=work, env=env(), stdout=out, stderr=err)
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError):
        report = None
    row = {**asdict(m), "report": report}
    print(f"  {name:<18} {m.wall_s:9.2f} s  tree {m.peak_tree_rss_mib:7.0f} MiB  "
          f"exit {m.exit_code}" + (f"  LEFT RUNNING: {m.left_running}" if m.left_running else ""),
          file=sys.stderr, flush=True)
    return row


def one_run(pool: TextPool, spec: CorpusSpec, corpus: Path, work: Path, sample: int,
            keep: bool) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    logs = work.parent / f"{work.name}-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    link_copy(corpus, work / "corpus")
    (work / "kbguard.toml").write_text(CONFIG)
    steps: dict[str, dict] = {}
    sizes: dict[str, object] = {}
    update: dict[str, object] = {}
    for name, args in STEPS:
        args = [a.format(sample=sample) for a in args]
        if name == "1 % update":
            t = time.perf_counter()
            update = apply_update(pool, spec, work / "corpus")
            update["apply_s"] = round(time.perf_counter() - t, 2)
        steps[name] = run_step(name, args, work, logs)
        report = steps[name]["report"] or {}
        if name == "first build":
            if steps[name]["exit_code"] != 0:
                raise SystemExit(f"the first build failed (exit {steps[name]['exit_code']}); "
                                 f"see {logs}")
            chunks = report["chunks"]["total"]
            manifest = sum(p.stat().st_size for p in (work / "state").glob("manifest.duckdb*"))
            store = du(work / "state" / "store")
            sizes.update(chunks=chunks, manifest_bytes=manifest, store_bytes=store[0],
                         store_allocated_bytes=store[1],
                         manifest_bytes_per_chunk=round(manifest / chunks),
                         store_bytes_per_chunk=round(store[0] / chunks),
                         store_allocated_bytes_per_chunk=round(store[1] / chunks))
        if name == "snapshot create" and report.get("path"):
            snap = du(Path(report["path"]))
            sizes.update(snapshot_bytes=snap[0], snapshot_bytes_per_chunk=round(
                snap[0] / max(1, report.get("points") or sizes["chunks"])))
    result = {"spec": asdict(spec), "steps": steps, "sizes": sizes,
              "update": {**update, "check": update_check(spec, steps["1 % update"])},
              "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def update_check(spec: CorpusSpec, step: dict) -> dict:
    """Did the rebuild after the update see exactly the documents the update touched?"""
    plan = update_plan(spec)
    docs = (step.get("report") or {}).get("documents", {})
    want = {"changed": len(plan.edited), "added": len(plan.added),
            "removed": len(plan.removed)}
    got = {k: docs.get(k) for k in want}
    chunks = (step.get("report") or {}).get("chunks", {})
    return {"planned": want, "seen": got, "matches": want == got,
            "embedded": chunks.get("embedded"), "deleted": chunks.get("deleted"),
            "total_chunks": chunks.get("total")}


# -- the environment ---------------------------------------------------------------------------


def machine() -> dict:
    cpu = platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gib = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_gib, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for dist in ("duckdb", "qdrant-edge-py", "unstructured", "pyarrow", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    git = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                         capture_output=True, text=True)
    out["kbguard"] = git.stdout.strip() or None
    return out


def disk_needed(points: int) -> int:
    return points * DISK_PER_CHUNK


# -- the report --------------------------------------------------------------------------------


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/run*.json"))]


def _cell(values: list[float], unit: str) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    text = f"{med:,.2f} {unit}" if med < 100 else f"{med:,.0f} {unit}"
    if len(values) > 1:
        text += f" ({min(values):,.2f}–{max(values):,.2f})"
    return text


def report_section(out: Path, label: str) -> tuple[str, str | None]:
    """The Markdown section for the results under ``out`` and its plot (SVG text)."""
    results = load_results(out)
    cases: dict[str, list[dict]] = {}
    for r in results:
        cases.setdefault(CorpusSpec(**r["spec"]).key(), []).append(r)
    case_meta = {key: json.loads((out / key / "case.json").read_text())
                 for key in cases if (out / key / "case.json").exists()}
    order = sorted(cases, key=lambda k: (cases[k][0]["sizes"].get("chunks", 0), k))
    lines = [f"## {label}", ""]
    if not order:
        return "\n".join([*lines, "No finished run yet.", ""]), None
    meta = next(iter(case_meta.values()), {})
    lines += [f"Results: `{out.relative_to(REPO) if out.is_relative_to(REPO) else out}`. "
              f"Machine: {meta.get('machine', {}).get('cpu')}, "
              f"{meta.get('machine', {}).get('cores')} cores, "
              f"{meta.get('machine', {}).get('ram_gib')} GiB RAM, kernel "
              f"{meta.get('machine', {}).get('kernel')}, Python "
              f"{meta.get('machine', {}).get('python')}. Versions: "
              + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) + ".", ""]
    head = ["corpus"] + [_corpus_name(cases[k][0]["spec"]) for k in order]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(title: str, cells: list[str]) -> None:
        lines.append("| " + " | ".join([title, *cells]) + " |")

    row("chunks (points)", [f"{cases[k][0]['sizes']['chunks']:,}" for k in order])
    row("chunks estimated before the build",
        [f"{case_meta.get(k, {}).get('estimated_points', 0):,}" for k in order])
    row("sections per document (mean)", [f"{cases[k][0]['spec']['sections']:g}" for k in order])
    row("corpus MB", [f"{case_meta.get(k, {}).get('corpus', {}).get('bytes', 0) / 1e6:,.0f}"
                      for k in order])
    row("corpus generation s", [f"{case_meta.get(k, {}).get('corpus', {}).get('seconds', 0):,.1f}"
                                for k in order])
    row("runs", [str(len(cases[k])) for k in order])
    row("dates (UTC)", [", ".join(sorted({r["finished_at"][:16].replace("T", " ")
                                         for r in cases[k]})) for k in order])
    row("load average (1 min) before/after, range",
        [_load_range(cases[k]) for k in order])
    lines += ["", "Wall time, median over runs (min–max where several), each command a separate "
              "process:", ""]
    lines += ["| command | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head)]
    for name, _ in STEPS:
        row(name, [_cell([r["steps"][name]["wall_s"] for r in cases[k] if name in r["steps"]],
                         "s") for k in order])
    lines += ["", "Peak RSS of the whole process tree (summed over its processes, sampled every "
              "50 ms, never below the largest process) / largest single process (exact, "
              "`ru_maxrss`), MiB, median:", ""]
    lines += ["| command | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head)]
    for name, _ in STEPS:
        row(name, [_rss(cases[k], name) for k in order])
    lines += ["", "| size | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head)]
    for key, title in (("manifest_bytes_per_chunk", "manifest bytes per chunk"),
                       ("snapshot_bytes_per_chunk", "snapshot bytes per chunk"),
                       ("store_bytes_per_chunk", "store bytes per chunk (apparent)"),
                       ("store_allocated_bytes_per_chunk", "store bytes per chunk (allocated)")):
        row(title, [f"{statistics.median(r['sizes'][key] for r in cases[k]):,.0f}"
                    if all(key in r["sizes"] for r in cases[k]) else "–" for k in order])
    lines += ["", "Stage times (s, first run of each size):", ""]
    lines += ["| stage | " + " | ".join(head[1:]) + " |", "|" + "---|" * len(head)]
    for step in ("first build", "no-op", "1 % update"):
        stages = sorted({s for k in order
                         for s in ((cases[k][0]["steps"][step].get("report") or {})
                                   .get("stages") or {})})
        for stage in stages:
            row(f"{step}: {stage}", [_stage(cases[k][0], step, stage) for k in order])
    for step in ("snapshot create", "restore --latest"):
        stages = sorted({s for k in order
                         for s in ((cases[k][0]["steps"][step].get("report") or {})
                                   .get("stages") or {})})
        for stage in stages:
            row(f"{step}: {stage}", [_stage(cases[k][0], step, stage) for k in order])
    lines += ["", "Checks:", ""]
    for k in order:
        for i, r in enumerate(cases[k]):
            chk = r["update"]["check"]
            bad = {n: s["exit_code"] for n, s in r["steps"].items() if s["exit_code"] != 0}
            left = {n: s["left_running"] for n, s in r["steps"].items() if s["left_running"]}
            lines.append(
                f"- {r['spec']['docs']:,} docs, run {i + 1}: 1 % update planned "
                f"{chk['planned']}, the rebuild saw {chk['seen']} "
                f"({'matches' if chk['matches'] else 'DIFFERS'}); embedded {chk['embedded']:,} "
                f"of {chk['total_chunks']:,} chunks, deleted {chk['deleted']:,} points; "
                f"unexpected exit codes: {bad or 'none'}; processes left running: "
                f"{left or 'none'}")
    plot_name = f"{out.name}.svg"
    lines += ["", f"![time against corpus size per command](plots/{plot_name})", ""]
    panels = []
    for name, _ in STEPS:
        pts = [(float(cases[k][0]["sizes"]["chunks"]),
                statistics.median(r["steps"][name]["wall_s"] for r in cases[k]))
               for k in order]
        panels.append((name, pts))
    svg = svgplot.small_multiples(
        "kbguard commands: wall time against corpus size",
        f"{label}. Median over runs; dashed: proportional to the smallest corpus.",
        panels, x_label="chunks in the KB", y_label="seconds")
    return "\n".join(lines), svg


def _corpus_name(spec: dict) -> str:
    name = f"{spec['docs']:,} docs"
    return name if spec["sections"] == 4.0 else f"{name}, {spec['sections']:g} sections"


def _load_range(runs: list[dict]) -> str:
    loads = [v for r in runs for s in r["steps"].values()
             for v in (s["load_before"], s["load_after"])]
    return f"{min(loads):.1f}–{max(loads):.1f}"


def _rss(runs: list[dict], name: str) -> str:
    tree = [r["steps"][name]["peak_tree_rss_mib"] for r in runs if name in r["steps"]]
    single = [r["steps"][name]["max_single_rss_mib"] for r in runs if name in r["steps"]]
    if not tree:
        return "–"
    return f"{statistics.median(tree):,.0f} / {statistics.median(single):,.0f}"


def _stage(run: dict, step: str, stage: str) -> str:
    value = ((run["steps"][step].get("report") or {}).get("stages") or {}).get(stage)
    return "–" if value is None else f"{value:,.2f}"


def replace_block(results_md: Path, name: str, section: str) -> None:
    """Put ``section`` between the markers of ``name`` in ``results_md``: in place of what
    was there, or at the end; the rest of the file is left as it is."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{section}\n{end}"
    text = results_md.read_text() if results_md.exists() else "# Scale benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    results_md.write_text(text)


def write_report(out: Path, label: str, results_md: Path) -> None:
    """Rewrite the section of ``out`` in ``results_md``, and its plot."""
    section, svg = report_section(out, label)
    replace_block(results_md, f"bench_scale:{out.name}", section)
    if svg is not None:
        plots = results_md.parent / "plots"     # where the section's image link points
        plots.mkdir(exist_ok=True)
        (plots / f"{out.name}.svg").write_text(svg)


# -- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(__doc__.split("\n\n", 1)[1]))
    ap.add_argument("--docs", type=int, action="append", default=[],
                    help="corpus size in documents (repeat for several)")
    ap.add_argument("--points-target", type=int, default=None,
                    help="make documents long enough that each corpus has about this many chunks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--sample", type=int, default=1000, help="points for `verify --sample`")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "scale")
    ap.add_argument("--label", default="Scale runs", help="heading of the results section")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--keep", action="store_true", help="keep each run's KB (disk!)")
    ap.add_argument("--no-space-check", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out = args.out.resolve()
    if args.report_only:
        write_report(out, args.label, args.results)
        return
    if not args.docs:
        ap.error("give at least one --docs N")
    stop_on_sigterm()
    if not become_subreaper():
        print("note: not a child subreaper; orphaned workers escape the RSS sum",
              file=sys.stderr)
    pool = load_pool()
    for docs in args.docs:
        sections = (sections_for_points(pool, docs, args.points_target, args.seed)
                    if args.points_target else 4.0)
        spec = CorpusSpec(docs=docs, seed=args.seed, sections=sections)
        key = spec.key()
        case_dir = out / key
        pending = [i for i in range(args.runs) if not (case_dir / f"run{i}.json").exists()]
        if not pending:
            print(f"{key}: {args.runs} run(s) already done", file=sys.stderr)
            continue
        est = estimated_points(pool, spec)
        free = shutil.disk_usage(out.parent if out.parent.exists() else REPO).free
        if not args.no_space_check and free < disk_needed(est):
            raise SystemExit(f"{key}: about {est:,} chunks need ~{disk_needed(est) / 1e9:.0f} "
                             f"GB free and {free / 1e9:.0f} GB are; free some space or pass "
                             "--no-space-check")
        corpus = DATA / f"corpus-{key}"
        print(f"{key}: about {est:,} chunks; corpus {corpus}", file=sys.stderr, flush=True)
        summary = write_corpus(pool, spec, corpus)
        case_dir.mkdir(parents=True, exist_ok=True)
        (case_dir / "case.json").write_text(json.dumps({
            "spec": asdict(spec), "estimated_points": est, "corpus": summary,
            "pool": pool.digest(), "pool_sources": pool.sources, "machine": machine(),
            "versions": versions(), "config": CONFIG, "query": QUERY}, indent=1))
        for i in pending:
            print(f"{key} run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            result = one_run(pool, spec, corpus, case_dir / f"run{i}", args.sample, args.keep)
            (case_dir / f"run{i}.json").write_text(json.dumps(result, indent=1, default=str))
            write_report(out, args.label, args.results)
    write_report(out, args.label, args.results)
    print(f"results: {args.results} ({out})", file=sys.stderr)


if __name__ == "__main__":
    main()
