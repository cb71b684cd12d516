"""A whole KB life through the Python API alone: what the CLI does, a program can do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kbguard
from tests.conftest import long_markdown


def test_a_kb_life_through_the_python_api(tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"guide{i}.md").write_text(long_markdown(f"Guide {i}", sections=2))
    cfg = kbguard.init_config(corpus, tmp_path / "kb.toml", provider="fake")
    assert cfg.kb == "docs" and cfg.corpus == corpus.resolve()
    with pytest.raises(kbguard.ConfigError, match="already exists"):
        kbguard.init_config(corpus, tmp_path / "kb.toml", provider="fake")

    built = kbguard.rebuild_kb(cfg)
    assert built.documents["added"] == 3 and built.chunks["written"] == built.chunks["total"] > 0
    status = kbguard.kb_status(cfg)
    assert status.counts["chunks"] == built.chunks["total"]
    assert status.spaces[0]["coverage"] == 1.0 and status.spend["total"]["usd"] == 0

    found = kbguard.search_kb(cfg, "Guide 1 part 1 topic1", k=3)
    assert found.hits and found.hits[0].path == "guide1.md"
    assert (found.space, found.degraded) == ("local", False)

    check = kbguard.verify_kb(cfg)
    assert check.healthy and check.verdict == kbguard.Verdict.HEALTHY

    snap = kbguard.create_snapshot(cfg)
    assert [s.id for s in kbguard.list_snapshots(cfg)] == [snap.id]
    assert kbguard.verify_snapshot(cfg, snap.id).ok

    (corpus / "guide3.md").write_text(long_markdown("Guide 3", sections=2))
    restored = kbguard.restore_snapshot(cfg, snap.id)
    assert restored.points == snap.points
    assert restored.catch_up is not None and restored.catch_up["documents"]["added"] == 1
    assert kbguard.verify_kb(cfg).healthy


def _built(tmp_path: Path) -> kbguard.Config:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text(long_markdown("Alpha", sections=2))
    cfg = kbguard.init_config(corpus, tmp_path / "kb.toml", provider="fake")
    kbguard.rebuild_kb(cfg)
    return cfg


def test_a_damaged_snapshot_is_a_verdict_not_an_error(tmp_path: Path) -> None:
    cfg = _built(tmp_path)
    snap = kbguard.create_snapshot(cfg)
    points = next(Path(snap.path).glob("points*.parquet"))
    points.write_bytes(points.read_bytes()[:-10] + b"0123456789")
    check = kbguard.verify_snapshot(cfg, snap.id)
    assert not check.ok and "does not match its sha256" in (check.problem or "")
    with pytest.raises(kbguard.SnapshotError, match="There is no snapshot folder"):
        kbguard.verify_snapshot(cfg, "20990101T000000Z-000000")


def test_the_public_names_are_all_there_and_shadow_no_module() -> None:
    import importlib.util

    for name in kbguard.__all__:
        assert getattr(kbguard, name) is not None, name
        assert importlib.util.find_spec(f"kbguard.{name}") is None, name
    with pytest.raises(AttributeError):
        kbguard.no_such_name  # noqa: B018


def test_importing_kbguard_changes_no_global_state() -> None:
    code = ("import os, sys; before = dict(os.environ); import kbguard; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "print(sorted(m for m in sys.modules if m.startswith('kbguard')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items()
                              if k not in ("DO_NOT_TRACK", "SCARF_NO_ANALYTICS",
                                           "UNSTRUCTURED_DISABLE_NOTICE")})
    assert out.returncode == 0, out.stderr
    assert "'kbguard.ingest.rebuild'" in out.stdout


def test_errors_carry_what_callers_act_on(tmp_path: Path) -> None:
    from kbguard.core.lock import kb_lock

    cfg = _built(tmp_path)
    with kb_lock(cfg.manifest, "snapshot create"), pytest.raises(kbguard.LockedError) as err:
        kbguard.rebuild_kb(cfg)
    assert (err.value.pid, err.value.command) == (os.getpid(), "snapshot create")

    snap = kbguard.create_snapshot(cfg)
    from kbguard.recovery.snapshot import POINTS_FILE, verify_folder

    points = Path(snap.path) / POINTS_FILE
    points.write_bytes(points.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(kbguard.SnapshotDamaged) as damaged:
        verify_folder(Path(snap.path))
    assert (damaged.value.snapshot_id, damaged.value.file) == (snap.id, POINTS_FILE)
    assert kbguard.verify_snapshot(cfg, snap.id).damaged_file == POINTS_FILE


def test_exit_codes_are_decided_in_one_place() -> None:
    from kbguard.cli.common import exit_code_for
    from kbguard.recovery.snapshot import SnapshotCheck

    assert exit_code_for(kbguard.LockedError("busy", pid=1)) == 3
    assert exit_code_for(kbguard.ConfigError("bad")) == 2
    assert exit_code_for(RuntimeError("a bug")) == 2
    assert exit_code_for(KeyboardInterrupt()) == 130
    assert exit_code_for(SnapshotCheck("x", ok=False, problem="damaged")) == 1
    assert exit_code_for(SnapshotCheck("x", ok=True)) == 0
