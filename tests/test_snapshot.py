"""Snapshots: what a snapshot holds, that any flipped byte is caught, that nothing from a
snapshot is trusted blindly, crash-safe creation, retention, and DVC remotes."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kbguard.errors import SnapshotDamaged, SnapshotError
from kbguard.recovery.snapshot import create_snapshot, plan_prune, snapshot_folder
from kbguard.snapshot_format import (
    DATA_FILES,
    META_FILE,
    SnapshotEntry,
    read_meta,
    render_meta,
    verify_folder,
)
from tests.kbtest import DVC, KB, git_dvc_repo, make_kb, store_contents


@pytest.fixture
def built(built_kb) -> KB:
    return built_kb()


def test_create_writes_parquet_files_and_checked_metadata(built: KB) -> None:
    res = built.cli("snapshot", "create")
    assert res.code == 0, res.stderr
    sid = res.stdout.strip()                       # stdout is the id and nothing else
    assert built.cli_json("status")["latest_snapshot"]["id"] == sid
    folder = snapshot_folder(built.cfg, sid)
    # an Edge KB's snapshot also carries the shard's own files (tests/test_fast_snapshot.py)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*DATA_FILES, META_FILE, "shard"])
    body = read_meta(folder)
    assert body["kb"] == "testkb" and body["id"] == sid
    assert body["config"]["vectors"] == [{"name": "local", "dim": 64, "distance": "cosine"}]
    assert body["corpus"]["fingerprint"].startswith("md5set:")
    contents = store_contents(built.cfg)
    assert body["counts"]["points"] == len(contents) == body["counts"]["chunks"]
    for name in DATA_FILES:
        data = (folder / name).read_bytes()
        assert body["files"][name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert body["files"][name]["bytes"] == len(data)
    table = pq.read_table(folder / "points.parquet")
    assert table.column_names == ["id", "vector:local", "payload"]
    row = table.slice(0, 1).to_pylist()[0]
    vectors, payload = contents[row["id"]]
    assert json.loads(row["payload"]) == payload
    assert table.column("vector:local").type.list_size == 64
    assert not [p for p in built.cfg.snapshot_root.iterdir() if p.name.startswith(".tmp-")]

    js = built.cli_json("snapshot", "create")
    assert js["id"] != sid and js["points"] == len(contents)


def test_points_are_streamed_in_batches(built: KB) -> None:
    report = create_snapshot(built.cfg, batch_size=5)
    meta = pq.ParquetFile(Path(report.path) / "points.parquet").metadata
    assert meta.num_rows == 27
    assert meta.num_row_groups == 6                # one row group per store page of 5


@pytest.mark.parametrize("name", [*DATA_FILES, META_FILE])
def test_one_flipped_byte_in_any_file_is_refused(built: KB, name: str) -> None:
    sid = built.cli("snapshot", "create").stdout.strip()
    path = snapshot_folder(built.cfg, sid) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x04
    path.write_bytes(bytes(data))
    before = store_contents(built.cfg)
    manifest = built.cfg.manifest.read_bytes()

    res = built.cli("snapshot", "verify", sid)
    assert res.code == 1
    assert f"Snapshot {sid} is damaged: {name}" in res.stderr
    res = built.cli("restore", sid, "--yes")
    assert res.code == 2 and f"Snapshot {sid} is damaged: {name}" in res.stderr
    assert store_contents(built.cfg) == before
    assert built.cfg.manifest.read_bytes() == manifest


def test_every_single_byte_of_the_metadata_is_covered(built: KB) -> None:
    folder = Path(create_snapshot(built.cfg).path)
    assert verify_folder(folder)["kb"] == "testkb"
    meta = folder / META_FILE
    good = meta.read_bytes()
    for i in range(len(good)):
        for bit in (0x01, 0x20):
            data = bytearray(good)
            data[i] ^= bit
            meta.write_bytes(bytes(data))
            with pytest.raises(SnapshotDamaged):
                read_meta(folder)
    meta.write_bytes(good)
    assert read_meta(folder)["kb"] == "testkb"


def _rewrite_meta(folder: Path, change) -> None:
    """Change the metadata and re-sign it, as someone crafting a snapshot could."""
    body = read_meta(folder)
    change(body)
    (folder / META_FILE).write_bytes(render_meta(body))


def test_file_names_that_lead_outside_the_snapshot_are_refused(built: KB, tmp_path: Path) -> None:
    sid = built.cli("snapshot", "create").stdout.strip()
    folder = snapshot_folder(built.cfg, sid)
    outside = tmp_path / "outside.parquet"
    shutil.copy(folder / "chunks.parquet", outside)

    def escape(body):
        body["files"]["../../outside.parquet"] = body["files"].pop("chunks.parquet")
    _rewrite_meta(folder, escape)
    with pytest.raises(SnapshotError, match="lists the files"):
        verify_folder(folder)

    def back(body):
        body["files"]["chunks.parquet"] = body["files"].pop("../../outside.parquet")
    _rewrite_meta(folder, back)
    verify_folder(folder)
    (folder / "chunks.parquet").unlink()
    (folder / "chunks.parquet").symlink_to(outside)   # same bytes, but outside the folder
    res = built.cli("snapshot", "verify", sid)
    assert res.code == 2 and "chunks.parquet points outside the snapshot folder" in res.stderr
    res = built.cli("restore", sid, "--yes")
    assert res.code == 2 and "points outside the snapshot folder" in res.stderr


@pytest.mark.slow
def test_a_killed_create_leaves_no_snapshot_and_prune_clears_it(built: KB) -> None:
    killed = built.subprocess("snapshot", "create", "--quiet",
                              env={"KBGUARD_CRASH_AT": "snapshot-write:1"})
    assert killed.returncode == -signal.SIGKILL
    root = built.cfg.snapshot_root
    assert [p.name[:5] for p in root.iterdir()] == [".tmp-"]
    assert built.cli_json("snapshot", "list")["snapshots"] == []
    res = built.cli("restore", "--latest", "--yes")
    assert res.code == 2 and "has no snapshot under" in res.stderr
    pruned = built.cli_json("snapshot", "prune", "--keep-last", "1", "--yes")
    assert len(pruned["temporary"]) == 1 and pruned["deleted"] == []
    assert list(root.iterdir()) == []


def _entry(sid: str, created: str) -> SnapshotEntry:
    return SnapshotEntry(sid, Path(sid), created, True, False)


def test_retention_keeps_the_newest_and_one_per_recent_day() -> None:
    entries = [_entry(f"s{i}", t) for i, t in enumerate([
        "2026-11-20T08:00:00+00:00", "2026-11-20T20:00:00+00:00",
        "2026-11-21T09:00:00+00:00", "2026-11-22T07:00:00+00:00",
        "2026-11-22T09:00:00+00:00", "2026-11-22T12:00:00+00:00"])]
    assert plan_prune(entries, 2, 0) == {"s5", "s4"}
    assert plan_prune(entries, 0, 2) == {"s5", "s2"}
    assert plan_prune(entries, 1, 3) == {"s5", "s2", "s1"}
    assert plan_prune(entries, 0, 10) == {"s5", "s2", "s1"}


def test_prune_cli_dry_run_then_delete(built: KB) -> None:
    ids = [built.cli("snapshot", "create").stdout.strip() for _ in range(3)]
    dry = built.cli("snapshot", "prune", "--keep-last", "1", "--dry-run")
    assert dry.code == 0 and f"would delete  {ids[0]}" in dry.stdout
    assert len(built.cli_json("snapshot", "list")["snapshots"]) == 3
    res = built.cli("snapshot", "prune", "--keep-last", "1")
    assert res.code == 2 and "Pass --yes to confirm" in res.stderr
    res = built.cli("snapshot", "prune", "--keep-last", "0", "--keep-daily", "0", "--yes")
    assert res.code == 2 and "would delete every snapshot" in res.stderr
    done = built.cli_json("snapshot", "prune", "--keep-last", "1", "--yes")
    assert done["deleted"] == ids[:2] and done["kept"] == ids[2:]
    assert [s["id"] for s in built.cli_json("snapshot", "list")["snapshots"]] == ids[2:]


def test_snapshot_of_a_kb_without_a_store_says_what_to_do(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    res = kb.cli("snapshot", "create")
    assert res.code == 2 and "Run `kbguard rebuild` first" in res.stderr
    kb.cli_json("rebuild")
    shutil.rmtree(kb.cfg.store_path)
    res = kb.cli("snapshot", "create")
    assert res.code == 2 and "store does not exist" in res.stderr
    assert not list(kb.cfg.snapshot_root.iterdir())


@pytest.mark.slow
def test_snapshots_on_a_dvc_remote(tmp_path: Path, built_kb) -> None:
    repo = tmp_path / "repo"
    kb = built_kb(repo)
    run = git_dvc_repo(repo)
    remote = tmp_path / "remote"
    run(*DVC, "remote", "add", "-d", "store", str(remote))
    original = store_contents(kb.cfg)

    created = kb.cli_json("snapshot", "create", "--dvc-push")
    sid = created["id"]
    assert created["dvc"]["dvc_file"] == f"state/snapshots/{sid}.dvc"
    assert any(remote.rglob("*")), "the snapshot was pushed to the remote"
    # Lose the snapshot, the DVC cache and the store: only the .dvc file and the remote remain.
    shutil.rmtree(snapshot_folder(kb.cfg, sid))
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(kb.cfg.store_path)
    listed = kb.cli_json("snapshot", "list")["snapshots"]
    assert [(s["id"], s["local"], s["dvc"]) for s in listed] == [(sid, False, True)]

    report = kb.cli_json("restore", "--latest", "--yes")
    assert report["snapshot"] == sid
    assert store_contents(kb.cfg) == original
    verify_folder(snapshot_folder(kb.cfg, sid))

    res = kb.cli("snapshot", "prune", "--keep-last", "1", "--yes")
    assert res.code == 0
    no_dvc = built_kb(tmp_path / "plain")
    res = no_dvc.cli("snapshot", "create", "--dvc-push")
    assert res.code == 2 and "is not inside a DVC repository" in res.stderr
