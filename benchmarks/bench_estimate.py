"""Estimate accuracy on a real corpus: `kbguard rebuild --estimate` against what then happens.

Each run starts from an empty folder with the Django 4.2.17 docs (the KB of bench_rebuild.py)
and, as separate `kbguard` processes, estimates each scenario and then makes it happen:

    first           estimate --calibrate on the KB never built, then the first build
    store_lost      estimate, delete the store, `rebuild`
    full_reembed    estimate, delete manifest and store (cache lost), `rebuild`
    restore_latest  `snapshot create` and one `restore --latest` (history of a restore), the
                    corpus replaced by the 5.1.4 docs, estimate, then `restore --latest` with
                    its catch-up rebuild of the update
    incremental     back to the 4.2.17 KB (restore + rebuild), corpus replaced by 5.1.4,
                    estimate, then `rebuild`; the estimate's texts and tokens must equal what
                    the rebuild embeds
    primary_down    a second KB of two spaces, an API primary (the tests' local
                    OpenAI-compatible server) before the fake standby, built at 4.2.17; the
                    5.1.4 update estimated, then rebuilt with the primary's URL on a closed
                    port (exit 4: the standby embeds, the primary is left in debt)

Estimated seconds are compared with the run's own `seconds` (the report of the rebuild, or
restore plus catch-up), which exclude interpreter start-up (~1 s, the same for every command).
The time the estimate itself takes is measured on the built KB with nothing to do, and with the
5.1.4 update pending (then it parses the 211 changed documents).

    .venv/bin/python benchmarks/bench_estimate.py --runs 3
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_drill import API_PRIMARY
from bench_rebuild import NEW, OLD, django_docs, write_config

from tests.openai_server import OpenAIServer

RUNS = Path(__file__).resolve().parent / "runs"
KEY = "sk-bench-estimate"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "KBG_BENCH_KEY": KEY,
       "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def kbguard(cfg: Path, *args: str, ok: tuple[int, ...] = (0,)) -> tuple[dict, float]:
    """One kbguard command with --json: its report and its wall time."""
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kbguard", *args, "--json", "--config",
                           str(cfg)], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t
    if proc.returncode not in ok:
        raise SystemExit(f"kbguard {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout), wall


def estimate(cfg: Path, *extra: str) -> tuple[dict, float]:
    return kbguard(cfg, "rebuild", "--estimate", "--quiet", *extra)


def swap_corpus(work: Path, version: str) -> None:
    shutil.rmtree(work / "corpus")
    shutil.copytree(django_docs(version), work / "corpus")


API_SPACES = API_PRIMARY + """[[spaces]]
name = "local"
"""

def primary_down_run(work: Path, url: str, closed: str) -> dict:
    """An API primary (the tests' local OpenAI-compatible server) before the fake standby: the
    update arrives while the primary is down (its URL a closed port)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, "fake", 32)
    text = cfg.read_text().replace('[[spaces]]\nname = "local"\n', API_SPACES.format(url=url))
    cfg.write_text(text)
    shutil.copytree(django_docs(OLD), work / "corpus")
    kbguard(cfg, "rebuild", "--quiet")
    kbguard(cfg, "rebuild", "--quiet")
    swap_corpus(work, NEW)
    est, _ = estimate(cfg)
    cfg.write_text(text.replace(url, closed))
    report, _ = kbguard(cfg, "rebuild", "--quiet", ok=(4,))
    sc = est["scenarios"]["primary_down"]
    return {"estimated_s": sc["seconds"], "measured_s": report["seconds"],
            "estimated_texts": sc["texts"], "estimated_tokens": sc["tokens"],
            "measured_texts": report["spaces"]["local"]["texts"],
            "measured_tokens": report["cost"]["by_space"].get("local", {}).get("tokens", 0),
            "estimated_debt": sc["spaces"]["primary"]["debt"],
            "measured_debt": report["spaces"]["primary"]["debt"], "basis": sc["basis"],
            "estimated_stages": sc["stages"], "measured_stages": report["stages"]}


def closed_port_url() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def one_run(work: Path, provider: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = write_config(work, provider, 32)
    state = work / "state"
    shutil.copytree(django_docs(OLD), work / "corpus")
    out: dict = {}

    def compare(name: str, est: dict, measured: dict, seconds: float) -> None:
        sc = est["scenarios"][name]
        out[name] = {"estimated_s": sc["seconds"], "measured_s": seconds,
                     "estimated_texts": sc["texts"], "estimated_tokens": sc["tokens"],
                     "measured_texts": measured["chunks"]["embedded"],
                     "measured_tokens": measured["cost"]["tokens"], "basis": sc["basis"],
                     "estimated_stages": sc["stages"], "measured_stages": measured["stages"]}

    est, _ = estimate(cfg, "--calibrate")
    report, _ = kbguard(cfg, "rebuild", "--quiet")
    compare("incremental", est, report, report["seconds"])
    out["first"] = out.pop("incremental")

    est, out["estimate_wall_s_nothing_to_do"] = estimate(cfg)
    shutil.rmtree(state / "store")
    report, _ = kbguard(cfg, "rebuild", "--quiet")
    compare("store_lost", est, report, report["seconds"])

    est, _ = estimate(cfg)
    shutil.rmtree(state)
    report, _ = kbguard(cfg, "rebuild", "--quiet")
    compare("full_reembed", est, report, report["seconds"])

    kbguard(cfg, "snapshot", "create", "--quiet")
    kbguard(cfg, "restore", "--latest", "--yes", "--quiet")     # a restore in the history
    swap_corpus(work, NEW)
    est, out["estimate_wall_s_update_pending"] = estimate(cfg)
    restored, _ = kbguard(cfg, "restore", "--latest", "--yes", "--quiet")
    catch_up = restored["catch_up"]
    compare("restore_latest", est, catch_up, restored["seconds"] + catch_up["seconds"])

    swap_corpus(work, OLD)
    kbguard(cfg, "restore", "--latest", "--yes", "--quiet")
    swap_corpus(work, NEW)
    est, _ = estimate(cfg)
    report, _ = kbguard(cfg, "rebuild", "--quiet")
    compare("incremental", est, report, report["seconds"])
    inc = out["incremental"]
    inc["exact"] = (inc["estimated_texts"], inc["estimated_tokens"]) == (
        inc["measured_texts"], inc["measured_tokens"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--provider", choices=["fake", "minilm"], default="fake")
    args = ap.parse_args()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    out_dir = RUNS / f"estimate-{args.provider}-{stamp}"
    results = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        got = one_run(out_dir / f"run{i}", args.provider)
        with OpenAIServer(api_key=KEY, fast=True, keep_log=False) as server:
            got["primary_down"] = primary_down_run(out_dir / f"api{i}", server.url,
                                                   closed_port_url())
        got["load_before"] = load
        results.append(got)
        print(json.dumps(got, indent=1), file=sys.stderr)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    loads = ", ".join(f"{r['load_before']:.2f}" for r in results)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC,"
          f" load before each run: {loads}\n")
    print("| scenario | estimated s (median) | measured s (median) | error (median) | texts est./measured |")
    print("|---|---|---|---|---|")
    for name in ("first", "store_lost", "full_reembed", "restore_latest", "incremental",
                 "primary_down"):
        est = [r[name]["estimated_s"] for r in results]
        got = [r[name]["measured_s"] for r in results]
        err = [(e - g) / g for e, g in zip(est, got, strict=True) if e is not None and g]
        med_e = statistics.median(e for e in est if e is not None) if any(
            e is not None for e in est) else None
        print(f"| {name} | {med_e if med_e is None else f'{med_e:.2f}'} | "
              f"{statistics.median(got):.2f} | "
              f"{f'{statistics.median(err):+.0%}' if err else 'n/a'} | "
              f"{results[0][name]['estimated_texts']} / {results[0][name]['measured_texts']} |")
    print("\nprimary_down: standby texts estimated/measured "
          f"{results[0]['primary_down']['estimated_texts']}/"
          f"{results[0]['primary_down']['measured_texts']}, primary debt "
          f"{results[0]['primary_down']['estimated_debt']}/"
          f"{results[0]['primary_down']['measured_debt']}")
    print(f"\nincremental exact (texts and tokens) in every run: "
          f"{all(r['incremental']['exact'] for r in results)}")
    for key in ("estimate_wall_s_nothing_to_do", "estimate_wall_s_update_pending"):
        print(f"{key}: median {statistics.median(r[key] for r in results):.2f} s")


if __name__ == "__main__":
    main()
