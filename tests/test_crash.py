"""A rebuild killed with SIGKILL at any moment: the next one completes, embeds no cached text,
and the store equals a clean build's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kbtest import KB, edit_corpus, make_kb, manifest_chunk_ids, manifest_sql, store_contents

pytestmark = pytest.mark.slow  # every test here runs kbguard in a process it kills

BATCH = 8  # the embedding batch of the test configs (kbtest.write_config)


def _cached(cfg) -> set[str]:
    return {r[0] for r in manifest_sql(cfg.manifest, "SELECT content_hash FROM embeddings")}


def _distinct_hashes(cfg) -> set[str]:
    return {r[0] for r in manifest_sql(cfg.manifest, "SELECT DISTINCT content_hash FROM chunks")}


def _runs(cfg) -> list[tuple[str, str, bool]]:
    """(kind, status, finished) of every run, oldest first."""
    return [(kind, status, finished is not None) for kind, status, finished in manifest_sql(
        cfg.manifest, "SELECT kind, status, finished_at FROM runs ORDER BY run_id")]


def _store_state(cfg) -> dict[str, bool]:
    """point id -> confirmed, as the manifest records the store."""
    return dict(manifest_sql(cfg.manifest, "SELECT point_id, confirmed FROM store_state"))


def _chunk_paths(cfg) -> set[str]:
    return {r[0] for r in manifest_sql(cfg.manifest, "SELECT DISTINCT path FROM chunks")}


CRASH_POINTS = ["parse-commit:1", "embed-batch:3", "store-upsert:2", "store-delete:1"]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_at_a_crash_point_then_rerun(built_kb, clean_edited_build, crash_at: str) -> None:
    # Build the original corpus, change it, then kill the update at the crash point. For the
    # delete point there must be something to delete, which only the update has.
    kb = built_kb(docs=8)
    before_ids = manifest_chunk_ids(kb.cfg)
    cached_before = _cached(kb.cfg)
    edit_corpus(kb, extra_docs=3)
    killed = kb.subprocess("rebuild", "--quiet", env={"KBGUARD_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)

    # The kill landed inside the update: its run started and never finished, and the
    # manifest stands exactly where the crash point says.
    assert _runs(kb.cfg) == [("rebuild", "ok", True), ("rebuild", "running", False)]
    cached = _cached(kb.cfg)
    missing = _distinct_hashes(kb.cfg) - cached
    state = _store_state(kb.cfg)
    wanted = manifest_chunk_ids(kb.cfg)
    if crash_at == "parse-commit:1":
        assert {"new.md", "added/extra0.md"} <= _chunk_paths(kb.cfg)  # the parse is committed
        assert cached == cached_before and missing                     # nothing embedded yet
        assert set(state) == before_ids and all(state.values())        # the store untouched
    elif crash_at == "embed-batch:3":
        assert len(cached - cached_before) == 3 * BATCH                # three batches cached
        assert missing                                                 # the rest still to do
        assert set(state) == before_ids and all(state.values())
    elif crash_at == "store-upsert:2":
        assert not missing
        pending = {pid for pid, confirmed in state.items() if not confirmed}
        assert pending and pending <= wanted                           # written, unconfirmed
        assert pending <= set(store_contents(kb.cfg))
    else:  # store-delete:1: deleted from the store, still remembered by the manifest
        assert all(state.values())
        leftover = set(state) - wanted
        assert leftover and not leftover & set(store_contents(kb.cfg))

    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == len(missing)
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)
    assert store_contents(kb.cfg) == clean_edited_build(docs=8, extra_docs=3)

    again = kb.cli_json("rebuild")
    assert again["chunks"]["embedded"] == 0 and again["chunks"]["written"] == 0


# A moment is the progress line a stage prints on stderr, then a pause: the kill lands
# somewhere inside that stage, not at a commit boundary as a crash point does. upsert_batch = 4
# makes the write stage long enough to be hit before the run ends.
KILL_MOMENTS = [("scan", 0.0), ("parse", 0.3), ("embed local", 0.0), ("write points", 0.05)]


@pytest.mark.parametrize("stage, pause", KILL_MOMENTS, ids=["scan", "parse", "embed", "write"])
def test_sigkill_inside_each_stage_of_a_first_build(tmp_path: Path, clean_edited_build,
                                                   stage: str, pause: float) -> None:
    kb = make_kb(tmp_path, docs=8, upsert_batch=4)
    edit_corpus(kb, extra_docs=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbguard", "rebuild", "--config", str(kb.config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line.strip())
        if line.split(":")[0].strip() == stage:
            break
    time.sleep(pause)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen   # it was still running when killed
    _assert_killed_mid_run(kb, stage, seen)

    cached = _cached(kb.cfg)
    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == len(_distinct_hashes(kb.cfg) - cached)
    assert store_contents(kb.cfg) == clean_edited_build(docs=8, extra_docs=3)


def _assert_killed_mid_run(kb: KB, stage: str, seen: list[str]) -> None:
    assert seen and seen[-1].split(":")[0] == stage, seen  # the stage was reached
    assert _runs(kb.cfg) == [("rebuild", "running", False)]
    if stage in ("embed local", "write points"):
        assert len(_chunk_paths(kb.cfg)) == 11                # the parse stage was committed
    if stage == "write points":
        assert not _distinct_hashes(kb.cfg) - _cached(kb.cfg)  # every text embedded
        state = _store_state(kb.cfg)
        assert sum(state.values()) < len(manifest_chunk_ids(kb.cfg))  # not every point written


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc (a process gone while it is read is skipped)."""
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text[text.rindex(")") + 2:].split()[1])
        out.setdefault(ppid, []).append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it to reap it."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def test_sigkill_mid_parse_leaves_no_worker_behind(tmp_path: Path) -> None:
    """The OOM killer or a scheduler's timeout SIGKILLs a rebuild while its parse workers run:
    every process it started ends with it, none is left waiting for work that never comes."""
    kb = make_kb(tmp_path, docs=120, workers=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbguard", "rebuild", "--quiet", "--config", str(kb.config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        spawned: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            spawned = _descendants(proc.pid)
            # two parse workers and the resource tracker that multiprocessing starts beside them
            if len(spawned) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(spawned) >= 3, "the rebuild never started its workers"
        time.sleep(0.5)                 # let the workers get into their imports or parsing
        spawned |= _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL  # it was still parsing when killed

        deadline = time.monotonic() + 5
        left = spawned
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = {pid for pid in spawned if _alive(pid)}
        assert not left, f"processes of the killed rebuild still running: {sorted(left)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
