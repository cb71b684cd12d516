"""`kbguard runbook`: commands for this config, measured figures from drills, nothing invented."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbguard.cli.main import app
from kbguard.manifest import Manifest
from kbguard.operations.runbook import FAILURES
from tests.kbtest import DVC, KB, git_dvc_repo, make_kb

DRILLS = [f.drill for f in FAILURES]


def _record(kb: KB, scenario: str, *, status: str = "passed", recovery_s: float = 12.5,
            detection_s: float | None = 1.25, objective_s: float = 900.0,
            message: str | None = None, when: datetime | None = None) -> None:
    at = when or datetime(2026, 11, 29, 10, 30, tzinfo=UTC)
    with Manifest.open(kb.cfg.manifest) as m:
        m.drills.record({"scenario": scenario, "started_at": at,
                         "finished_at": at + timedelta(seconds=recovery_s + 5),
                         "status": status, "healthy": status != "failed",
                         "detection_s": detection_s, "recovery_s": recovery_s,
                         "objective_s": objective_s, "requests": 0, "texts": 3, "tokens": 120,
                         "cost_usd": 0.0, "message": message, "steps": []})


def _section(text: str, drill: str) -> str:
    start = text.index(f"(`kbguard drill {drill}`)")
    end = text.find("\n## ", start)
    return text[start:end if end > 0 else None]


def test_a_kb_never_drilled_says_so_for_every_failure(built_kb) -> None:
    kb = built_kb()
    res = kb.cli("runbook")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    text = res.stdout
    for drill in DRILLS:
        section = _section(text, drill)
        assert "**Measured:** not yet drilled" in section
        assert f"kbguard drill {drill} --config" in section
        # no duration is claimed as measured
        assert "drill of" not in section
    assert text.count("| not yet drilled | not yet drilled |") == len(DRILLS)
    # the exact commands carry this KB's config
    assert "kbguard verify --repair --config " in text
    assert "kbguard restore --latest --yes --config" in text


def test_the_newest_drill_of_each_failure_is_quoted_with_its_date(built_kb) -> None:
    kb = built_kb()
    _record(kb, "store-lost", recovery_s=40.0,
            when=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
    _record(kb, "store-lost", recovery_s=12.5)          # newer: this one is quoted
    _record(kb, "manifest-lost", status="missed", recovery_s=950.0,
            message="took 950.0 s, objective 900 s: missed by 50.0 s")
    _record(kb, "everything-lost", status="not-possible", recovery_s=0.0, detection_s=None,
            message="the corpus is not DVC-tracked")
    text = kb.cli("runbook").stdout
    lost = _section(text, "store-lost")
    assert "drill of 2026-11-29 10:30 UTC: passed" in lost
    assert "recovery 12.5 s" in lost and "detection 1.2 s" in lost
    assert "40.0 s" not in lost
    missed = _section(text, "manifest-lost")
    assert "MISSED its objective" in missed and "missed by 50.0 s" in missed
    assert "15.8 min" in missed
    assert "not possible on 2026-11-29" in _section(text, "everything-lost")
    assert "**Measured:** not yet drilled" in _section(text, "killed-rebuild")
    row = next(line for line in text.splitlines() if line.startswith("| The store is lost"))
    assert "| 2026-11-29 10:30 UTC | 12.5 s | 15.0 min |" in row


def test_estimated_cost_comes_from_the_estimate(built_kb) -> None:
    kb = built_kb()
    (kb.corpus / "new.md").write_text("# New\n\n" + "fresh words here " * 40)
    text = kb.cli("runbook").stdout
    line = next(l for l in _section(text, "killed-rebuild").splitlines()
                if l.startswith("**Estimated now:**"))
    texts = int(re.search(r"([\d,]+) texts", line).group(1).replace(",", ""))
    report = kb.cli_json("rebuild")
    assert texts == report["chunks"]["embedded"] > 0


def test_everything_lost_is_not_possible_without_dvc(built_kb) -> None:
    kb = built_kb()
    section = _section(kb.cli("runbook").stdout, "everything-lost")
    assert "not possible yet: the corpus is not DVC-tracked" in section


def test_everything_lost_names_the_clone_and_the_pull(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    run = git_dvc_repo(repo)
    kb = make_kb(repo)
    run(*DVC, "add", "-q", "corpus")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "corpus")
    run("git", "remote", "add", "origin", "https://git.example.com/team/kb-repo.git")
    assert kb.cli("rebuild").code == 0
    section = _section(kb.cli("runbook").stdout, "everything-lost")
    assert "git clone https://git.example.com/team/kb-repo.git kb-repo && cd kb-repo" in section
    assert "dvc pull corpus" in section
    assert "kbguard restore --latest --yes --config kbguard.toml" in section


def test_output_file_is_written_whole_and_a_missing_folder_is_refused(built_kb,
                                                                      tmp_path: Path) -> None:
    kb = built_kb()
    out = tmp_path / "RUNBOOK.md"
    res = kb.cli("runbook", "-o", str(out))
    assert res.code == 0, res.stderr
    assert out.read_text().startswith("# Recovery runbook: KB `testkb`")
    res = kb.cli("runbook", "-o", str(tmp_path / "nope" / "RUNBOOK.md"))
    assert res.code == 2 and "is not a folder" in res.stderr
    assert not (tmp_path / "nope").exists()


def test_runbook_works_before_the_first_build(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    res = kb.cli("runbook")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    assert "not yet drilled" in res.stdout
    assert not (tmp_path / "state").exists()



def _command(text: str, starts: str) -> list[str]:
    """The runbook's command line that starts with ``starts``, as a process runs it."""
    line = next(line for line in text.splitlines() if line.startswith(starts))
    args = shlex.split(line.partition("#")[0])
    assert args[0] == "kbguard"
    return [sys.executable, "-m", "kbguard", *args[1:]]


def test_the_config_path_is_written_as_given_and_where_to_run_from(
        built_kb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = built_kb(tmp_path / "kb")
    monkeypatch.chdir(kb.root)   # the config's own folder: an absolute path stays absolute
    text = CliRunner().invoke(app, ["runbook", "--config", str(kb.config_path)]).stdout
    assert f"kbguard verify --repair --config {kb.config_path}" in text
    assert "run them from any folder" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(_command(text, "kbguard status --config"), cwd=elsewhere,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "KB 'testkb'" in done.stdout, done.stderr

    monkeypatch.chdir(tmp_path)   # a relative path holds from one folder: the runbook names it
    text = CliRunner().invoke(app, ["runbook", "--config", "kb/kbguard.toml"]).stdout
    assert "kbguard verify --repair --config kb/kbguard.toml" in text
    assert f"Run the commands from `{tmp_path}`" in text
    done = subprocess.run(_command(text, "kbguard status --config"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "KB 'testkb'" in done.stdout, done.stderr


def test_a_killed_rebuild_is_described_with_the_status_it_shows(built_kb) -> None:
    kb = built_kb()
    with Manifest.open(kb.cfg.manifest) as m:
        m.runs.start("rebuild")   # what a killed rebuild leaves: a run that never ended
    shown = kb.cli_json("status")["last_run"]["status"]
    assert shown == "interrupted"
    section = _section(kb.cli("runbook").stdout, "killed-rebuild")
    assert f"shows the last run as `{shown}` after a kill" in section
