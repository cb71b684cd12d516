"""Availability during a rebuild: what serving status and search costs the rebuild, and how fast
they answer while it runs.

Two rebuilds, each a separate `kbguard rebuild --json` process timed by its own report:

- ``first``: a corpus of generated Markdown documents (``--docs``, fake embedder,
  parse_workers 2) built from an empty folder: scan, parse, embed, store;
- ``full``: `rebuild --full` of a generated KB of ``--points`` points (benchmarks/synthetic.py,
  384-d): the store written again from the embedding cache, the stage where the rebuild and the
  reads share the store.

Three ways, interleaved run by run:

- ``before``: the kbguard tree given by ``--before`` (a checkout without the read service);
- ``idle``: this tree, nobody asking (the service listens, nothing more);
- ``reads``: this tree, while this process asks without pause but ``--pause`` seconds between
  requests, alternately `status` and `search`, through the library calls the commands make
  (``kb_status``, ``search_kb``): the latency of each answer, without interpreter start-up.

Then two closer looks: the store lock alone (30,000 points upserted and flushed in batches of
256 into an Edge store, bare and through ``SharedStore``, alternately), and `kbguard status`
and `kbguard search` as processes (start-up included) on a small KB, idle and while a rebuild
is held at its first store write (kbguard.core.faults).

    .venv/bin/python benchmarks/bench_availability.py --before /tmp/kbguard-before --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

import numpy as np

import kbguard
from benchmarks.synthetic import fill_synthetic, write_synthetic_config
from kbguard.errors import LockedError
from kbguard.kb.read_service import SharedStore
from kbguard.store import Point, VectorSpec, open_store
from tests.kbtest import long_markdown, write_config

ENV = {**os.environ, "DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"}
QUERY = "Document 17 part 3 topic3 item1"


def make_kb(root: Path, docs: int, backend: str) -> Path:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for i in range(docs):
        (corpus / f"doc{i}.md").write_text(long_markdown(f"Document {i}", sections=6))
    return write_config(root / "kbguard.toml", corpus, kb="bench", backend=backend,
                        max_tokens=128, workers=2, upsert_batch=256, batch_size=64)


def rebuild(tree: Path, config: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "kbguard", "rebuild", "--json", *extra,
                           "--config", str(config)], capture_output=True, text=True,
                          env={**ENV, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        raise SystemExit(f"rebuild exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


class Reader(threading.Thread):
    """Asks status and search in turn until stopped; keeps each answer's latency."""

    def __init__(self, config: Path, pause: float):
        super().__init__(daemon=True)
        self.cfg = kbguard.load_config(config)
        self.pause = pause
        self.stop = threading.Event()
        self.latency: dict[str, list[float]] = {"status": [], "search": []}
        # answered "busy": the rebuild not listening yet, or nothing in its store yet
        self.busy = {"status": 0, "search": 0}

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            op = ("status", "search")[turn % 2]
            turn += 1
            started = time.perf_counter()
            try:
                if op == "status":
                    served = kbguard.kb_status(self.cfg, check_corpus=False).rebuild
                else:
                    served = kbguard.search_kb(self.cfg, QUERY).rebuild
            except LockedError:
                self.busy[op] += 1
            except kbguard.KbguardError:
                pass   # before the first build: nothing to read yet
            else:
                if served is not None:   # an answer of the rebuild, not of a finished KB
                    self.latency[op].append(time.perf_counter() - started)
            self.stop.wait(self.pause)


def one_round(tree: Path, root: Path, docs: int, backend: str, big: Path, reads: bool,
              pause: float) -> dict:
    if root.exists():
        shutil.rmtree(root)
    out: dict = {}
    for phase, config, extra in (("first", make_kb(root, docs, backend), ()),
                                 ("full", big, ("--full",))):
        reader = Reader(config, pause) if reads else None
        if reader:
            reader.start()
        report = rebuild(tree, config, *extra)
        if reader:
            reader.stop.set()
            reader.join()
        out[phase] = {"seconds": report["seconds"], "stages": report["stages"],
                      "chunks": report["chunks"]["total"],
                      "latency": reader.latency if reader else None,
                      "busy": reader.busy if reader else None}
    return out


def store_lock_cost(work: Path, runs: int, points: int = 30_000, batch: int = 256
                    ) -> dict[str, list[float]]:
    """Seconds to upsert and flush ``points`` into an Edge store, bare and shared."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((points, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    batch_points = [Point(f"00000000-0000-0000-0000-{i:012d}", {"v": vectors[i]},
                          {"text": "x" * 300, "path": f"doc{i // 100}.md"})
                    for i in range(points)]
    out: dict[str, list[float]] = {"bare": [], "shared": []}
    for run in range(runs):
        for way in sorted(out, reverse=bool(run % 2)):   # neither way always goes first
            folder = work / f"lock-{way}"
            store = open_store("edge", path=folder)
            if way == "shared":
                store = SharedStore(store)
            store.create([VectorSpec("v", 384)])
            started = time.perf_counter()
            for lo in range(0, points, batch):
                store.upsert(batch_points[lo:lo + batch])
                store.flush()
            out[way].append(time.perf_counter() - started)
            store.close()
            shutil.rmtree(folder)
    return out


def command_latency(work: Path, backend: str, runs: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of `kbguard status` and `kbguard search` processes, idle and during a rebuild
    held at its first store write."""
    from tests.kbtest import edit_corpus
    from tests.kbtest import make_kb as make_test_kb

    root = work / f"latency-{backend}"
    kb = make_test_kb(root, backend=backend, docs=8)
    assert kb.subprocess("rebuild", "--quiet").returncode == 0
    commands = {"status": ["status", "--json", "--no-corpus-check"],
                "search": ["search", QUERY, "--json"]}

    def timed(args: list[str]) -> float:
        started = time.perf_counter()
        done = kb.subprocess(*args, env={**ENV, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            raise SystemExit(f"{args} exited {done.returncode}: {done.stderr[-2000:]}")
        return time.perf_counter() - started

    out: dict[str, dict[str, list[float]]] = {
        "idle": {name: [timed(args) for _ in range(runs)] for name, args in commands.items()}}
    edit_corpus(kb, extra_docs=3)
    flag = root / "paused"
    held = subprocess.Popen(
        [sys.executable, "-m", "kbguard", "rebuild", "--quiet", "--config", str(kb.config_path)],
        env={**ENV, "PYTHONPATH": str(REPO), "KBGUARD_PAUSE_AT": "store-upsert:1",
             "KBGUARD_PAUSE_FILE": str(flag)})
    while not flag.exists():
        if held.poll() is not None:
            raise SystemExit("the rebuild ended before its first store write")
        time.sleep(0.05)
    out["during"] = {name: [timed(args) for _ in range(runs)] for name, args in commands.items()}
    flag.unlink()
    if held.wait() != 0:
        raise SystemExit("the held rebuild failed")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True,
                    help="a kbguard tree without the read service (e.g. `git archive` of it)")
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--points", type=int, default=30_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--backend", default="edge")
    ap.add_argument("--pause", type=float, default=0.2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kbguard-avail-"))
    big = write_synthetic_config(work / "big", dim=384)
    big.write_text(big.read_text().replace('backend = "edge"', f'backend = "{args.backend}"'))
    fill_synthetic(kbguard.load_config(big), points=args.points)
    results: dict[str, list[dict]] = {"before": [], "idle": [], "reads": []}
    loads = []
    try:
        for run in range(args.runs):
            for way in results:   # interleaved, so a change of load hits every way alike
                tree = args.before if way == "before" else REPO
                loads.append(os.getloadavg()[0])
                results[way].append(one_round(tree, work / way, args.docs, args.backend, big,
                                              way == "reads", args.pause))
                print(f"run {run + 1} {way}: " + ", ".join(
                    f"{p} {r['seconds']:.2f} s" for p, r in results[way][-1].items()),
                    file=sys.stderr)
        lock = store_lock_cost(work, args.runs)
        latency = command_latency(work, args.backend, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first = results["idle"][0]["first"]["chunks"]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"load average {min(loads):.1f}-{max(loads):.1f}; {args.backend} store; first: "
          f"{args.docs} documents, {first} chunks; full: {args.points:,} points; {args.runs} "
          "runs (median, min-max)\n")
    print("| rebuild | before (no service) | idle service | status/search every "
          f"{args.pause:g} s |\n|---|---|---|---|")
    for phase in ("first", "full"):
        cells = []
        for way in results:
            secs = [r[phase]["seconds"] for r in results[way]]
            cells.append(f"{statistics.median(secs):.2f} s ({min(secs):.2f}-{max(secs):.2f})")
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("\n| answered during the rebuild | answers | median ms | p90 ms | max ms | busy |\n"
          "|---|---|---|---|---|---|")
    for phase in ("first", "full"):
        for op in ("status", "search"):
            lat = sorted(x for r in results["reads"] for x in r[phase]["latency"][op])
            busy = sum(r[phase]["busy"][op] for r in results["reads"])
            if not lat:
                print(f"| {phase}: {op} | 0 | - | - | - | {busy} |")
                continue
            p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
            print(f"| {phase}: {op} | {len(lat)} | {1000 * statistics.median(lat):.0f} | "
                  f"{1000 * p90:.0f} | {1000 * lat[-1]:.0f} | {busy} |")
    print("\n| 30,000 points upserted and flushed, Edge | median s | fastest s | runs |\n"
          "|---|---|---|---|")
    for way, secs in lock.items():
        print(f"| {way} store | {statistics.median(secs):.3f} | {min(secs):.3f} | "
              f"{', '.join(f'{x:.3f}' for x in secs)} |")
    print(f"\n| process, {args.backend} store (median of {args.runs}) | idle KB | during a rebuild |"
          "\n|---|---|---|")
    for name in ("status", "search"):
        print(f"| `kbguard {name}` | {statistics.median(latency['idle'][name]):.2f} s | "
              f"{statistics.median(latency['during'][name]):.2f} s |")


if __name__ == "__main__":
    main()
