"""Peers benchmark: kbguard against LangChain's ``index()`` and LlamaIndex's ``IngestionPipeline``
on the same generated corpus, in the same run.

The corpus is the scale benchmark's (scale_corpus.py, ``--docs`` documents of real Rust and
PostgreSQL prose, Markdown and HTML). Each tool gets its own hard-linked copy and runs, every
phase as a separate process (proctree.py measures wall time and the process tree's peak RSS):

    first    build from nothing
    noop     the same corpus again
    update   after the 1 % update (0.8 % of documents edited, 0.1 % added, 0.1 % removed)

kbguard runs with the fake embedder and its Edge store (`kbguard rebuild --json`); the peers run
in their own venv (``bash benchmarks/peers/setup.sh`` makes it) with the same fake embedder,
counting what they embed, and their own in-process vector stores saved between runs
(``--store memory``) or qdrant-client's local mode (``--store qdrant-local``);
benchmarks/peers/worker.py says how each is set up. The table gives wall time, texts embedded
and time per chunk of the first build, each tool's chunks being its own.

    bash benchmarks/peers/setup.sh
    .venv/bin/python benchmarks/bench_peers.py --docs 20000 --runs 3

Raw results go to ``--out`` (default benchmarks/runs/peers/), DOCS-STORE/runN.json; after each
run the section of ``--out`` in benchmarks/RESULTS-scale.md is rewritten. Rerunning resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_scale import CONFIG, DATA, REPO, RESULTS, env, machine, replace_block, versions
from proctree import become_subreaper, measure, stop_on_sigterm
from scale_corpus import CorpusSpec, TextPool, apply_update, link_copy, load_pool, write_corpus

PEERS_PY = HERE / "data" / "peers-venv" / "bin" / "python"
WORKER = HERE / "peers" / "worker.py"
TOOLS = ("kbguard", "langchain", "llamaindex")
PHASES = ("first", "noop", "update")


def phase(tool: str, work: Path, logs: Path, name: str, peers_py: Path, store: str) -> dict:
    if tool == "kbguard":
        argv = [sys.executable, "-m", "kbguard", "rebuild", "--json", "--quiet", "--config",
                str(work / "kbguard.toml")]
    else:
        argv = [str(peers_py), str(WORKER), tool, "--corpus", str(work / "corpus"),
                "--state", str(work / "state"), "--store", store]
    out, err = logs / f"{tool}-{name}.json", logs / f"{tool}-{name}.stderr"
    m = measure(argv, cwd=work, env=env(), stdout=out, stderr=err)
    try:
        report = json.loads(out.read_text())
    except (OSError, ValueError):
        report = None
    if m.exit_code != 0 or report is None:
        raise SystemExit(f"{tool} {name} failed (exit {m.exit_code}); see {err}")
    if tool == "kbguard":
        texts, chunks = report["chunks"]["embedded"], report["chunks"]["total"]
    else:
        texts = report["texts_embedded"]
        chunks = report["points"]
    print(f"  {tool:<10} {name:<6} {m.wall_s:8.2f} s  embedded {texts:>8,}  points {chunks:>8,}"
          f"  tree {m.peak_tree_rss_mib:6.0f} MiB", file=sys.stderr, flush=True)
    return {**asdict(m), "texts_embedded": texts, "points": chunks, "report": report}


def one_run(pool: TextPool, spec: CorpusSpec, corpus: Path, work_root: Path, peers_py: Path,
            store: str, keep: bool) -> dict:
    tools: dict[str, dict] = {}
    for tool in TOOLS:
        work = work_root / tool
        shutil.rmtree(work, ignore_errors=True)
        logs = work_root / f"{tool}-logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir(parents=True)
        link_copy(corpus, work / "corpus")
        (work / "kbguard.toml").write_text(CONFIG)
        phases = {}
        for name in PHASES:
            if name == "update":
                apply_update(pool, spec, work / "corpus")
            phases[name] = phase(tool, work, logs, name, peers_py, store)
        tools[tool] = phases
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return {"spec": asdict(spec), "store": store, "tools": tools,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def report_section(out: Path, label: str) -> str:
    runs_by_docs: dict[tuple[int, str], list[dict]] = {}
    for path in sorted(out.glob("*/run*.json")):
        r = json.loads(path.read_text())
        runs_by_docs.setdefault((r["spec"]["docs"], r["store"]), []).append(r)
    lines = [f"## {label}", ""]
    if not runs_by_docs:
        return "\n".join([*lines, "No finished run yet.", ""])
    meta_path = next(out.glob("*/case.json"), None)
    meta = json.loads(meta_path.read_text()) if meta_path else {}
    m = meta.get("machine", {})
    lines += [f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, "
              f"Python {m.get('python')}. kbguard: "
              + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items())
              + ". Peers: " + ", ".join(meta.get("peers", [])) + ".", ""]
    for (docs, store), runs in sorted(runs_by_docs.items()):
        loads = [v for r in runs for t in r["tools"].values() for p in t.values()
                 for v in (p["load_before"], p["load_after"])]
        lines += [f"### {docs:,} documents, peers' store {store}, {len(runs)} run(s), "
                  f"{', '.join(sorted({r['finished_at'][:16] for r in runs}))} UTC, "
                  f"load average {min(loads):.1f}–{max(loads):.1f}", "",
                  "| tool | phase | wall s, median (min–max) | texts embedded | points after | "
                  "peak tree RSS MiB |", "|---|---|---|---|---|---|"]
        for tool in TOOLS:
            for name in PHASES:
                rows = [r["tools"][tool][name] for r in runs if tool in r["tools"]]
                if not rows:
                    continue
                walls = [p["wall_s"] for p in rows]
                span = f" ({min(walls):.2f}–{max(walls):.2f})" if len(walls) > 1 else ""
                lines.append(
                    f"| {tool} | {name} | {statistics.median(walls):.2f}{span} | "
                    f"{rows[0]['texts_embedded']:,} | {rows[0]['points']:,} | "
                    f"{statistics.median(p['peak_tree_rss_mib'] for p in rows):,.0f} |")
        lines += ["", "First build per chunk (each tool's own chunks; median wall time / points "
                  "after the first build):", ""]
        for tool in TOOLS:
            rows = [r["tools"][tool]["first"] for r in runs if tool in r["tools"]]
            if rows:
                per = statistics.median(p["wall_s"] / max(1, p["points"]) for p in rows)
                lines.append(f"- {tool}: {per * 1000:.2f} ms per chunk "
                             f"({rows[0]['points']:,} chunks)")
        lines.append("")
    return "\n".join(lines)


def write_report(out: Path, label: str, results_md: Path) -> None:
    replace_block(results_md, f"bench_peers:{out.name}", report_section(out, label))


def peer_versions(peers_py: Path) -> list[str]:
    done = subprocess.run([str(peers_py), "-m", "pip", "list", "--format=freeze"],
                          capture_output=True, text=True)
    wanted = ("langchain-core", "langchain-classic", "langchain-qdrant",
              "langchain-text-splitters", "llama-index-core", "llama-index-vector-stores-qdrant",
              "qdrant-client")
    return [line.replace("==", " ") for line in done.stdout.splitlines()
            if line.split("==")[0].lower() in wanted]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "runs" / "peers")
    ap.add_argument("--label", default="kbguard and its peers on the same corpus")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--peers-python", type=Path, default=PEERS_PY)
    ap.add_argument("--store", choices=["memory", "qdrant-local"], default="memory",
                    help="the peers' vector store (benchmarks/peers/worker.py)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    out = args.out.resolve()
    if args.report_only:
        write_report(out, args.label, args.results)
        return
    if not args.peers_python.exists():
        raise SystemExit(f"{args.peers_python} is missing: run `bash benchmarks/peers/setup.sh` "
                         "first (or pass --peers-python)")
    stop_on_sigterm()
    become_subreaper()
    pool = load_pool()
    spec = CorpusSpec(docs=args.docs, seed=args.seed)
    corpus = DATA / f"corpus-{spec.key()}"
    summary = write_corpus(pool, spec, corpus)
    case = out / f"{spec.key()}-{args.store}"
    case.mkdir(parents=True, exist_ok=True)
    (case / "case.json").write_text(json.dumps({
        "spec": asdict(spec), "corpus": summary, "pool": pool.digest(), "machine": machine(),
        "versions": versions(), "peers": peer_versions(args.peers_python)}, indent=1))
    for i in range(args.runs):
        if (case / f"run{i}.json").exists():
            continue
        print(f"{spec.key()} run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
        result = one_run(pool, spec, corpus, case / f"run{i}", args.peers_python, args.store,
                         args.keep)
        (case / f"run{i}.json").write_text(json.dumps(result, indent=1, default=str))
        write_report(out, args.label, args.results)
    write_report(out, args.label, args.results)


if __name__ == "__main__":
    main()
