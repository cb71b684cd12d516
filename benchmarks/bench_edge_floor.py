"""The floor that Qdrant Edge's Python bindings set for verify and restore on this machine.

kbguard's verify must get every point's vector (bit for bit) and payload out of the engine;
its restore must put every point in and read it back. This script times only the calls that
any Python program doing that through `qdrant_edge` must make, on points shaped like
kbguard's (a canonical UUID id, one 384-d float32 vector, the six-key payload of
`kbguard.ingest.rebuild.point_payload` with ~60 words of text), and nothing of kbguard's own work:

- write: build the bindings' `Point` objects (vector as a float32 buffer, the fastest input
  the bindings take), `update` in batches of 1,024, `flush`;
- read: read the payload files ahead (as kbguard does), `load` the shard, `retrieve` every
  id in batches of 1,024 with payload and vector,
  touch each record's `id`, `vector` and `payload` (the getters build the Python objects),
  and pack each vector's list of floats into float32 bytes (`struct`, the fastest way found:
  see RESULTS-edge-floor.md).

Everything runs in one process with the shard's files in the page cache, the most favourable
case. The sum is an upper bound on what verify (read) and restore (write + read-back) can
reach through these bindings here, before any checking is done.

    .venv/bin/python benchmarks/bench_edge_floor.py --points 100000 --runs 5
"""

from __future__ import annotations

import argparse
import array
import datetime as dt
import gc
import os
import platform
import shutil
import statistics
import struct
import tempfile
import threading
import time
import timeit
import uuid
from pathlib import Path

import numpy as np

BATCH = 1024


def make_points(n: int, dim: int, seed: int) -> tuple[list[str], np.ndarray, list[dict]]:
    from kbguard.ingest.plan import point_payload

    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=int(x))) for x in rng.integers(1, 2**62, size=n)]
    vocab = [f"w{i}" for i in range(5000)]
    payloads = []
    for i in range(n):
        words = " ".join(vocab[j] for j in rng.integers(0, len(vocab), size=60))
        payloads.append(point_payload("bench", f"docs/d{i // 100}.md", f"{i:032x}", 0,
                                      "Synthetic", words))
    return ids, vecs, payloads


def read_ahead(path: Path) -> None:
    """Read the payload files front to back first, as kbguard's Edge adapter does
    (`EdgeStore.will_read_all`): the engine's first retrieve of every point is then ~2.5x
    faster, even with the files already in the page cache."""
    buf = bytearray(1 << 20)
    for f in path.glob("segments/*/payload_storage/*"):
        if f.is_file():
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def one_run(root: Path, ids: list[str], vecs: np.ndarray, payloads: list[dict]) -> dict:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeShard,
        EdgeVectorParams,
        Point,
        ScrollRequest,
        UpdateOperation,
    )

    path = root / "shard"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir()
    dim = vecs.shape[1]
    cfg = EdgeConfig(vectors={"v": EdgeVectorParams(size=dim, distance=Distance.Cosine)})
    shard = EdgeShard.create(str(path), cfg)
    n = len(ids)
    out: dict[str, float] = {}

    t = time.perf_counter()
    build = upd = 0.0
    for lo in range(0, n, BATCH):
        t0 = time.perf_counter()
        batch = [Point(ids[i], {"v": memoryview(vecs[i])}, payloads[i])
                 for i in range(lo, min(lo + BATCH, n))]
        t1 = time.perf_counter()
        shard.update(UpdateOperation.upsert_points(batch))
        upd += time.perf_counter() - t1
        build += t1 - t0
    t0 = time.perf_counter()
    shard.flush()
    shard.close()
    out["build_points"] = build
    out["update"] = upd
    out["flush_close"] = time.perf_counter() - t0
    out["write"] = time.perf_counter() - t
    # The same objects without their payloads: what the payload conversion costs.
    t0 = time.perf_counter()
    for lo in range(0, n, BATCH):
        [Point(ids[i], {"v": memoryview(vecs[i])}, {}) for i in range(lo, min(lo + BATCH, n))]
    out["build_points_without_payload"] = time.perf_counter() - t0

    t = time.perf_counter()
    read_ahead(path)
    shard = EdgeShard.load(str(path))
    out["load"] = time.perf_counter() - t
    pack = struct.Struct(f"<{dim}f").pack
    ret = get = conv = 0.0
    for lo in range(0, n, BATCH):
        t0 = time.perf_counter()
        records = shard.retrieve(ids[lo:lo + BATCH], True, True)
        t1 = time.perf_counter()
        got = [(r.id, r.vector, r.payload) for r in records]
        t2 = time.perf_counter()
        b"".join([pack(*v["v"]) for _, v, _ in got])
        t3 = time.perf_counter()
        ret += t1 - t0
        get += t2 - t1
        conv += t3 - t2
        del records, got
    out["retrieve"] = ret
    out["getters"] = get
    out["pack"] = conv
    out["read"] = out["load"] + ret + get + conv

    # The same read as one scroll through the shard in pages of 1,024 (no ids to pass in),
    # after reloading the shard so that nothing of the first read is reused.
    shard.close()
    t = time.perf_counter()
    read_ahead(path)
    shard = EdgeShard.load(str(path))
    offset, seen = None, 0
    while True:
        records, offset = shard.scroll(ScrollRequest(offset=offset, limit=BATCH,
                                                     with_payload=True, with_vector=True))
        got = [(r.id, r.vector, r.payload) for r in records]
        b"".join([pack(*v["v"]) for _, v, _ in got])
        seen += len(got)
        del records, got
        if offset is None:
            break
    assert seen == n, (seen, n)
    out["read_by_scroll"] = time.perf_counter() - t

    # Could a second thread overlap the engine's reads with Python work? Time the retrieve of
    # the first ten batches alone, then while another thread runs Python code.
    some = [ids[lo:lo + BATCH] for lo in range(0, min(n, 10 * BATCH), BATCH)]
    t = time.perf_counter()
    for chunk in some:
        shard.retrieve(chunk, True, True)
    out["retrieve_10_batches"] = time.perf_counter() - t
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    other = threading.Thread(target=busy)
    other.start()
    t = time.perf_counter()
    for chunk in some:
        shard.retrieve(chunk, True, True)
    out["retrieve_10_batches_beside_python"] = time.perf_counter() - t
    stop.set()
    other.join()
    shard.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ids, vecs, payloads = make_points(args.points, args.dim, args.seed)
    # The inputs are kept alive for the whole run; keep the cyclic GC from walking them, so
    # that only the bindings' own objects are counted.
    gc.collect()
    gc.freeze()
    runs = []
    with tempfile.TemporaryDirectory(prefix="kbguard-floor-") as tmp:
        for i in range(args.runs):
            r = one_run(Path(tmp), ids, vecs, payloads)
            r["load_avg_1m"] = os.getloadavg()[0]
            runs.append(r)
            print(f"run {i + 1}: write {r['write']:.2f} s, read {r['read']:.2f} s, "
                  f"load {r['load_avg_1m']:.2f}", flush=True)

    n = args.points
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    loads = [r["load_avg_1m"] for r in runs]
    print()
    print(f"{n:,} points, {args.dim}-d, {args.runs} runs, {dt.date.today()}, "
          f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
          f"load {min(loads):.2f}-{max(loads):.2f}")
    print()
    print("| step | median s | µs per point |")
    print("|---|---|---|")
    for k in ("build_points", "build_points_without_payload", "update", "flush_close", "write",
              "load", "retrieve", "getters", "pack", "read", "read_by_scroll"):
        print(f"| {k} | {med[k]:.3f} | {med[k] / n * 1e6:.1f} |")
    best_read = min(med["read"], med["read_by_scroll"])
    read_rate = n / best_read
    restore_rate = n / (med["write"] + best_read)
    print()
    print(f"read floor (verify can at best reach): {read_rate:,.0f} points/s")
    print(f"write + read-back floor (restore can at best reach): {restore_rate:,.0f} points/s")
    print(f"write alone, no read-back: {n / med['write']:,.0f} points/s")
    print(f"retrieve of 10 batches: {med['retrieve_10_batches']:.3f} s alone, "
          f"{med['retrieve_10_batches_beside_python']:.3f} s beside a thread running Python")
    print()
    print("a list of floats (as Record.vector gives it) to float32 bytes, per vector:")
    values = [float(x) for x in vecs[0]]
    packer = struct.Struct(f"<{len(values)}f")
    dim = len(values)
    for name, fn in (("struct.pack", lambda: packer.pack(*values)),
                     ("np.fromiter", lambda: np.fromiter(values, np.float32, dim).tobytes()),
                     ("array.array", lambda: array.array("f", values).tobytes()),
                     ("np.array", lambda: np.array(values, np.float32).tobytes())):
        best = min(timeit.repeat(fn, number=20_000, repeat=3)) / 20_000
        print(f"  {name}: {best * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
