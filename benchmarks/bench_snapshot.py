"""Snapshot and restore benchmark: a 100k-point KB with 384-d vectors in the embedded store.

Builds a synthetic KB once (Edge store + DuckDB manifest written directly, with unit
float32 vectors and payloads shaped like kbguard's: ~400 characters of chunk text each), then
times, through the library:

    snapshot   `create_snapshot`: points.parquet from the manifest while the shard files are
               copied, export the manifest tables, sha256 every file, rename into place
    scroll     the same snapshot with points.parquet read from the store (the path before,
               still taken when the manifest cannot say exactly what the store holds)
    restore    `restore(..., catch_up=False)` after the store and manifest are deleted: check
               the snapshot's checksums, copy the shard files into a staging shard (each
               checked against its sha256) and build the manifest, read every point back and
               compare it with the snapshot, switch over
    parquet    the same restore made to take the portable path (as for another engine
               version): the staging shard rebuilt point by point from points.parquet

and checks that the restored store holds every point; each run starts from the KB the
previous restore left. There is no corpus behind the synthetic
KB, so the catch-up rebuild is left out (it is an ordinary incremental rebuild).

    .venv/bin/python benchmarks/bench_snapshot.py --points 100000 --runs 3

Raw results go to benchmarks/runs/ (git-ignored); a Markdown summary is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from synthetic import write_synthetic_config

import kbguard.recovery.snapshot as snapshot_mod
import kbguard.store.edge as edge_mod
from kbguard.config import load_config
from kbguard.ingest.plan import point_payload
from kbguard.manifest import Manifest, vector_bytes, vector_checksum
from kbguard.recovery.restore import restore
from kbguard.recovery.snapshot import create_snapshot
from kbguard.store import (
    Point,
    store_for,
    vector_specs,
)

DIM = 384
PER_DOC = 100
WORDS = ["backup", "restore", "vector", "shard", "manifest", "chunk", "embedding", "corpus", "query", "index", "payload", "checksum", "parquet", "segment", "snapshot", "replica", "cluster", "migration", "schema", "rebuild"]


def build_kb(cfg, n: int, seed: int = 0) -> None:
    """Store and manifest of an n-point KB, consistent with each other."""
    rng = np.random.default_rng(seed)
    space = cfg.spaces[0]
    batch = 5000
    Manifest.open(cfg.manifest, kb=cfg.kb).close()   # the schema; the rows go in raw, in bulk
    with duckdb.connect(str(cfg.manifest)) as con, store_for(cfg) as store:
        store.create(vector_specs(cfg))
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            vecs = rng.normal(size=(hi - lo, DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            points, chunks, emb, state = [], [], [], []
            ts = dt.datetime.now(dt.UTC)
            for i in range(lo, hi):
                path = f"docs/doc{i // PER_DOC:05d}.md"
                words = rng.choice(WORDS, size=60)
                text = f"Chunk {i}: " + " ".join(words)
                h = f"{i:032x}"
                pid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{path}/{h}"))
                v = vecs[i - lo]
                points.append(Point(pid, {"local": v},
                                    point_payload(cfg.kb, path, h, 0, "Section", text)))
                chunks.append((pid, path, i % PER_DOC, h, 0, "Section", text, 70))
                blob = vector_bytes(v)
                emb.append((space.space_id, h, blob, vector_checksum(blob), ts, None, None))
                state.append((pid, path, h, "local", True, ts))
            store.upsert(points)
            store.flush()
            con.begin()
            con.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", chunks)
            con.executemany("INSERT INTO embeddings VALUES (?, ?, ?, ?, ?, ?, ?)", emb)
            con.executemany("INSERT INTO store_state VALUES (?, ?, ?, ?, ?, ?)", state)
            con.commit()
        docs = (n + PER_DOC - 1) // PER_DOC
        con.execute(
            "INSERT INTO documents (path, file_hash, size, mtime_ns, indexed_hash, status, "
            "error, chunks, updated_at) SELECT 'docs/doc' || lpad(i::VARCHAR, 5, '0') || '.md', "
            "md5(i::VARCHAR), 4096, 0, md5(i::VARCHAR), 'ok', NULL, ?, now() "
            "FROM range(?) t(i)", [PER_DOC, docs])


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_run(cfg, n: int) -> dict:
    """Snapshot the KB, delete store and manifest, restore: the KB is whole again after."""
    store_bytes = du(cfg.store_path)
    # the points read from the store, as before the manifest wrote them
    real_unrecorded = snapshot_mod._unrecorded
    snapshot_mod._unrecorded = lambda *a: "forced by the benchmark"
    try:
        t = time.perf_counter()
        old = create_snapshot(cfg)
        scroll_s = time.perf_counter() - t
    finally:
        snapshot_mod._unrecorded = real_unrecorded
    shutil.rmtree(old.path)
    t = time.perf_counter()
    snap = create_snapshot(cfg)
    snapshot_s = time.perf_counter() - t
    assert not snap.notes, snap.notes

    # today's path first: the snapshot's Parquet files rebuilt point by point (the shard
    # files are declared unusable by pretending another engine version is installed)
    shutil.rmtree(cfg.store_path)
    cfg.manifest.unlink()
    real_version = edge_mod.engine_version
    edge_mod.engine_version = lambda: "another"
    try:
        t = time.perf_counter()
        rep_pq = restore(cfg, snap.id, catch_up=False)
        parquet_s = time.perf_counter() - t
    finally:
        edge_mod.engine_version = real_version
    assert rep_pq.method == "parquet", rep_pq

    shutil.rmtree(cfg.store_path)
    cfg.manifest.unlink()
    t = time.perf_counter()
    rep = restore(cfg, snap.id, catch_up=False)
    restore_s = time.perf_counter() - t
    assert rep.method == "shard files", rep.notes
    with store_for(cfg) as store:
        assert store.count() == n, "the restored store lacks points"
    files = json.loads((Path(snap.path) / "snapshot.json").read_text())["snapshot"]["files"]
    shutil.rmtree(snap.path)
    return {
        "points": n, "store_bytes": store_bytes,
        "snapshot_s": round(snapshot_s, 2), "snapshot_points_per_s": round(n / snapshot_s),
        "snapshot_scroll_s": round(scroll_s, 2),
        "snapshot_scroll_points_per_s": round(n / scroll_s), "snapshot_scroll_stages": old.stages,
        "snapshot_bytes": snap.bytes, "snapshot_files": {k: v["bytes"] for k, v in files.items()},
        "restore_s": round(restore_s, 2), "restore_points_per_s": round(n / restore_s),
        "restore_stages": rep.stages, "snapshot_stages": snap.stages,
        "restore_parquet_s": round(parquet_s, 2),
        "restore_parquet_points_per_s": round(n / parquet_s),
        "restore_parquet_stages": rep_pq.stages,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="where to build the KBs (default: a temporary folder)")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(dir=workdir))
    runs = []
    try:
        cfg = load_config(write_synthetic_config(root, DIM))
        t = time.perf_counter()
        build_kb(cfg, args.points)
        print(f"built the KB in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        for _ in range(args.runs):
            r = one_run(cfg, args.points)
            print(json.dumps(r), file=sys.stderr)
            runs.append(r)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("snapshot_s", "snapshot_points_per_s", "snapshot_scroll_s",
                     "snapshot_scroll_points_per_s", "restore_s",
                     "restore_points_per_s", "restore_parquet_s",
                     "restore_parquet_points_per_s", "snapshot_bytes", "store_bytes")}
    stages = {k: statistics.median(r["restore_stages"][k] for r in runs)
              for k in runs[0]["restore_stages"]}
    snap_stages = {k: statistics.median(r["snapshot_stages"][k] for r in runs)
                   for k in runs[0]["snapshot_stages"]}
    pq_stages = {k: statistics.median(r["restore_parquet_stages"][k] for r in runs)
                 for k in runs[0]["restore_parquet_stages"]}
    load = os.getloadavg()
    record = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
              "python": platform.python_version(), "load_after_last_run": load,
              "median": med, "restore_stages_median": stages,
              "snapshot_stages_median": snap_stages,
              "restore_parquet_stages_median": pq_stages, "runs": runs}
    out = HERE / "runs"
    out.mkdir(exist_ok=True)
    name = f"snapshot-{record['date'].replace(':', '')}.json"
    (out / name).write_text(json.dumps(record, indent=2))
    mb = 2**20
    print(f"| {args.points} points, {DIM}-d | median of {args.runs} |\n|---|---|")
    print(f"| snapshot create | {med['snapshot_s']:.1f} s ({med['snapshot_points_per_s']:,.0f} "
          "points/s) |")
    print(f"| snapshot create, points read from the store (before) | "
          f"{med['snapshot_scroll_s']:.2f} s ({med['snapshot_scroll_points_per_s']:,.0f} "
          "points/s) |")
    print(f"| restore (check, build, verify, switch) | {med['restore_s']:.1f} s "
          f"({med['restore_points_per_s']:,.0f} points/s) |")
    print("| snapshot stages | " + ", ".join(f"{k} {v:.2f} s" for k, v in snap_stages.items())
          + " |")
    print("| restore stages | " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()) + " |")
    print(f"| restore from Parquet (another engine version) | {med['restore_parquet_s']:.1f} s "
          f"({med['restore_parquet_points_per_s']:,.0f} points/s) |")
    print("| its stages | " + ", ".join(f"{k} {v:.2f} s" for k, v in pq_stages.items()) + " |")
    print(f"| snapshot size on disk | {med['snapshot_bytes'] / mb:.0f} MiB (store folder "
          f"{med['store_bytes'] / mb:.0f} MiB) |")
    print(f"\nraw: benchmarks/runs/{name}; load average {load}")


if __name__ == "__main__":
    main()
