"""A KB stays available while a rebuild writes it: `status` shows the run's progress and
`search` answers from the store as the rebuild has it, on both store backends; a command that
serves no reads still keeps the KB busy (exit 3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from kbguard.core.lock import kb_lock
from kbguard.kb.read_service import SharedStore
from kbguard.store import Point, VectorSpec, open_store
from tests.kbtest import KB, api_kb, edit_corpus, make_kb, manifest_chunk_ids
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.slow  # each test holds a real rebuild in another process


@contextmanager
def paused_rebuild(kb: KB, at: str, *args: str) -> Iterator[subprocess.Popen]:
    """`kbguard rebuild` in another process, held at the point ``at`` (kbguard.core.faults) while
    the block runs, then let go; the block's caller checks how it ended."""
    flag = kb.root / "rebuild-paused"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbguard", "rebuild", "--quiet", *args, "--config",
         str(kb.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KBGUARD_PAUSE_AT": at, "KBGUARD_PAUSE_FILE": str(flag)})
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            if proc.poll() is not None:
                pytest.fail(f"the rebuild ended before {at}: {proc.communicate()}")
            assert time.monotonic() < deadline, f"the rebuild never reached {at}"
            time.sleep(0.05)
        yield proc
    finally:
        flag.unlink(missing_ok=True)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def _point_ids(results: list[dict]) -> set[str]:
    return {r["point_id"] for r in results}


@pytest.mark.parametrize("at, stage", [("parse-commit:1", "parse"),
                                       ("store-upsert:1", "write points")],
                         ids=["parsing", "writing"])
def test_status_and_search_answer_while_a_rebuild_runs(built_kb, tmp_path: Path, backend: str,
                                                      at: str, stage: str) -> None:
    kb = built_kb(tmp_path / "kb", backend=backend, docs=8)
    before = manifest_chunk_ids(kb.cfg)
    query = "Paragraph 2 of part 1 in Document 3 topic1"
    as_built = kb.cli_json("search", query, "-k", "8")["results"]
    edit_corpus(kb, extra_docs=3)

    with paused_rebuild(kb, at) as proc:
        res = kb.cli("status", "--json")
        assert res.code == 0, (res.stdout, res.stderr, res.exception)
        status = json.loads(res.stdout)
        run = status["rebuild"]
        assert run["pid"] == proc.pid and run["kind"] == "rebuild"
        assert run["run_id"] == status["last_run"]["run_id"] == 2
        assert status["last_run"]["status"] == "running"
        assert run["stage"] == stage and run["stages"][0]["name"] == "scan"
        current = run["stages"][-1]
        assert current["total"] == (5 if stage == "parse" else current["total"]) > 0
        assert 0 <= current["done"] <= current["total"]
        assert "pending" not in status   # the corpus is what the rebuild indexes now
        assert status["store"]["points"] >= len(before)
        assert status["counts"]["documents"] >= 8

        text = kb.cli("status")
        assert text.code == 0 and f"rebuild    running now (pid {proc.pid}, run #2" in text.stdout

        res = kb.cli("search", query, "-k", "8", "--json")
        assert res.code == 0, (res.stdout, res.stderr, res.exception)
        found = json.loads(res.stdout)
        assert found["rebuild"]["run_id"] == 2 and found["space"] == "local"
        assert found["results"]
        if stage == "parse":   # nothing written yet: the store as it was
            assert found["results"] == as_built
        else:
            during = _point_ids(found["results"])

        busy = kb.cli("runbook")
        assert busy.code == 3 and "This KB is busy: `kbguard rebuild`" in busy.stderr

    assert proc.returncode == 0, proc.stderr
    if stage != "parse":   # points of the store as it was, or as the rebuild wrote it
        assert during <= before | manifest_chunk_ids(kb.cfg)
    after = kb.cli_json("status")
    assert "rebuild" not in after and after["last_run"]["status"] == "ok"
    assert kb.cli_json("search", query)["results"]


def test_a_first_build_has_nothing_to_search_until_it_writes(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=8)
    with paused_rebuild(kb, "embed-batch:1") as proc:
        res = kb.cli("search", "Document 1", "--json")
        assert res.code == 3, (res.stdout, res.stderr)
        assert json.loads(res.stdout)["exit_code"] == 3
        assert "has nothing to search yet: the running rebuild" in res.stderr
        assert "at stage embed local" in res.stderr
        status = kb.cli_json("status")
        assert status["rebuild"]["stage"] == "embed local"
        assert status["store"]["exists"] is False
    assert proc.returncode == 0, proc.stderr


def test_search_answers_from_the_standby_while_a_rebuild_runs_in_an_outage(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url, docs=8)
    assert kb.cli("rebuild", "--json").code == 0
    edit_corpus(kb, extra_docs=3)
    server.fail("status", times=100_000, code=503)   # the primary's API is down
    with paused_rebuild(kb, "store-upsert:1") as proc:
        res = kb.cli("search", "Paragraph 1 of part 2 in Extra 1", "--json")
        assert res.code == 0, (res.stdout, res.stderr, res.exception)
        found = json.loads(res.stdout)
        assert (found["space"], found["degraded"]) == ("local", True)
        assert found["rebuild"]["stage"] == "write points"
        assert found["results"]
        # new points are written with the standby's vector only: the rebuild reports them
        passed = {p["space"]: p["reason"] for p in found["passed_over"]}
        assert "points in the store have no vector in it yet" in passed["primary"]
    assert proc.returncode == 4, proc.stderr   # done, the primary space behind


@pytest.mark.parametrize("holder", ["snapshot create", "verify", "restore"])
def test_a_command_that_serves_no_reads_keeps_the_kb_busy(built_kb, holder: str) -> None:
    kb = built_kb()
    with kb_lock(kb.cfg.manifest, holder):
        for args in (["status"], ["search", "Document 1"]):
            res = kb.cli(*args, "--json")
            assert res.code == 3, (args, res.stdout, res.stderr)
            assert f"This KB is busy: `kbguard {holder}`" in res.stderr
            assert json.loads(res.stdout)["exit_code"] == 3
    assert kb.cli("status").code == 0


def test_the_shared_store_serialises_a_qdrant_local_store(tmp_path: Path) -> None:
    # qdrant-client's local mode fails under a query during an upsert (numpy shape errors);
    # through SharedStore every call of both threads is whole
    store = SharedStore(open_store("qdrant", path=tmp_path / "store", collection="c"))
    store.create([VectorSpec("v", 16)])
    rng = np.random.default_rng(0)
    errors: list[BaseException] = []
    done = threading.Event()

    def query() -> None:
        while not done.is_set():
            try:
                store.query("v", rng.standard_normal(16).astype(np.float32), 3)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    reader = threading.Thread(target=query)
    reader.start()
    try:
        for batch in range(20):
            store.upsert([Point(f"00000000-0000-0000-0000-{batch:06d}{i:06d}",
                                {"v": rng.standard_normal(16).astype(np.float32)}, {"i": i})
                          for i in range(64)])
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:3]
    assert store.count() == 20 * 64
    store.close()


@contextmanager
def manifest_held_open(kb: KB, seconds: float) -> Iterator[subprocess.Popen]:
    """Another process holding the manifest open to read for ``seconds``, as a `status` or a
    `search` does for a moment (DuckDB then lets no other process open it)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time\n"
         f"con = duckdb.connect({str(kb.cfg.manifest)!r}, read_only=True)\n"
         f"print('open', flush=True)\ntime.sleep({seconds})\n"],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_rebuild_waits_for_a_reader_that_holds_the_manifest(built_kb) -> None:
    kb = built_kb()
    edit_corpus(kb)
    with manifest_held_open(kb, 1.5):
        started = time.monotonic()
        res = kb.cli("rebuild", "--json")
        assert res.code == 0, (res.stdout, res.stderr, res.exception)
        assert time.monotonic() - started >= 1.0   # it waited for the reader
    assert json.loads(res.stdout)["documents"]["added"] == 1


def test_a_reader_that_never_lets_go_is_named_not_the_rebuild_itself(
        built_kb, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbguard.manifest import connection

    kb = built_kb()
    monkeypatch.setattr(connection, "WRITER_WAITS_S", 0.3)
    with manifest_held_open(kb, 60):
        res = kb.cli("rebuild", "--json")
    assert res.code == 3, (res.stdout, res.stderr)
    assert f"The manifest {kb.cfg.manifest} is open in another process" in res.stderr
    assert "This KB is busy: `kbguard rebuild`" not in res.stderr   # not itself
