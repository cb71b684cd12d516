"""`kbguard drill`: every drill passes on a sample KB and leaves the live KB as it was; a
drill refuses a scratch folder inside the KB, a full scratch disk and a run over its spending
ceiling before it copies anything, embeds each text once per run, and is not failed by corpus
changes not yet indexed.

The full KB lives in a real git repository with its corpus and a snapshot tracked by DVC on a
local-folder remote; its primary space embeds through a real OpenAI-compatible server on
127.0.0.1 (tests/openai_server.py) with a local standby space, so every drill can run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb
import pytest

from kbguard.manifest import Manifest
from kbguard.operations.drill import SCENARIOS
from tests.kbtest import (
    BACKENDS,
    DVC,
    KB,
    api_kb,
    api_spaces,
    edit_corpus,
    fill,
    git_dvc_repo,
    make_kb,
    tmpfs,
    write_config,
)
from tests.openai_server import OpenAIServer

CANARY = "Paragraph 0 of part 1 in Document 1 talks about topic1 and item0."


def live_state(kb: KB) -> dict[str, str]:
    """sha256 of every file of the store and the snapshots, and of every manifest table's rows
    but the drill history's: what a drill must leave exactly as it was."""
    cfg = kb.cfg
    out: dict[str, str] = {}
    for root in (cfg.store_path, cfg.snapshot_root):
        assert root is not None
        for p in sorted(root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(kb.root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    con = duckdb.connect(str(cfg.manifest), read_only=True)
    try:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()]
        for t in tables:
            if t == "drills":
                continue
            rows = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"').fetchall())
            out[f"manifest:{t}"] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    finally:
        con.close()
    assert any(k.startswith("manifest:chunks") for k in out) and len(out) > 8
    return out


def history(kb: KB) -> list[dict]:
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        return m.drills.history()


def repo_kb(root: Path, url: str) -> tuple[KB, str]:
    """A built KB whose config, corpus and newest snapshot can come back from git and DVC alone:
    an API primary and a local standby, a canary, the corpus `dvc add`ed and pushed, a snapshot
    made with --dvc-push, all committed. Returns the KB and its commit."""
    kb = make_kb(root)
    write_config(kb.config_path, Path("corpus"))   # relative: it must hold in a clone too
    text = kb.config_path.read_text()
    head, _, rest = text.partition("[[spaces]]")
    kb.config_path.write_text(
        head + api_spaces(url) + rest[rest.index("[store]"):]
        + f'[[canaries]]\nquery = "{CANARY}"\nexpect = ["doc1.md"]\nk = 5\nspace = "primary"\n')
    run = git_dvc_repo(root)
    run(*DVC, "remote", "add", "-d", "store", str(root.parent / "remote"))
    (root / ".gitignore").write_text("/state/*\n!/state/snapshots/\n")
    run(*DVC, "add", "-q", "corpus")
    kb.cli_json("rebuild")
    kb.cli_json("snapshot", "create", "--dvc-push")
    run(*DVC, "push", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "the KB")
    commit = run("git", "rev-parse", "HEAD").stdout.decode().strip()
    return kb, commit


@pytest.mark.slow
def test_every_drill_passes_and_leaves_the_live_kb_untouched(tmp_path: Path,
                                                             server: OpenAIServer) -> None:
    kb, commit = repo_kb(tmp_path / "repo", server.url)
    before = live_state(kb)
    requests_before = len(server.embedding_requests)

    res = kb.cli("drill", "--json")
    report = json.loads(res.stdout)
    assert res.code == 0, json.dumps(report, indent=1)
    assert report["passed"] is True and report["exit_code"] == 0
    assert [d["scenario"] for d in report["drills"]] == list(SCENARIOS)
    assert {d["scenario"]: d["status"] for d in report["drills"]} == \
        {s: "passed" for s in SCENARIOS}
    assert live_state(kb) == before

    rows = {r["scenario"]: r for r in history(kb)}
    assert set(rows) == set(SCENARIOS)
    md5 = re.search(r"md5: (\S+)", (kb.root / "corpus.dvc").read_text()).group(1)
    for name, row in rows.items():
        assert row["status"] == "passed" and row["healthy"] is True, row
        assert 0 < row["recovery_s"] <= row["objective_s"], row
        assert row["detection_s"] > 0, row
        assert row["git_commit"] == commit and row["dvc_hash"] == md5
        assert row["message"].startswith(f"{name} recovered in ")
        closing = row["steps"][-1]
        assert closing["command"] == "kbguard verify" and closing["exit_code"] == 0
        assert closing["note"] == "healthy; 1 canaries passing"
    assert rows["everything-lost"]["objective_s"] == 3600
    assert {r["objective_s"] for n, r in rows.items() if n != "everything-lost"} == {900}
    assert [s["command"] for s in rows["everything-lost"]["steps"]][1:4] == [
        "git clone REPO", "dvc pull corpus.dvc state/snapshots/"
        + next(p.name for p in (kb.root / "state/snapshots").glob("*.dvc")),
        "kbguard restore --latest --yes"]
    assert rows["killed-rebuild"]["steps"][1]["exit_code"] == 137
    # the outage's debt was paid through the API, and the ledger of the copy says what it cost
    outage = rows["provider-outage"]
    assert outage["texts"] > 0 and outage["tokens"] > 0 and outage["requests"] > 0
    assert len(server.embedding_requests) > requests_before
    paid = next(s for s in outage["steps"] if s["phase"] == "recover")
    assert re.fullmatch(r"the debt paid: exactly \d+ texts embedded for 'primary'", paid["note"])
    # a lost store comes back from the cache: the rebuild embeds nothing; what the drill
    # embedded is the closing verify's canary query (the detecting one found no collection)
    rebuilt = next(s for s in rows["store-lost"]["steps"] if s["command"] == "kbguard rebuild")
    assert rebuilt["note"].endswith("from the embedding cache, 0 texts embedded")
    assert rows["store-lost"]["texts"] == 1 and rows["store-lost"]["requests"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_default_run_passes_what_it_can_and_names_what_to_set_up(
        tmp_path: Path, built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    before = live_state(kb)
    res = kb.cli("drill", "--json")
    report = json.loads(res.stdout)
    assert res.code == 0, json.dumps(report, indent=1)
    status = {d["scenario"]: d["status"] for d in report["drills"]}
    assert status == {"killed-rebuild": "passed", "provider-outage": "not-possible",
                      "store-corruption": "passed", "store-lost": "passed",
                      "manifest-lost": "not-possible", "everything-lost": "not-possible"}
    messages = {d["scenario"]: d["message"] for d in report["drills"]}
    assert "Add a standby space" in messages["provider-outage"]
    assert "Run `kbguard snapshot create`" in messages["manifest-lost"]
    assert "is not in a git repository" in messages["everything-lost"]
    assert live_state(kb) == before
    rows = history(kb)
    assert [(r["scenario"], r["status"]) for r in rows] == list(status.items())
    assert all(not r["healthy"] and r["recovery_s"] is None
               for r in rows if r["status"] == "not-possible")


def test_a_drill_named_on_the_command_line_that_is_not_possible_fails(
        tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    run = git_dvc_repo(kb.root)
    run("git", "add", "kbguard.toml")
    run("git", "commit", "-q", "-m", "config")
    res = kb.cli("drill", "manifest-lost", "everything-lost")
    assert res.code == 1, (res.stdout, res.stderr)
    assert "manifest-lost     not-possible  manifest-lost is not possible: the KB has no " \
           "snapshot under" in res.stdout
    assert f"the corpus {kb.corpus} is not tracked by DVC in {kb.root}. Run `dvc add " \
           "CORPUS`" in res.stdout
    assert "drills did not pass; 2 not possible on this KB" in res.stdout
    assert [r["status"] for r in history(kb)] == ["not-possible", "not-possible"]


@pytest.mark.slow
def test_a_drill_slower_than_its_objective_exits_1_and_says_by_how_much(
        tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    kb.config_path.write_text(kb.config_path.read_text()
                              + "[recovery]\nrto_single_failure_s = 0.001\n")
    res = kb.cli("drill", "store-lost", "--json")
    assert res.code == 1
    drill = json.loads(res.stdout)["drills"][0]
    assert drill["status"] == "missed" and drill["healthy"] is True
    m = re.fullmatch(r"store-lost recovered in (\d+\.\d) s, objective 0\.001 s: "
                     r"missed by (\d+\.\d) s", drill["message"])
    assert m, drill["message"]
    assert float(m.group(2)) == pytest.approx(drill["recovery_s"] - 0.001, abs=0.06)
    assert history(kb)[0]["status"] == "missed"


@pytest.mark.slow
def test_a_recovery_that_fails_is_reported_as_failed(tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    kb.cli_json("snapshot", "create")
    snap = next(p for p in kb.cfg.snapshot_root.iterdir() if p.is_dir())
    # the only snapshot is damaged: restoring the manifest from it cannot succeed
    points = next(snap.glob("*.parquet"))
    data = bytearray(points.read_bytes())
    data[len(data) // 2] ^= 0xFF
    points.write_bytes(bytes(data))
    res = kb.cli("drill", "manifest-lost", "--json")
    assert res.code == 1
    drill = json.loads(res.stdout)["drills"][0]
    assert drill["status"] == "failed" and drill["healthy"] is False
    assert drill["message"].startswith(
        "manifest-lost failed: `kbguard restore --latest --yes` exited 2, expected 0: ")
    assert drill["recovery_s"] is not None and drill["detection_s"] > 0


def test_unknown_drills_and_a_non_empty_scratch_folder_are_refused(tmp_path: Path,
                                                                   built_kb) -> None:
    kb = built_kb()
    res = kb.cli("drill", "store-gone")
    assert res.code == 2
    assert "Unknown drill 'store-gone'; the drills are killed-rebuild, provider-outage" \
        in res.stderr
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    res = kb.cli("drill", "store-lost", "--scratch", str(busy))
    assert res.code == 2 and "is not an empty folder" in res.stderr
    assert (busy / "keep.txt").read_text() == "mine" and history(kb) == []


def test_an_unbuilt_kb_has_nothing_to_drill(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    res = kb.cli("drill")
    assert res.code == 2 and "Build it with `kbguard rebuild` first." in res.stderr
    assert not kb.cfg.manifest.exists()


@pytest.mark.slow
def test_scratch_copies_are_kept_where_asked(tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    scratch = tmp_path / "scratch"
    res = kb.cli("drill", "store-corruption", "--scratch", str(scratch))
    assert res.code == 0, res.stdout
    assert f"scratch copies kept in {scratch}" in res.stdout
    # said before the first drill, on stderr; a KB with no priced provider spends nothing
    assert res.stderr.index("the drills will spend about $0.000000 on embedding (0 texts, 0 "
                            "tokens through priced providers; each text once across the "
                            "drills)") < res.stderr.index("drill store-corruption")
    assert "embedding: $0.000000 spent, $0.000000 estimated before the drills" in res.stdout
    config = (scratch / "store-corruption" / "kbguard-drill.toml").read_text()
    assert f'path = "{scratch / "store-corruption" / "store"}"' in config
    assert str(kb.cfg.manifest) not in config


def test_a_busy_live_kb_is_not_copied_half_way(tmp_path: Path, built_kb) -> None:
    from kbguard.core.lock import kb_lock

    kb = built_kb()
    with kb_lock(kb.cfg.manifest, "rebuild"):
        res = kb.cli("drill", "store-lost")
    assert res.code == 3, (res.stdout, res.stderr)
    assert "This KB is busy: `kbguard rebuild`" in res.stderr
    assert history(kb) == []


# -- what a drill refuses, what it must not count as failed, what it spends -----------------

def _kb_files(kb: KB) -> set[str]:
    return {str(p.relative_to(kb.root)) for p in kb.root.rglob("*")}


@pytest.mark.parametrize("inside", ["corpus/scratch", "state/store/scratch",
                                    "state/snapshots/scratch", "state/scratch", "link/scratch"])
def test_a_scratch_folder_inside_the_kb_is_refused_before_anything_is_copied(
        tmp_path: Path, built_kb, inside: str) -> None:
    kb = built_kb()
    kb.cli_json("snapshot", "create")
    (kb.root / "link").symlink_to(kb.corpus)   # a path that only resolves into the corpus
    before, files = live_state(kb), _kb_files(kb)
    scratch = kb.root / inside
    res = kb.cli("drill", "store-lost", "--scratch", str(scratch))
    assert res.code == 2, (res.stdout, res.stderr)
    assert f"--scratch {scratch.resolve()} is inside " in res.stderr
    assert "Pass a folder outside the KB's corpus, store, snapshots and manifest folder." \
        in res.stderr
    assert not scratch.exists() and _kb_files(kb) == files and live_state(kb) == before
    assert history(kb) == []


def test_a_temporary_folder_inside_the_corpus_is_refused(
        tmp_path: Path, built_kb, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = built_kb()
    files = _kb_files(kb)
    monkeypatch.setattr(tempfile, "tempdir", str(kb.corpus))
    res = kb.cli("drill", "store-lost")
    assert res.code == 2, (res.stdout, res.stderr)
    assert f"the temporary folder {kb.corpus.resolve()} is inside the corpus" in res.stderr
    assert "Set TMPDIR to a folder outside it, or pass --scratch." in res.stderr
    assert _kb_files(kb) == files and history(kb) == []


@pytest.mark.slow
def test_pending_corpus_changes_are_not_a_failed_recovery(tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    edit_corpus(kb)   # changes the next nightly rebuild would index: the KB's normal state
    res = kb.cli("drill", "killed-rebuild", "store-corruption", "store-lost", "--json")
    report = json.loads(res.stdout)
    assert res.code == 0, json.dumps(report, indent=1)
    assert {d["scenario"]: d["status"] for d in report["drills"]} == {
        "killed-rebuild": "passed", "store-corruption": "passed", "store-lost": "passed"}
    corruption = report["drills"][1]
    repair = next(s for s in corruption["steps"] if s["command"] == "kbguard verify --repair")
    closing = corruption["steps"][-1]
    # the copy's corpus is the live one: its pending changes are still pending after the repair
    assert repair["exit_code"] == 1 and closing["exit_code"] == 1
    assert re.fullmatch(r"healthy \(the KB has no canaries\); \d+ corpus changes not yet "
                        r"indexed \(not damage: the next `kbguard rebuild` indexes them\)",
                        closing["note"]), closing["note"]
    assert [r["status"] for r in history(kb)] == ["passed"] * 3


@pytest.mark.slow
def test_a_drill_run_embeds_each_pending_text_once_and_says_first_what_it_will_spend(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb, _ = repo_kb(tmp_path / "repo", server.url)
    edit_corpus(kb)   # pending: an edited paragraph and a new document, not indexed yet
    seen = len(server.embedding_requests)

    res = kb.cli("drill", "--json")
    report = json.loads(res.stdout)
    assert res.code == 0, json.dumps(report, indent=1)
    assert {d["status"] for d in report["drills"]} == {"passed"}
    sent = Counter(text for r in server.embedding_requests[seen:] for text in r.inputs)
    # every verify embeds its canary query; anything else reaching the API twice was paid twice
    twice = {t: n for t, n in sent.items() if n > 1 and t != CANARY}
    assert twice == {}, twice
    pending = [t for t in sent if "Newcomer" in t or "(edited)" in t]
    assert pending and all(sent[t] == 1 for t in pending)
    # the restored manifests lack what the first drill embedded: it is carried in before the
    # restore's catch-up, which then embeds nothing
    for drill in report["drills"][4:]:
        commands = [s["command"] for s in drill["steps"]]
        assert "kbguard restore --latest --no-catch-up --yes" in commands, commands
        caught = commands.index("kbguard rebuild")
        assert drill["steps"][caught]["note"] == "the restore's catch-up: 0 texts embedded"
        assert drill["steps"][caught - 1]["command"] == \
            "carry in the vectors earlier drills of this run embedded"

    spend = report["spend"]
    assert spend["texts"] >= len(pending) and spend["tokens"] > 0 and spend["cost_usd"] > 0
    assert list(spend["drills"]) == list(SCENARIOS)
    # each drill's figure is rounded to the micro-dollar, as the total is
    assert spend["cost_usd"] == pytest.approx(sum(d["cost_usd"] for d in spend["drills"].values()),
                                              abs=len(SCENARIOS) * 1e-6)
    spent = sum(d["cost_usd"] for d in report["drills"])
    assert 0 < spent <= spend["cost_usd"] + 1e-6, (spent, spend)
    assert report["max_cost_usd"] is None and report["stopped"] is None


def test_max_cost_refuses_a_run_whose_estimate_passes_it(tmp_path: Path,
                                                         server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url)
    kb.cli_json("rebuild")
    edit_corpus(kb)
    seen = len(server.embedding_requests)
    res = kb.cli("drill", "store-lost", "--max-cost", "0.000001")
    assert res.code == 2, (res.stdout, res.stderr)
    m = re.search(r"The drills would spend about \$(\d+\.\d+) on embedding \((\d+) texts, "
                  r"(\d+) tokens through priced providers\), more than --max-cost \$0\.000001\. "
                  r"Nothing was run\. Raise --max-cost, or run fewer drills", res.stderr)
    assert m, res.stderr
    assert float(m.group(1)) > 0.000001 and int(m.group(2)) > 0
    assert len(server.embedding_requests) == seen and history(kb) == []


@pytest.mark.slow
def test_max_cost_stops_before_a_drill_that_would_pass_it(tmp_path: Path,
                                                          server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url)
    kb.cli_json("rebuild")
    # cache rows that fail their checksum: no estimate sees them, the repair embeds them again
    kb.cli_json("chaos", "damage-cache", "-n", "2", "--seed", "3", "--yes")
    res = kb.cli("drill", "store-corruption", "store-lost", "--max-cost", "0", "--json")
    assert res.code == 2, (res.stdout, res.stderr)
    report = json.loads(res.stdout)
    assert report["spend"]["cost_usd"] == 0 and report["max_cost_usd"] == 0
    [done] = report["drills"]
    assert done["scenario"] == "store-corruption" and done["status"] == "passed"
    assert done["cost_usd"] > 0
    assert report["stopped"] == (
        f"stopped before store-lost: the drills so far spent ${done['cost_usd']:.6f} and it is "
        "estimated at $0.000000, which would pass --max-cost $0.000000")
    assert report["passed"] is False and report["exit_code"] == 2
    assert [r["scenario"] for r in history(kb)] == ["store-corruption"]


@pytest.mark.parametrize("where", ["scratch", "temporary folder"])
def test_a_full_scratch_disk_is_exit_2_and_not_a_failed_drill(
        tmp_path: Path, built_kb, monkeypatch: pytest.MonkeyPatch, where: str,
        mounts: list[Path]) -> None:
    kb = built_kb()
    small = tmpfs(mounts, tmp_path / "small", "4m")
    fill(small, 64 * 1024)
    args = ["--scratch", str(small / "scratch")] if where == "scratch" else []
    if where == "temporary folder":
        monkeypatch.setattr(tempfile, "tempdir", str(small))
    res = kb.cli("drill", "store-lost", *args)
    assert res.code == 2, (res.stdout, res.stderr)
    assert "The disk is full: there is no room to copy the KB for the store-lost drill" \
        in res.stderr
    assert f"on the filesystem mounted at {small} (tmpfs)" in res.stderr
    assert sorted(p.name for p in small.iterdir()) == ["filler"]   # nothing copied
    assert history(kb) == []


def _drill_process(kb: KB, tmp: Path, *scenarios: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kbguard", "drill", *scenarios, "--config", str(kb.config_path)],
        env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def _wait_for_copy(tmp: Path, scenario: str, proc: subprocess.Popen,
                   other: Path | None = None) -> Path:
    """The scratch folder of the drill ``proc`` (not ``other``), once its copy of the KB is
    made."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p.parent.parent for p in tmp.glob(f"kbguard-drill-*/{scenario}/kbguard-drill.toml")
                 if p.parent.parent != other]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the drill made no scratch copy")


@pytest.mark.slow
def test_scratch_copies_of_killed_drills_are_removed_by_the_next_drill(
        tmp_path: Path, built_kb, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = built_kb()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    killed = _drill_process(kb, tmp, "store-corruption")
    killed_copy = _wait_for_copy(tmp, "store-corruption", killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert (killed_copy / "store-corruption" / "store").is_dir()   # a whole store, left behind

    following = _drill_process(kb, tmp, "store-corruption")
    following_copy = _wait_for_copy(tmp, "store-corruption", following, other=killed_copy)
    assert not killed_copy.exists()
    # while that drill runs (stopped here, but alive) another one must leave its copy alone,
    # and a folder of that name kbguard did not make
    os.killpg(following.pid, signal.SIGSTOP)
    theirs = tmp / "kbguard-drill-someone-else"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("not a drill's")
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(tmp))
        res = kb.cli("drill", "killed-rebuild", "--json")
        assert res.code == 0, (res.stdout, res.stderr)
        assert json.loads(res.stdout)["notes"] == []
        assert following_copy.is_dir() and (theirs / "notes.txt").read_text() == "not a drill's"
    finally:
        os.killpg(following.pid, signal.SIGCONT)
        out, err = following.communicate(timeout=300)
    assert following.returncode == 0, (out, err)
    assert f"note: removed {killed_copy}, the scratch copies of a drill that ended without " \
           f"removing them (process {killed.pid})" in out
    assert sorted(p.name for p in tmp.iterdir()) == ["kbguard-drill-someone-else"]


@pytest.mark.slow
def test_an_interrupted_drill_says_it_starts_over_and_leaves_no_copy(tmp_path: Path,
                                                                     built_kb) -> None:
    kb = built_kb()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = _drill_process(kb, tmp, "store-lost")
    _wait_for_copy(tmp, "store-lost", proc)
    os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C reaches the whole foreground group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Interrupted. A drill does not resume: the next `kbguard drill` starts its drills " \
           "over" in err
    assert "continue where it stopped" not in err
    assert list(tmp.iterdir()) == []


def test_a_drill_whose_recovery_was_not_timed_does_not_pass(
        tmp_path: Path, built_kb, monkeypatch: pytest.MonkeyPatch) -> None:
    from kbguard.operations import drill

    kb = built_kb()

    def no_recovery(cfg, run):   # a drill whose steps record no recovery phase
        return drill._copy_kb(cfg, run)

    monkeypatch.setitem(drill._DRILLS, "store-lost", no_recovery)
    report = drill.drill_kb(kb.cfg, ["store-lost"], record=False)
    [result] = report.drills
    assert result.recovery_s is None
    assert result.status == "failed" and not report.passed
    assert result.message == ("store-lost has no recovery time: no recovery step was timed, "
                              "so it cannot be compared with its objective")
