"""Query failover: how long `kbguard search` takes to answer from the local standby when the
primary space's API is down, against the same search with the API up.

A KB of 40 documents with two spaces (``primary``: text-embedding-3-small through
tests/openai_server.py on 127.0.0.1 with default provider settings; ``local``: the fake
embedder), built once. Each measured search starts with fresh provider chains, as a new
``kbguard search`` process would (closed breakers), and is timed through the library call the
command makes. Cases: API up; API stopped (connection refused); API hanging (no answer), with
the default ``search.query_timeout_s`` of 5 s. Medians of ``--runs``.

    .venv/bin/python benchmarks/bench_query_failover.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import kbguard
from kbguard import providers
from tests.openai_server import OpenAIServer
from tests.test_spaces import KEY, api_kb

QUERY = "Document 7 part 2 topic2"


def timed_search(cfg: kbguard.Config) -> tuple[float, kbguard.SearchResult]:
    providers.forget_chains()
    started = time.perf_counter()
    result = kbguard.search_kb(cfg, QUERY)
    return time.perf_counter() - started, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.environ.update({"KBG_EMBED_KEY": KEY, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    root = Path(tempfile.mkdtemp(prefix="kbguard-qf-"))
    rows = []
    with OpenAIServer(api_key=KEY) as server:
        kb = api_kb(root, server.url, docs=40)
        # the defaults for timeout_s and max_retries, as a new config has them
        kb.config_path.write_text(kb.config_path.read_text().replace(
            "max_retries = 0\ntimeout_s = 2\n", ""))
        cfg = kb.cfg
        assert kbguard.rebuild_kb(cfg).complete
        up = [timed_search(cfg) for _ in range(args.runs)]
        assert all(r.space == "primary" and not r.degraded for _, r in up)
        rows.append(("API up", [t for t, _ in up], up[0][1]))
        server.fail("hang", times=10_000, seconds=60)
        hung = [timed_search(cfg) for _ in range(args.runs)]
        rows.append(("API hangs (query_timeout_s = 5)", [t for t, _ in hung], hung[0][1]))
        server.clear_faults()
    down = [timed_search(cfg) for _ in range(args.runs)]  # the server is stopped now
    rows.append(("API stopped (connection refused)", [t for t, _ in down], down[0][1]))
    load = os.getloadavg()[0]
    print(f"{platform.node()} {os.cpu_count()} CPUs, load {load:.1f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| primary | answered by | median s | runs |\n|---|---|---|---|")
    for name, times, result in rows:
        print(f"| {name} | {result.space}{' (degraded)' if result.degraded else ''} | "
              f"**{statistics.median(times):.3f}** | {', '.join(f'{t:.3f}' for t in times)} |")


if __name__ == "__main__":
    main()
