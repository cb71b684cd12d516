"""Snapshots that carry an Edge store's own shard files, and restores that copy them back:
taken when the engine versions match, checked point by point before the switch, and given up
for the Parquet path (with the reason in the report) whenever anything does not match."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from kbguard.recovery.restore import pending_restore
from kbguard.recovery.snapshot import snapshot_folder
from kbguard.snapshot_format import META_FILE, SHARD_DIR, read_meta, render_meta, verify_folder
from kbguard.store.edge import ENGINE, engine_version
from tests.kbtest import KB, edit_corpus, manifest_sql, store_contents


def _snapshot(kb: KB) -> tuple[str, Path]:
    res = kb.cli("snapshot", "create")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    sid = res.stdout.strip()
    return sid, snapshot_folder(kb.cfg, sid)


def _rewrite_meta(folder: Path, change) -> None:
    """Change snapshot.json's body and give it a matching checksum, as a snapshot written by
    another kbguard would have."""
    body = read_meta(folder)
    change(body)
    (folder / META_FILE).write_bytes(render_meta(body))


def _largest_data_file(folder: Path) -> str:
    """The shard file with the most bytes written (not holes): the vectors or payloads."""
    body = read_meta(folder)
    files = body["shard"]["files"]
    return max((rel for rel in files if rel.startswith("segments/")),
               key=lambda rel: (folder / SHARD_DIR / rel).stat().st_blocks)


def _restored_from_parquet(kb: KB, sid: str, original: dict, why: str) -> None:
    """Restoring ``sid`` fell back to the Parquet files, said ``why``, and brought back
    exactly ``original``, leaving nothing behind."""
    report = kb.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["method"] == "parquet"
    [note] = report["notes"]
    assert why in note
    assert store_contents(kb.cfg) == original
    _no_leftovers(kb)


def _no_leftovers(kb: KB) -> None:
    assert pending_restore(kb.cfg) is None
    assert not [p for p in kb.cfg.store_path.parent.iterdir()
                if ".staging-" in p.name or ".replaced" in p.name or ".restore-" in p.name]


def test_an_edge_snapshot_lists_every_shard_file_with_its_sha256(built_kb) -> None:
    kb = built_kb()
    sid, folder = _snapshot(kb)
    body = read_meta(folder)
    shard = body["shard"]
    assert shard["engine"] == ENGINE and shard["engine_version"] == engine_version()
    on_disk = {p.relative_to(kb.cfg.store_path).as_posix()
               for p in kb.cfg.store_path.rglob("*") if p.is_file()}
    assert set(shard["files"]) == on_disk          # the whole shard folder, nothing else
    assert "edge_config.json" in shard["files"]
    for rel, entry in shard["files"].items():
        data = (folder / SHARD_DIR / rel).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    # the copy keeps the engine's sparse preallocation sparse
    blocks = sum((folder / SHARD_DIR / rel).stat().st_blocks * 512 for rel in shard["files"])
    assert blocks < sum(e["bytes"] for e in shard["files"].values()) / 2
    assert kb.cli_json("snapshot", "verify", sid)["ok"] is True


def test_a_shard_file_a_snapshot_cannot_list_leaves_the_snapshot_parquet_only(built_kb) -> None:
    kb = built_kb()
    original = store_contents(kb.cfg)
    (kb.cfg.store_path / ".stray").write_text("not the engine's")
    report = kb.cli_json("snapshot", "create")
    assert report["notes"] == [
        "this snapshot holds no shard files (the shard holds a file named '.stray', which a "
        "snapshot cannot list); a restore rebuilds the store from its Parquet files"]
    folder = snapshot_folder(kb.cfg, report["id"])
    assert "shard" not in read_meta(folder) and not (folder / SHARD_DIR).exists()
    restored = kb.cli_json("restore", report["id"], "--yes", "--no-catch-up")
    assert restored["method"] == "parquet" and restored["notes"] == []
    assert store_contents(kb.cfg) == original


def test_snapshot_verify_catches_a_damaged_shard_file(built_kb) -> None:
    kb = built_kb()
    sid, folder = _snapshot(kb)
    rel = _largest_data_file(folder)
    path = folder / SHARD_DIR / rel
    data = bytearray(path.read_bytes())
    data[next(i for i, b in enumerate(data) if b)] ^= 0x10
    path.write_bytes(bytes(data))
    res = kb.cli("snapshot", "verify", sid, "--json")
    assert res.code == 1, (res.stdout, res.stderr)
    check = json.loads(res.stdout)
    assert check["ok"] is False and check["damaged_file"] == f"{SHARD_DIR}/{rel}"
    assert "A restore still works from its Parquet files" in check["problem"]


def test_restore_copies_the_shard_files_when_the_engine_versions_match(built_kb) -> None:
    kb = built_kb()
    original = store_contents(kb.cfg)
    sid, _ = _snapshot(kb)
    edit_corpus(kb)
    kb.cli_json("rebuild")
    assert store_contents(kb.cfg) != original

    res = kb.cli("restore", sid, "--yes", "--no-catch-up")
    assert res.code == 0 and "  from       shard files\n" in res.stdout, res.stderr
    report = kb.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["method"] == "shard files" and report["notes"] == []
    assert "copy shard files" in report["stages"] and "build" not in report["stages"]
    assert report["points"] == len(original)
    assert store_contents(kb.cfg) == original
    _no_leftovers(kb)
    again = kb.cli_json("rebuild")          # the manifest came back with the store
    assert again["chunks"]["embedded"] > 0 or again["chunks"]["written"] > 0


def test_a_damaged_shard_file_falls_back_to_parquet_and_says_why(built_kb) -> None:
    kb = built_kb()
    original = store_contents(kb.cfg)
    sid, folder = _snapshot(kb)
    rel = _largest_data_file(folder)
    path = folder / SHARD_DIR / rel
    data = bytearray(path.read_bytes())
    data[next(i for i, b in enumerate(data) if b)] ^= 0x10
    path.write_bytes(bytes(data))

    report = kb.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["method"] == "parquet"
    [note] = report["notes"]
    assert note.startswith("the snapshot's shard files could not be used (")
    assert f"{SHARD_DIR}/{rel} does not match its sha256" in note
    assert note.endswith("restored from its Parquet files instead")
    assert store_contents(kb.cfg) == original
    _no_leftovers(kb)


def test_a_shard_that_reads_back_wrong_falls_back_to_parquet(built_kb) -> None:
    """A shard file changed together with its listed sha256 passes the copy, but not the
    point-by-point read-back: a vector that loads silently wrong is still caught."""
    kb = built_kb()
    original = store_contents(kb.cfg)
    sid, folder = _snapshot(kb)
    [rel] = [r for r in read_meta(folder)["shard"]["files"] if r.endswith("chunk_0.mmap")]
    path = folder / SHARD_DIR / rel
    data = bytearray(path.read_bytes())
    data[100] ^= 0x40                      # inside the first stored vector
    path.write_bytes(bytes(data))

    def relist(body):
        body["shard"]["files"][rel]["sha256"] = hashlib.sha256(data).hexdigest()
    _rewrite_meta(folder, relist)

    _restored_from_parquet(kb, sid, original,
                           "does not match the snapshot: vector 'local' of point")


def test_another_engine_version_restores_from_parquet(built_kb) -> None:
    kb = built_kb()
    original = store_contents(kb.cfg)
    sid, folder = _snapshot(kb)
    _rewrite_meta(folder, lambda body: body["shard"].update(engine_version="0.0.1"))
    verify_folder(folder)                  # still an intact snapshot

    report = kb.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["method"] == "parquet"
    assert report["notes"] == [
        f"restored from the snapshot's Parquet files: the shard files are from {ENGINE} "
        f"0.0.1, and this is {ENGINE} {engine_version()}; a shard loads only into the engine "
        "version that wrote it"]
    assert store_contents(kb.cfg) == original
    _no_leftovers(kb)


def test_a_snapshot_without_shard_files_stays_valid(built_kb) -> None:
    """Snapshots taken before shard files existed (and qdrant-client ones) hold none."""
    kb = built_kb()
    original = store_contents(kb.cfg)
    sid, folder = _snapshot(kb)
    _rewrite_meta(folder, lambda body: body.pop("shard"))
    assert kb.cli_json("snapshot", "verify", sid)["ok"] is True
    res = kb.cli("restore", sid, "--yes", "--no-catch-up")
    assert res.code == 0, res.stderr
    assert "  from       parquet\n" in res.stdout and "note" not in res.stdout
    assert store_contents(kb.cfg) == original


def test_a_cross_backend_restore_uses_parquet(tmp_path: Path, built_kb) -> None:
    edge = built_kb(tmp_path / "edge")
    original = store_contents(edge.cfg)
    sid, folder = _snapshot(edge)
    qdrant = built_kb(tmp_path / "qdrant", backend="qdrant")
    target = qdrant.cfg.snapshot_root / sid
    target.parent.mkdir(parents=True, exist_ok=True)
    import shutil
    shutil.copytree(folder, target)

    report = qdrant.cli_json("restore", sid, "--yes", "--no-catch-up")
    assert report["method"] == "parquet" and report["backend"] == "qdrant"
    assert report["notes"] == [
        "restored from the snapshot's Parquet files: the KB's store is qdrant, and the shard "
        "files are a Qdrant Edge store's"]
    assert store_contents(qdrant.cfg) == original


def test_a_shard_file_name_leading_outside_is_refused(built_kb) -> None:
    kb = built_kb()
    sid, folder = _snapshot(kb)
    _rewrite_meta(folder, lambda body: body["shard"]["files"].update(
        {"../../etc/passwd": {"sha256": "0" * 64, "bytes": 1}}))
    before = store_contents(kb.cfg)
    res = kb.cli("restore", sid, "--yes", "--no-catch-up")
    assert res.code == 2 and "is not a plain path inside the snapshot" in res.stderr
    assert store_contents(kb.cfg) == before


@pytest.mark.slow
@pytest.mark.parametrize("crash_at", ["restore-build:2", "restore-commit:1",
                                      "restore-switch:1"])
def test_sigkill_during_a_fast_restore_leaves_old_or_new(built_kb, crash_at: str) -> None:
    kb = built_kb()
    sid, _ = _snapshot(kb)
    snap_store = store_contents(kb.cfg)
    edit_corpus(kb)
    kb.cli_json("rebuild")
    old_store = store_contents(kb.cfg)

    killed = kb.subprocess("restore", sid, "--yes", "--no-catch-up", "--quiet",
                           env={"KBGUARD_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    journal = pending_restore(kb.cfg)
    assert journal is not None and journal["snapshot"] == sid
    if crash_at == "restore-switch:1":
        assert journal["phase"] == "switching" and store_contents(kb.cfg) == snap_store
    else:
        assert store_contents(kb.cfg) == old_store
        if crash_at == "restore-build:2":   # killed half-way through copying the shard files
            [staging] = [p for p in kb.cfg.store_path.parent.iterdir() if ".staging-" in p.name]
            assert any(staging.rglob("*"))

    again = kb.subprocess("restore", sid, "--yes", "--no-catch-up", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert "interrupted restore" in report["notes"][0]
    assert report["method"] == ("shard files" if crash_at == "restore-build:2" else "finished")
    assert store_contents(kb.cfg) == snap_store
    _no_leftovers(kb)


# -- points.parquet written from the manifest ---------------------------------------------------

def _snapshot_points(folder: Path) -> dict[str, tuple[bytes, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(folder / "points.parquet")
    rows = table.to_pylist()
    return {r["id"]: (np.asarray(r["vector:local"], dtype="<f4").tobytes(),
                      json.loads(r["payload"])) for r in rows}


def test_the_points_file_is_the_manifest_s_and_equals_the_store(built_kb) -> None:
    """Written from the manifest (no scroll of the store), point for point what the store
    holds, payload text with quotes, backslashes and non-ASCII characters included."""
    kb = built_kb()
    kb.write("odd.md", '# Quotes "here"\n\nA back\\slash, tabs\tand ünïcødé — 日本語.\n')
    kb.cli_json("rebuild")
    original = store_contents(kb.cfg)
    report = kb.cli_json("snapshot", "create")
    assert report["notes"] == []
    assert "shard files (beside the points)" in report["stages"]
    got = _snapshot_points(snapshot_folder(kb.cfg, report["id"]))
    assert got == {pid: (vecs["local"], payload) for pid, (vecs, payload) in original.items()}


def test_a_store_damaged_when_snapshotted_is_restored_from_the_manifest_s_points(
        built_kb) -> None:
    """The shard files are the store's bytes, points.parquet the manifest's: a vector file
    damaged in place (the engine loads it silently) is found by the restore's read-back,
    which then restores from Parquet, so the damage is not carried back."""
    kb = built_kb()
    original = store_contents(kb.cfg)
    [matrix] = [p for p in kb.cfg.store_path.rglob("chunk_0.mmap")]
    data = bytearray(matrix.read_bytes())
    data[100] ^= 0x40                      # inside the first stored vector
    matrix.write_bytes(bytes(data))
    assert store_contents(kb.cfg) != original   # loads silently, wrong
    sid, _ = _snapshot(kb)
    _restored_from_parquet(kb, sid, original,
                           "does not match the snapshot: vector 'local' of point")


def test_pending_writes_take_the_points_from_the_store(built_kb) -> None:
    kb = built_kb()
    original = store_contents(kb.cfg)
    manifest_sql(kb.cfg.manifest, "UPDATE store_state SET confirmed = false WHERE point_id IN "
                 "(SELECT point_id FROM store_state ORDER BY point_id LIMIT 2)", write=True)
    report = kb.cli_json("snapshot", "create")
    assert "the points were read from the store: 2 point writes are not confirmed" in (
        report["notes"])
    folder = snapshot_folder(kb.cfg, report["id"])
    assert len(_snapshot_points(folder)) == len(original)
    restored = kb.cli_json("restore", report["id"], "--yes", "--no-catch-up")
    assert restored["method"] == "shard files"
    assert store_contents(kb.cfg) == original


def test_a_damaged_cache_row_takes_the_points_from_the_store(built_kb) -> None:
    """A cached vector that fails its checksum never goes into points.parquet: the store's
    copy of it does, as before."""
    kb = built_kb()
    original = store_contents(kb.cfg)
    [(blob, h)] = manifest_sql(kb.cfg.manifest,
                               "SELECT vector, content_hash FROM embeddings LIMIT 1")
    bad = bytearray(blob)
    bad[0] ^= 0x01
    manifest_sql(kb.cfg.manifest, "UPDATE embeddings SET vector = ? WHERE content_hash = ?",
                 [bytes(bad), h], write=True)
    report = kb.cli_json("snapshot", "create")
    assert ("the points were read from the store: a cached 'local' vector fails its checksum "
            "(`kbguard verify` names it)") in report["notes"]
    got = _snapshot_points(snapshot_folder(kb.cfg, report["id"]))
    assert got == {pid: (vecs["local"], payload) for pid, (vecs, payload) in original.items()}
