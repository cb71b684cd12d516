"""Drill benchmark: every `kbguard drill` on the sample KB, recovery time against the objectives.

The sample KB (pipelines/sample.toml: the Django docs excerpts and one file of each format,
MiniLM) is set up so that every drill can run, in a fresh folder under benchmarks/runs/drill/:

- its corpus copied into a new git repository, `dvc add`ed and pushed to a local-folder remote;
- an API primary space in front of the sample's MiniLM space (now the standby), served by the
  local OpenAI-compatible server of the tests (tests/openai_server.py) with ``--latency-ms``;
- the sample's canaries, on the MiniLM space;
- built, a snapshot made with ``--dvc-push``, everything committed.

Then `kbguard drill --json` runs all six drills as a user would, and the results are written
to benchmarks/RESULTS-drill.md (machine, date, load) and printed.

    .venv/bin/python benchmarks/bench_drill.py [--latency-ms 50] [--out benchmarks/RESULTS-drill.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from tests.openai_server import OpenAIServer

KEY = "sk-bench-drill"
ENV = {**os.environ, "KBG_BENCH_KEY": KEY, "NO_PROXY": "127.0.0.1,localhost",
       "no_proxy": "127.0.0.1,localhost", "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1",
       "HF_HUB_OFFLINE": "1"}


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def kbguard(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "kbguard", *args, "--config", "kb.toml", cwd=cwd)


# an API primary space (the tests' local OpenAI-compatible server at {url}) before the standby
API_PRIMARY = """\
[[spaces]]
name = "primary"
model = "text-embedding-3-small"
dim = 384
batch_size = 64
[[spaces.providers]]
type = "openai"
base_url = "{url}"
api_key_env = "KBG_BENCH_KEY"
max_retries = 0
timeout_s = 5
max_batch_texts = 64
price_per_million_tokens = 0.02
"""


def sample_config(url: str) -> str:
    sample = tomllib.loads((REPO / "pipelines/sample.toml").read_text())
    canaries = "".join(
        f'[[canaries]]\nquery = "{c["query"]}"\nexpect = {json.dumps(c["expect"])}\n'
        f'k = {c["k"]}\nspace = "local"\n\n' for c in sample["canaries"])
    include = json.dumps(sample["corpus"]["include"])
    return f"""[kb]
name = "sample"
[corpus]
path = "corpus"
include = {include}
[chunking]
max_tokens = 256
{API_PRIMARY.format(url=url)}[[spaces]]
name = "local"
provider = "sentence-transformers"
model = "all-MiniLM-L6-v2"
dim = 384
batch_size = 32
[store]
backend = "edge"
path = "state/store"
[manifest]
path = "state/sample.duckdb"
[snapshots]
root = "state/snapshots"
[recovery]
rto_single_failure_s = 900
rto_full_rebuild_s = 3600

{canaries}"""


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} vCPUs ({cpu}), Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=50.0,
                    help="latency of the local embedding API (default 50 ms)")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS-drill.md")
    args = ap.parse_args()
    work = HERE / "runs" / "drill"
    shutil.rmtree(work, ignore_errors=True)
    repo = work / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(REPO / "samples/corpus", repo / "corpus")
    with OpenAIServer(api_key=KEY, latency_s=args.latency_ms / 1000) as server:
        (repo / "kb.toml").write_text(sample_config(server.url))
        (repo / ".gitignore").write_text("/state/*\n!/state/snapshots/\n")
        sh("git", "init", "-q", cwd=repo)
        sh("git", "config", "user.email", "bench@example.com", cwd=repo)
        sh("git", "config", "user.name", "bench", cwd=repo)
        sh(sys.executable, "-m", "dvc", "init", "-q", cwd=repo)
        sh(sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(work / "remote"),
           cwd=repo)
        sh(sys.executable, "-m", "dvc", "add", "-q", "corpus", cwd=repo)
        kbguard("rebuild", "--quiet", cwd=repo)
        kbguard("snapshot", "create", "--dvc-push", "--quiet", cwd=repo)
        sh(sys.executable, "-m", "dvc", "push", "-q", cwd=repo)
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-q", "-m", "the sample KB", cwd=repo)
        load_before = os.getloadavg()
        started = dt.datetime.now(dt.UTC)
        done = subprocess.run([sys.executable, "-m", "kbguard", "drill", "--json", "--config",
                               "kb.toml"], cwd=repo, env=ENV, capture_output=True, text=True)
        load_after = os.getloadavg()
    report = json.loads(done.stdout)
    (work / "drill.json").write_text(json.dumps(report, indent=2))
    status = json.loads(kbguard("status", "--json", cwd=repo))
    counts = status["counts"]
    lines = [
        "# `kbguard drill` on the sample KB",
        "",
        f"{started:%Y-%m-%d %H:%M} UTC; {machine()}; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after; `python benchmarks/bench_drill.py --latency-ms "
        f"{args.latency_ms:g}` (exit {done.returncode}).",
        "",
        f"The sample corpus ({counts['documents']} documents, {counts['chunks']} chunks) in a "
        "git repository with DVC (local-folder remote), an API primary space "
        f"(tests/openai_server.py, {args.latency_ms:g} ms a request) and MiniLM as the standby, "
        "2 canaries, one snapshot pushed with `--dvc-push`. Each drill works on its own scratch "
        "copy; every command is a separate `kbguard` process, so start-up (~0.6 s) and MiniLM "
        "loading for the canaries count, as they do for an operator. Recovery runs from the "
        "first recovery command to the end of a healthy `verify`; it is what the objective is "
        "compared with.",
        "",
        "| drill | status | detection | recovery | objective | embedded (texts / tokens) "
        "| steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for d in report["drills"]:
        steps = "; ".join(f"{s['command']} {s['seconds']:.1f} s" for s in d["steps"]
                          if s["phase"] in ("detect", "recover"))
        lines.append(
            f"| {d['scenario']} | {d['status']} | {_s(d['detection_s'])} | "
            f"{_s(d['recovery_s'])} | {d['objective_s']:g} s | {d['texts']} / {d['tokens']} "
            f"| {steps} |")
    lines += ["", f"All passed: {report['passed']}.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


def _s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    main()
