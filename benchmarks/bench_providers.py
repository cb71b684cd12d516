"""Provider benchmark: embedding throughput through kbguard's provider transport, and failover times.

Against tests/openai_server.py (a real HTTP server on 127.0.0.1, in its own process so that it
does not share the client's interpreter), every request answered after ``--latency-ms`` (100):

* throughput: one ``OpenAIProvider.embed`` call of ``rounds x concurrency x batch`` texts at
  concurrency 1, 4, 16 (and 8, 32 to show where the machine saturates), against the target
  0.8 x concurrency x batch / latency; the same at concurrency 32 without added latency gives
  the machine's own ceiling (server and client on the same cores);
* failover, default settings (timeout_s 30, max_retries 2, breaker after 3 failed requests):
  the time from the first failed request to the first batch served by the next provider (a
  local fake standby) when the primary is killed (connection refused) or answers 503; with a hang,
  with timeout_s 1 (median of runs) and once with the default 30 s (one wall-clock deadline for the call, retries
  included: ~30 s), with
  the next batch's time (the breaker is open by then);
* with the breaker open: the time per batch, and the chain's own overhead over the standby.

    .venv/bin/python benchmarks/bench_providers.py --runs 3

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
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import OpenAIServer

from kbguard.config import SpaceConfig
from kbguard.providers import (
    LocalProvider,
    OpenAIProvider,
    OpenAIProviderSettings,
    ProviderChain,
)
from kbguard.providers.local import FakeEmbedder

SPACE = SpaceConfig(name="primary", provider="fake", model="text-embedding-3-small", dim=256)
WORDS = ["key", "rotation", "vector", "store", "manifest", "chunk", "embedding", "cache",
         "snapshot", "restore", "verify", "shard", "point", "payload", "query", "rebuild",
         "corpus", "document", "section", "token", "model", "space"]


def texts(n: int, start: int = 0) -> list[str]:
    """~30-word texts, all different."""
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(29)) + f" #{i}"
            for i in range(start, start + n)]


def serve(latency_ms: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_server.py"),
                             "--latency-ms", str(latency_ms), "--fast"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def settings(url: str, **kw: Any) -> OpenAIProviderSettings:
    return OpenAIProviderSettings(base_url=url, **kw)


def throughput(url: str, concurrency: int, batch: int, rounds: int) -> float:
    p = OpenAIProvider(SPACE, settings(url, concurrency=concurrency, max_batch_texts=batch))
    p.embed(texts(concurrency * batch, start=10**6))  # warm: tokenizer, connections
    work = texts(rounds * concurrency * batch)
    t = time.perf_counter()
    p.embed(work)
    took = time.perf_counter() - t
    p.close()
    return len(work) / took


def failover(kind: str, timeout_s: float = 30.0) -> float:
    """Seconds from the first failed request to the first batch served by the standby."""
    return failover_and_next(kind, timeout_s)[0]


def failover_and_next(kind: str, timeout_s: float = 30.0) -> tuple[float, float]:
    """The failover time, and the time of the batch after it (breaker open by then)."""
    with OpenAIServer() as server:
        primary = OpenAIProvider(SPACE, settings(server.url, timeout_s=timeout_s))
        chain = ProviderChain(SPACE, [primary, LocalProvider(FakeEmbedder(SPACE), "fake")])
        batch = texts(32)
        assert chain.embed(batch).provider_index == 0  # probes done, connection open
        if kind == "killed":
            server.stop()
        elif kind == "503":
            server.fail("status", times=100, code=503)
        else:
            server.fail("hang", times=100, seconds=timeout_s * 5)
        t = time.perf_counter()
        got = chain.embed(batch)
        took = time.perf_counter() - t
        assert got.provider_index == 1, got
        t = time.perf_counter()
        assert chain.embed(texts(32, start=32)).provider_index == 1
        after = time.perf_counter() - t
        primary.close()
        return took, after


def breaker_open(batches: int = 50) -> dict[str, float]:
    """Per-batch seconds once the breaker is open, and the same batches on the standby alone."""
    with OpenAIServer() as server:
        standby = LocalProvider(FakeEmbedder(SPACE), "fake")
        chain = ProviderChain(SPACE, [OpenAIProvider(SPACE, settings(server.url)), standby])
        chain.check_agreement()
        server.stop()
        while chain.breakers[0].state != "open":
            chain.embed(texts(32))
        per_chain, per_alone = [], []
        for i in range(batches):
            work = texts(32, start=i * 32)
            t = time.perf_counter()
            got = chain.embed(work)
            per_chain.append(time.perf_counter() - t)
            assert got.provider_index == 1
            t = time.perf_counter()
            standby.embed(work)
            per_alone.append(time.perf_counter() - t)
        return {"per_batch_s": statistics.median(per_chain),
                "standby_alone_s": statistics.median(per_alone),
                "max_per_batch_s": max(per_chain)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--skip-default-hang", action="store_true",
                    help="skip the one ~90 s failover from a hang with default settings")
    args = ap.parse_args()
    lat = args.latency_ms / 1000
    result: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "load_before": os.getloadavg()[0], "latency_ms": args.latency_ms, "batch": args.batch,
        "rounds": args.rounds, "dim": SPACE.dim,
    }
    rows: list[dict[str, Any]] = []
    proc, url = serve(args.latency_ms)
    try:
        for c in (1, 4, 8, 16, 32):
            runs = [throughput(url, c, args.batch, args.rounds) for _ in range(args.runs)]
            target = 0.8 * c * args.batch / lat
            rows.append({"concurrency": c, "texts_per_s": statistics.median(runs),
                         "runs": runs, "target": target})
    finally:
        proc.terminate()
        proc.wait()
    proc, url = serve(0)
    try:
        ceiling = [throughput(url, 32, args.batch, args.rounds) for _ in range(args.runs)]
    finally:
        proc.terminate()
        proc.wait()
    result["throughput"] = rows
    result["ceiling_no_latency_c32"] = {"texts_per_s": statistics.median(ceiling),
                                        "runs": ceiling}
    fo: dict[str, list[float]] = {kind: [failover(kind) for _ in range(args.runs)] for kind in ("killed", "503")}
    fo["hang_timeout_1s"] = [failover("hang", timeout_s=1.0) for _ in range(args.runs)]
    if not args.skip_default_hang:
        # ~3 x 30 s: measured once
        fo["hang_default"], fo["hang_default_next_batch"] = map(list, zip(failover_and_next("hang")))
    result["failover_s"] = {k: {"median": statistics.median(v), "runs": v} for k, v in fo.items()}
    result["breaker_open"] = [breaker_open() for _ in range(args.runs)]
    result["load_after"] = os.getloadavg()[0]

    out = HERE / "runs" / f"providers-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"# providers benchmark, {result['date']}, load {result['load_before']:.2f} -> "
          f"{result['load_after']:.2f}\n")
    print(f"latency {args.latency_ms:g} ms per request, batch {args.batch} texts, "
          f"{SPACE.dim}-d base64 answers, median of {args.runs} runs\n")
    print("| concurrency | texts/s (median) | runs | target 0.8 x c x batch / latency | met |")
    print("|---|---|---|---|---|")
    for r in rows:
        runs_text = ", ".join(f"{x:,.0f}" for x in r["runs"])
        print(f"| {r['concurrency']} | **{r['texts_per_s']:,.0f}** | {runs_text} | "
              f"{r['target']:,.0f} | {'yes' if r['texts_per_s'] >= r['target'] else 'no'} |")
    c = result["ceiling_no_latency_c32"]
    print(f"\nno added latency, concurrency 32: {c['texts_per_s']:,.0f} texts/s "
          "(the machine's ceiling for server + client)\n")
    print("| failover (default settings unless named) | median s | runs |")
    print("|---|---|---|")
    for k, v in result["failover_s"].items():
        print(f"| {k} | **{v['median']:.3f}** | {', '.join(f'{x:.3f}' for x in v['runs'])} |")
    b = result["breaker_open"]
    per = statistics.median(x["per_batch_s"] for x in b)
    alone = statistics.median(x["standby_alone_s"] for x in b)
    worst = max(x["max_per_batch_s"] for x in b)
    print(f"\nbreaker open: {per * 1000:.2f} ms per 32-text batch (standby alone "
          f"{alone * 1000:.2f} ms, worst {worst * 1000:.2f} ms)")
    print(f"\nraw: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
