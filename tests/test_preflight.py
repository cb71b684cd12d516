"""The checks before the work (kbguard.kb.preflight) and how a command's result becomes its exit
code (kbguard.core.outcome): one place each, and the order of the checks is what users hear."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kbguard.cli.common import (
    EXIT_BUSY,
    EXIT_ERROR,
    EXIT_FINDINGS,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    exit_code_for,
)
from kbguard.core.lock import kb_lock
from kbguard.core.outcome import Verdict
from kbguard.errors import LockedError, SnapshotError
from kbguard.ingest.rebuild import RebuildReport
from kbguard.recovery.snapshot import SnapshotCheck
from tests.kbtest import KB, make_kb

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kbguard"

# each guard and the module that implements it: the preflight alone calls it elsewhere
GUARDS = {
    "kb_lock": "kbguard.core.lock",
    "check_unlocked": "kbguard.core.lock",
    "refuse_half_restored": "kbguard.core.lock",
    "require_corpus": "kbguard.kb.corpus",
    "missing_manifest": "kbguard.kb.lost_manifest",
    "lost_manifest": "kbguard.kb.lost_manifest",
    "refuse_lost_manifest": "kbguard.kb.lost_manifest",
}
# the scan checks its own root too: `status` scans the corpus with no corpus check before it
ALSO_CALLED_BY = {("require_corpus", "kbguard.ingest.scan")}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.id if isinstance(func, ast.Name) else
                      func.attr if isinstance(func, ast.Attribute) else "")
    return names


def test_the_guards_are_called_from_the_preflight_only() -> None:
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        for guard in sorted(_calls(ast.parse(path.read_text())) & GUARDS.keys()):
            if module not in (GUARDS[guard], "kbguard.kb.preflight") \
                    and (guard, module) not in ALSO_CALLED_BY:
                stray.append(f"{module} calls {guard}")
    assert stray == []


def test_the_check_finds_a_stray_guard() -> None:
    source = "def f(cfg):\n    with lock.kb_lock(cfg.manifest, 'x'):\n        pass\n"
    assert _calls(ast.parse(source)) & GUARDS.keys() == {"kb_lock"}


# -- the order of the checks, as the user hears it ---------------------------------------------

def test_a_missing_corpus_is_said_before_a_busy_kb(kb: KB) -> None:
    shutil.rmtree(kb.corpus)
    with kb_lock(kb.cfg.manifest, "rebuild"):
        for command in (["rebuild"], ["rebuild", "--estimate"]):
            res = kb.cli(*command)
            assert res.code == EXIT_ERROR, (command, res.stderr)
            assert f"The corpus folder {kb.corpus} does not exist." in res.stderr


@pytest.mark.parametrize("command, said", [
    (["verify"], "There is nothing to check against; run `kbguard rebuild`."),
    (["verify", "--repair"], "There is nothing to repair; run `kbguard rebuild`."),
    (["snapshot", "create"], "so there is nothing to snapshot. Run `kbguard rebuild` first."),
    (["drill", "store-lost"], "there is nothing to rehearse on yet."),
])
def test_a_missing_manifest_is_said_before_a_busy_kb(kb: KB, command: list[str],
                                                     said: str) -> None:
    with kb_lock(kb.cfg.manifest, "restore"):
        res = kb.cli(*command)
    assert res.code == EXIT_ERROR and said in res.stderr, (res.stdout, res.stderr)
    assert "busy" not in res.stderr


def test_report_says_busy_before_it_says_the_manifest_is_missing(kb: KB) -> None:
    with kb_lock(kb.cfg.manifest, "restore"):
        res = kb.cli("report", "-o", str(kb.root / "report.html"))
    assert res.code == EXIT_BUSY and "This KB is busy: `kbguard restore`" in res.stderr


@pytest.fixture
def half_restored(built_kb) -> KB:
    """A built KB with the journal of a restore killed while it switched the KB over."""
    kb = built_kb()
    journal = kb.cfg.manifest.with_name(kb.cfg.manifest.name + ".restore.json")
    journal.write_text(json.dumps({"snapshot": "20261205T000000Z", "tag": "0a1b2c3d",
                                   "phase": "switching"}))
    return kb


@pytest.mark.parametrize("command", [
    ["rebuild"], ["verify"], ["verify", "--repair"], ["snapshot", "create"],
    ["snapshot", "prune", "--keep-last", "1", "--yes"], ["chaos", "delete-points", "--yes"],
])
def test_every_lock_holder_but_restore_refuses_a_half_done_restore(
        half_restored: KB, command: list[str]) -> None:
    res = half_restored.cli(*command)
    assert res.code == EXIT_ERROR, (res.stdout, res.stderr)
    assert "Run `kbguard restore 20261205T000000Z --yes` to finish it first." in res.stderr
    # (`kbguard restore` itself runs past it and finishes it: tests/test_restore.py kills one)


# -- outcomes ----------------------------------------------------------------------------------

def test_each_verdict_is_its_documented_exit_code() -> None:
    """The README's table, the verdicts (which verify's metric and the drill's JSON report as
    numbers) and exit_code_for agree."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Exit codes"):readme.index("## From Python")]
    assert sorted(int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)) == [
        EXIT_OK, EXIT_FINDINGS, EXIT_ERROR, EXIT_BUSY, EXIT_INCOMPLETE, EXIT_INTERRUPTED]
    codes = [exit_code_for(SimpleNamespace(verdict=v)) for v in Verdict]
    assert codes == [int(v) for v in Verdict] == [EXIT_OK, EXIT_FINDINGS, EXIT_ERROR,
                                                  EXIT_INCOMPLETE]


def test_results_declare_their_verdict() -> None:
    def rebuilt(debt: int) -> RebuildReport:
        return RebuildReport(kb="k", run_id=1, full=False, documents={}, chunks={},
                             failures=[], stages={}, seconds=0.0, hash_source="computed",
                             corpus_rev="", spaces={"local": {"debt": debt}})

    assert exit_code_for(rebuilt(0)) == EXIT_OK
    assert exit_code_for(rebuilt(3)) == EXIT_INCOMPLETE
    assert exit_code_for(SnapshotCheck("s", ok=True)) == EXIT_OK
    assert exit_code_for(SnapshotCheck("s", ok=False, problem="damaged")) == EXIT_FINDINGS


def test_errors_are_their_exit_codes() -> None:
    assert exit_code_for(LockedError("busy")) == EXIT_BUSY
    assert exit_code_for(SnapshotError("missing")) == EXIT_ERROR
    assert exit_code_for(KeyboardInterrupt()) == EXIT_INTERRUPTED
    assert exit_code_for(RuntimeError("a bug")) == EXIT_ERROR


def test_an_unbuilt_kb_in_a_new_folder_gets_no_lock_file(tmp_path: Path) -> None:
    """The manifest is looked for before the lock, whose file would create its folder."""
    kb = make_kb(tmp_path)
    assert kb.cli("verify").code == EXIT_ERROR
    assert not kb.cfg.manifest.parent.exists()
