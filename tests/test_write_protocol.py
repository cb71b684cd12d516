"""Every command writes and deletes points through the manifest's one write protocol: state row
pending, store write and flush, confirm (``Manifest.points.write`` / ``delete``). A
repair killed inside it leaves what a killed rebuild leaves, and the next rebuild finishes it."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from kbguard.integrity.chaos import inject
from kbguard.manifest import Manifest
from tests.kbtest import make_kb, store_contents


@pytest.mark.slow
def test_a_repair_killed_before_it_confirms_its_writes_is_finished_by_a_rebuild(
        tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    kb.cli_json("rebuild")
    lost = inject(kb.cfg, "delete-points", count=3, seed=1)

    killed = kb.subprocess("verify", "--repair", env={"KBGUARD_CRASH_AT": "store-upsert:1"})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    # the points are back in the store, flushed, but their rows were never confirmed
    assert set(lost.point_ids) <= set(store_contents(kb.cfg))
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        assert m.points.pending_count() == 3

    report = kb.cli_json("rebuild")
    assert (report["chunks"]["written"], report["chunks"]["embedded"]) == (3, 0)
    assert kb.cli("verify").code == 0
