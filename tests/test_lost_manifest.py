"""A lost manifest is not a KB never built: while a snapshot or the store survives, every
command that needs the manifest points at the restore, and a plain rebuild refuses to embed the
whole corpus again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.kbtest import make_kb, manifest_chunk_ids, store_contents


def test_with_a_snapshot_every_command_names_the_restore(built_kb) -> None:
    kb = built_kb()
    created = kb.cli("snapshot", "create")
    sid = created.stdout.strip()
    assert created.code == 0 and sid, created.stderr  # an empty id is in every message
    before = store_contents(kb.cfg)
    kb.cfg.manifest.unlink()

    for args in (["status"], ["verify"], ["search", "anything"], ["rebuild"]):
        res = kb.cli(*args)
        assert res.code == 2, (args, res.stdout, res.stderr, res.exception)
        assert sid in res.stderr and "kbguard restore --latest" in res.stderr, args
        assert "not been built" not in res.stderr
    assert not kb.cfg.manifest.exists()         # the refused rebuild created nothing
    assert store_contents(kb.cfg) == before      # and wrote nothing

    as_json = kb.cli("rebuild", "--json")
    assert as_json.code == 2
    err = json.loads(as_json.stdout)
    assert err["error_type"] == "ManifestLost" and sid in err["error"]

    restored = kb.cli("restore", "--latest", "--yes", "--json")
    assert restored.code == 0, (restored.stdout, restored.stderr)
    assert kb.cli_json("verify")["healthy"]
    again = kb.cli_json("rebuild")
    assert again["chunks"]["embedded"] == 0 and again["chunks"]["written"] == 0


def test_without_a_snapshot_the_store_alone_stops_a_plain_rebuild(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    points = len(store_contents(kb.cfg))
    kb.cfg.manifest.unlink()

    res = kb.cli("rebuild")
    assert res.code == 2
    assert f"still holds {points:,} points" in res.stderr
    assert "kbguard rebuild --full" in res.stderr
    assert not kb.cfg.manifest.exists()
    assert "the store of KB 'testkb' is still there" in kb.cli("status").stderr

    full = kb.cli_json("rebuild", "--full")     # the user's explicit choice: embed it all again
    assert full["chunks"]["embedded"] == points
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)
    assert kb.cli_json("verify")["healthy"]


def test_a_kb_never_built_is_still_told_to_build(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    for args in (["status"], ["verify"]):
        res = kb.cli(*args)
        assert res.code == 2 and "has not been built yet" in res.stderr, args
    assert kb.cli_json("rebuild")["chunks"]["embedded"] > 0


def test_an_empty_store_left_by_a_lost_kb_does_not_stop_the_first_build(built_kb) -> None:
    kb = built_kb()
    assert kb.cli("chaos", "drop-collection", "--yes").code == 0   # nothing left in the store
    kb.cfg.manifest.unlink()
    shutil.rmtree(kb.cfg.snapshot_root, ignore_errors=True)
    assert kb.cli_json("rebuild")["chunks"]["embedded"] > 0
