"""Restore: round trips on both backends and across them, catch-up after corpus edits, damaged
snapshots refused with the KB untouched, and SIGKILL at every stage of a restore."""

from __future__ import annotations

import json
import shutil
import signal
from datetime import UTC
from pathlib import Path

import pytest

from kbguard.errors import StoreError
from kbguard.manifest import Manifest
from kbguard.recovery.restore import _verify_copy, pending_restore
from kbguard.recovery.snapshot import snapshot_folder
from kbguard.snapshot_format import read_meta
from kbguard.store import Point, store_for
from tests.kbtest import (
    KB,
    edit_corpus,
    long_markdown,
    manifest_chunk_ids,
    manifest_sql,
    store_contents,
    write_config,
)


def _snapshot(kb: KB) -> str:
    res = kb.cli("snapshot", "create")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    return res.stdout.strip()


def _manifest_rows(cfg) -> dict[str, set]:
    return {
        "documents": set(manifest_sql(
            cfg.manifest, "SELECT path, file_hash, indexed_hash, status, chunks FROM documents")),
        "chunks": set(manifest_sql(cfg.manifest, "SELECT * FROM chunks")),
        "embeddings": set(manifest_sql(
            cfg.manifest, "SELECT space_id, content_hash, vector, checksum FROM embeddings")),
        "state": set(manifest_sql(
            cfg.manifest,
            "SELECT point_id, path, content_hash, vectors, confirmed FROM store_state")),
    }


def _destroy(kb: KB) -> None:
    shutil.rmtree(kb.cfg.store_path)
    kb.cfg.manifest.unlink()


def _healthy(kb: KB) -> dict:
    """Store and manifest agree: every chunk is a point, every point is confirmed, and a
    rebuild finds nothing to do."""
    contents = store_contents(kb.cfg)
    rows = _manifest_rows(kb.cfg)
    assert contents, "an empty store and manifest would agree trivially"
    assert set(contents) == manifest_chunk_ids(kb.cfg)
    assert {r[0] for r in rows["state"]} == set(contents)
    assert all(r[4] for r in rows["state"])
    again = kb.cli_json("rebuild")
    assert again["chunks"]["embedded"] == 0 and again["chunks"]["written"] == 0
    assert again["chunks"]["deleted"] == 0
    return contents


def test_round_trip_restores_store_and_manifest_exactly(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    original, rows = store_contents(kb.cfg), _manifest_rows(kb.cfg)
    sid = _snapshot(kb)
    _destroy(kb)

    report = kb.cli_json("restore", sid, "--yes")
    assert report["snapshot"] == sid and report["points"] == len(original)
    assert report["catch_up"]["chunks"]["embedded"] == 0
    assert report["catch_up"]["chunks"]["written"] == 0
    assert store_contents(kb.cfg) == original      # ids, vector bytes, payloads
    assert _manifest_rows(kb.cfg) == rows
    _healthy(kb)
    assert pending_restore(kb.cfg) is None
    leftovers = [p.name for p in kb.cfg.store_path.parent.iterdir() if ".staging-" in p.name
                 or ".replaced" in p.name or ".restore" in p.name]
    assert leftovers == []


def test_corpus_edited_after_the_snapshot_then_store_lost(built_kb, clean_edited_build) -> None:
    kb = built_kb()
    sid = _snapshot(kb)
    cached_at_snapshot = {r[0] for r in manifest_sql(
        kb.cfg.manifest, "SELECT content_hash FROM embeddings")}
    edit_corpus(kb)
    kb.cli_json("rebuild")
    shutil.rmtree(kb.cfg.store_path)

    report = kb.cli_json("restore", sid, "--yes")
    catch_up = report["catch_up"]
    now_hashes = {r[0] for r in manifest_sql(
        kb.cfg.manifest, "SELECT DISTINCT content_hash FROM chunks")}
    new_since = now_hashes - cached_at_snapshot
    assert new_since, "the edit must have produced new chunk texts"
    assert catch_up["chunks"]["embedded"] == len(new_since)
    assert catch_up["documents"]["changed"] == 1 and catch_up["documents"]["added"] == 1
    assert catch_up["documents"]["removed"] == 1
    assert store_contents(kb.cfg) == clean_edited_build()
    _healthy(kb)


@pytest.mark.parametrize("source,target", [("edge", "qdrant"), ("qdrant", "edge")])
def test_restore_across_backends(tmp_path: Path, built_kb, source: str, target: str) -> None:
    kb = built_kb(tmp_path / "a", backend=source)
    original = store_contents(kb.cfg)
    sid = _snapshot(kb)
    # The same KB configured on the other backend, sharing the snapshot root.
    other = KB(kb.root, kb.corpus, write_config(
        kb.root / "other.toml", kb.corpus, backend=target,
        extra="").parent / "other.toml")
    text = other.config_path.read_text()
    text = text.replace('path = "state/store"', 'path = "state/other-store"')
    text = text.replace('path = "state/manifest.duckdb"', 'path = "state/other.duckdb"')
    other.config_path.write_text(text)

    report = other.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["backend"] == target and report["points"] == len(original)
    restored = store_contents(other.cfg)
    assert set(restored) == set(original)
    assert restored == original
    _healthy(other)


def test_a_damaged_manifest_is_recovered_by_restore(built_kb) -> None:
    kb = built_kb()
    rows = _manifest_rows(kb.cfg)
    sid = _snapshot(kb)
    kb.cfg.manifest.write_bytes(b"this is no longer a DuckDB file" * 100)
    assert kb.cli("status").code == 2

    report = kb.cli_json("restore", sid, "--yes")
    assert report["catch_up"]["chunks"]["embedded"] == 0
    assert _manifest_rows(kb.cfg) == rows
    _healthy(kb)


def _flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def test_latest_skips_a_damaged_snapshot_and_says_so(built_kb) -> None:
    kb = built_kb()
    older = _snapshot(kb)
    original = store_contents(kb.cfg)
    kb.write("later.md", long_markdown("Later", sections=1))
    kb.cli_json("rebuild")
    newer = _snapshot(kb)
    _flip(snapshot_folder(kb.cfg, newer) / "chunks.parquet")
    shutil.rmtree(kb.cfg.store_path)

    res = kb.cli("restore", "--latest", "--yes", "--no-catch-up")
    assert res.code == 0, (res.stdout, res.stderr)
    assert f"skipped snapshot {newer}: Snapshot {newer} is damaged: chunks.parquet" in res.stdout
    assert f"restoring {older}, the newest intact snapshot" in res.stdout
    assert store_contents(kb.cfg) == original


def test_a_damaged_snapshot_is_refused_and_the_kb_untouched(built_kb) -> None:
    kb = built_kb()
    sid = _snapshot(kb)
    _flip(snapshot_folder(kb.cfg, sid) / "points.parquet")
    before, manifest_bytes = store_contents(kb.cfg), kb.cfg.manifest.read_bytes()

    res = kb.cli("restore", sid, "--yes")
    assert res.code == 2
    assert f"Snapshot {sid} is damaged: points.parquet does not match its sha256" in res.stderr
    assert store_contents(kb.cfg) == before
    assert kb.cfg.manifest.read_bytes() == manifest_bytes
    assert pending_restore(kb.cfg) is None


def test_a_copy_that_differs_from_the_snapshot_is_caught(built_kb) -> None:
    """The check before the switch reads the copy back: a changed vector or payload, or an
    extra point, is reported by id."""
    kb = built_kb()
    sid = _snapshot(kb)
    folder = snapshot_folder(kb.cfg, sid)
    body = read_meta(folder)
    with store_for(kb.cfg) as store:
        _verify_copy(store, folder, body, 7, _silent())  # the live store is the snapshot
        victim = next(iter(store_contents_ids(store)))
        p = store.retrieve([victim])[0]
        p.vectors["local"] = -p.vectors["local"]
        store.upsert([p])
        with pytest.raises(StoreError, match=f"vector 'local' of point {victim} differs"):
            _verify_copy(store, folder, body, 7, _silent())
        p.vectors["local"] = -p.vectors["local"]
        p.payload["text"] += "!"
        store.upsert([p])
        with pytest.raises(StoreError, match=f"the payload of point {victim} differs"):
            _verify_copy(store, folder, body, 7, _silent())
        p.payload["text"] = p.payload["text"][:-1]
        store.upsert([p, Point("00000000-0000-4000-8000-000000000001",
                               {"local": p.vectors["local"]}, {})])
        with pytest.raises(StoreError, match="it holds 28 points, the snapshot 27"):
            _verify_copy(store, folder, body, 7, _silent())


def store_contents_ids(store) -> list[str]:
    return sorted(p.id for page in store.scroll(with_vectors=False) for p in page)


def _silent():
    from kbguard.core.progress import SILENT

    return SILENT


def test_refusals_say_what_to_do(tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    sid = _snapshot(kb)
    res = kb.cli("restore", sid)
    assert res.code == 2 and "Pass --yes to confirm" in res.stderr
    res = kb.cli("restore", "--yes")
    assert res.code == 2 and "Name one snapshot ID or pass --latest" in res.stderr
    res = kb.cli("restore", "../../etc", "--yes")
    assert res.code == 2 and "is not a snapshot id" in res.stderr
    res = kb.cli("restore", "20990101T000000.000Z", "--yes")
    assert res.code == 2 and "There is no snapshot 20990101T000000.000Z" in res.stderr

    other = tmp_path / "other.toml"
    other.write_text(kb.config_path.read_text().replace('name = "testkb"', 'name = "otherkb"')
                     .replace("dim = 64", "dim = 32"))
    res = KB(kb.root, kb.corpus, other).cli("restore", sid, "--yes")
    assert res.code == 2 and "is of KB 'testkb', but the config is for KB 'otherkb'" in res.stderr
    other.write_text(kb.config_path.read_text().replace("dim = 64", "dim = 32"))
    res = KB(kb.root, kb.corpus, other).cli("restore", sid, "--yes")
    assert res.code == 2 and "Vectors of different models never mix" in res.stderr


# -- SIGKILL during a restore -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["restore-build:1", "restore-commit:1", "restore-switch:1"])
def test_sigkill_during_a_restore_then_rerun(built_kb, crash_at: str) -> None:
    kb = built_kb()
    sid = _snapshot(kb)
    snap_store, snap_rows = store_contents(kb.cfg), _manifest_rows(kb.cfg)
    edit_corpus(kb)
    kb.cli_json("rebuild")
    old_store, old_rows = store_contents(kb.cfg), _manifest_rows(kb.cfg)
    assert old_store != snap_store

    killed = kb.subprocess("restore", sid, "--yes", "--no-catch-up", "--quiet",
                           env={"KBGUARD_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    journal = pending_restore(kb.cfg)
    assert journal is not None and journal["snapshot"] == sid
    if crash_at == "restore-switch:1":
        # Past the commit point: the store is switched, and the journal says the manifest
        # must follow; nothing else is used until the restore is run again.
        assert journal["phase"] == "switching"
        assert store_contents(kb.cfg) == snap_store
        for command in (["rebuild"], ["verify"], ["snapshot", "create"]):
            refused = kb.cli(*command)
            assert refused.code == 2, (command, refused.stdout, refused.stderr)
            assert f"kbguard restore {sid} --yes" in refused.stderr
        assert kb.cli_json("status")["restore_pending"]["snapshot"] == sid
        assert store_contents(kb.cfg) == snap_store
    else:
        # Before the commit point the KB is the old one, untouched.
        assert store_contents(kb.cfg) == old_store
        assert _manifest_rows(kb.cfg) == old_rows

    again = kb.subprocess("restore", sid, "--yes", "--no-catch-up", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["notes"] and ("interrupted restore" in report["notes"][0])
    assert store_contents(kb.cfg) == snap_store
    assert _manifest_rows(kb.cfg)["chunks"] == snap_rows["chunks"]
    assert _manifest_rows(kb.cfg)["embeddings"] == snap_rows["embeddings"]
    assert pending_restore(kb.cfg) is None
    assert not [p for p in kb.cfg.store_path.parent.iterdir()
                if ".staging-" in p.name or ".replaced" in p.name or ".restore-" in p.name]
    # the catch-up brings the edits back with no embedding of texts the snapshot had
    done = kb.cli_json("rebuild")
    assert store_contents(kb.cfg) == old_store
    assert done["chunks"]["written"] > 0


def test_restore_latest_without_any_snapshot_says_what_to_do(built_kb) -> None:
    kb = built_kb()
    res = kb.cli("restore", "--latest")
    assert res.code == 2 and "no snapshot" in res.stderr and "rebuild --full" in res.stderr


def test_a_restore_keeps_the_history_of_the_kb(built_kb) -> None:
    """The snapshot holds what the KB contains; runs, checks, spend and drills are the live
    manifest's, and a restore must not forget them (the estimates and the runbook read them)."""
    from datetime import datetime

    kb = built_kb()
    sid = _snapshot(kb)
    assert kb.cli("verify").code == 0
    at = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    with Manifest.open(kb.cfg.manifest) as m:
        m.drills.record({"scenario": "store-lost", "started_at": at, "finished_at": at,
                         "status": "passed", "healthy": True, "recovery_s": 2.0})
    before = manifest_sql(kb.cfg.manifest, "SELECT run_id, kind FROM runs ORDER BY run_id")
    [(ledger,)] = manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM ledger")
    assert ledger > 0 and [k for _, k in before] == ["rebuild", "verify"]
    res = kb.cli("restore", sid, "--yes", "--json")
    assert res.code == 0, res.stdout + res.stderr
    runs = manifest_sql(kb.cfg.manifest, "SELECT run_id, kind FROM runs ORDER BY run_id")
    assert runs[:len(before)] == before
    assert [k for _, k in runs[len(before):]] == ["restore", "rebuild"]   # + its catch-up
    assert manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM ledger") == [(ledger,)]
    [(findings,)] = manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM findings")
    assert findings > 0
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        assert [d["scenario"] for d in m.drills.history()] == ["store-lost"]
    # and the ids go on from there
    kb.cli_json("rebuild")
    assert manifest_sql(kb.cfg.manifest, "SELECT max(run_id) FROM runs") == [(runs[-1][0] + 1,)]
    with Manifest.open(kb.cfg.manifest) as m:
        assert m.drills.record({"scenario": "x", "started_at": at, "finished_at": at,
                                "status": "passed", "healthy": True}) == 2


def test_a_restore_over_an_unreadable_manifest_still_restores(built_kb) -> None:
    kb = built_kb()
    sid = _snapshot(kb)
    kb.cfg.manifest.write_bytes(b"not a duckdb file" * 100)
    res = kb.cli("restore", sid, "--yes", "--json")
    assert res.code == 0, res.stdout + res.stderr
    assert kb.cli("verify").code == 0
