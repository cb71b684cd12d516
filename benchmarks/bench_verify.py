"""Verify benchmark: points verified per second on a 100k-point KB in the embedded store.

Builds a synthetic KB once (`synthetic.fill_synthetic`: corpus files, DuckDB manifest and a
Qdrant Edge shard, 384-d vectors from the fake embedder, ~60-word chunk texts in the payloads),
then runs the full check (`verify_kb`, every point compared with its cached vector, its payload
and the manifest; no sampling, no canaries) several times, each in a fresh process so peak
memory is that of one check. Also times a bare scroll of the shard with vectors (after the same
read-ahead of the payload files that the check does: the floor that the engine and its Python
bindings set) for comparison.

    .venv/bin/python benchmarks/bench_verify.py --points 100000 --runs 5

Raw results go to benchmarks/runs/ (git-ignored); a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from synthetic import fill_synthetic, write_synthetic_config

HERE = Path(__file__).resolve().parent

CHILD = """
import json, resource, sys, time
from kbguard.config import load_config
mode, config = sys.argv[1], sys.argv[2]
cfg = load_config(config)
t = time.perf_counter()
if mode == "verify":
    from kbguard.integrity.verify import verify_kb
    r = verify_kb(cfg)
    out = {"points": r.points_checked, "findings": r.total, "exit_code": int(r.verdict)}
else:
    from kbguard.store import store_for
    n = 0
    with store_for(cfg) as store:
        store.will_read_all()
        for page in store.scroll(batch_size=1024, with_vectors=True):
            n += len(page)
    out = {"points": n}
out["seconds"] = time.perf_counter() - t
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(mode: str, config: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, mode, str(config)], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None, help="keep the KB here (reused if built)")
    args = ap.parse_args()

    root = args.dir or Path(tempfile.mkdtemp(prefix="kbguard-bench-verify-"))
    root.mkdir(parents=True, exist_ok=True)
    config = root / "kbguard.toml"
    if not (root / "state" / "manifest.duckdb").exists():
        write_synthetic_config(root, args.dim)
        from kbguard.config import load_config

        t = time.perf_counter()
        fill_synthetic(load_config(config), points=args.points)
        print(f"built {args.points} points in {time.perf_counter() - t:.1f} s", file=sys.stderr)

    runs = []
    for i in range(args.runs):
        load = os.getloadavg()[0]
        v = child("verify", config)
        s = child("scroll", config)
        assert v["findings"] == 0 and v["points"] == args.points, v
        runs.append({"verify": v, "scroll": s, "load1_before": load})
        print(f"run {i + 1}: verify {v['points'] / v['seconds']:,.0f} pts/s "
              f"({v['seconds']:.2f} s, {v['peak_rss_mb']:.0f} MB); bare scroll "
              f"{s['points'] / s['seconds']:,.0f} pts/s; load {load:.2f}", file=sys.stderr)

    med = statistics.median
    v_rate = med(r["verify"]["points"] / r["verify"]["seconds"] for r in runs)
    s_rate = med(r["scroll"]["points"] / r["scroll"]["seconds"] for r in runs)
    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "points": args.points, "dim": args.dim, "runs": runs,
        "median_verify_points_per_s": round(v_rate),
        "median_verify_seconds": round(med(r["verify"]["seconds"] for r in runs), 3),
        "median_verify_peak_rss_mb": round(med(r["verify"]["peak_rss_mb"] for r in runs)),
        "median_scroll_points_per_s": round(s_rate),
        "median_scroll_peak_rss_mb": round(med(r["scroll"]["peak_rss_mb"] for r in runs)),
    }
    out_dir = HERE / "runs"
    out_dir.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%S")
    (out_dir / f"verify-{stamp}.json").write_text(json.dumps(summary, indent=2))
    print(textwrap.dedent(f"""\
        | points | dim | runs | full check (median) | peak RSS | bare scroll with vectors |
        |---|---|---|---|---|---|
        | {args.points:,} | {args.dim} | {args.runs} | {v_rate:,.0f} points/s ({summary['median_verify_seconds']} s) | {summary['median_verify_peak_rss_mb']} MB | {s_rate:,.0f} points/s ({summary['median_scroll_peak_rss_mb']} MB) |"""))


if __name__ == "__main__":
    main()
