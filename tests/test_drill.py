"""`kbguard drill`: every drill passes on a sample KB and leaves the live KB as it was.

The full KB lives in a real git repository with its corpus and a snapshot tracked by DVC on a
local-folder remote; its primary space embeds through a real OpenAI-compatible server on
127.0.0.1 (tests/openai_server.py) with a local standby space, so every drill can run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import duckdb
import pytest

from kbguard.drill import SCENARIOS
from kbguard.manifest import Manifest
from tests.conftest import BACKENDS, DVC, KB, git_dvc_repo, make_kb, write_config
from tests.openai_server import OpenAIServer
from tests.test_spaces import _spaces

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
        return m.drill_history()


def repo_kb(root: Path, url: str) -> tuple[KB, str]:
    """A built KB whose config, corpus and newest snapshot can come back from git and DVC alone:
    an API primary and a local standby, a canary, the corpus `dvc add`ed and pushed, a snapshot
    made with --dvc-push, all committed. Returns the KB and its commit."""
    kb = make_kb(root)
    write_config(kb.config_path, Path("corpus"))   # relative: it must hold in a clone too
    text = kb.config_path.read_text()
    head, _, rest = text.partition("[[spaces]]")
    kb.config_path.write_text(
        head + _spaces(url) + rest[rest.index("[store]"):]
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
    config = (scratch / "store-corruption" / "kbguard-drill.toml").read_text()
    assert f'path = "{scratch / "store-corruption" / "store"}"' in config
    assert str(kb.cfg.manifest) not in config


def test_a_busy_live_kb_is_not_copied_half_way(tmp_path: Path, built_kb) -> None:
    from kbguard.lock import kb_lock

    kb = built_kb()
    with kb_lock(kb.cfg.manifest, "rebuild"):
        res = kb.cli("drill", "store-lost")
    assert res.code == 3, (res.stdout, res.stderr)
    assert "This KB is busy: `kbguard rebuild`" in res.stderr
    assert history(kb) == []
