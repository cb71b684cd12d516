"""`kbguard restore --from-qdrant-snapshot FILE`: a Qdrant shard snapshot brought into the
embedded Edge store, the manifest rebuilt from the points' payloads, switched in atomically.

No Qdrant server runs here, so the snapshot files are made from Edge shard folders in the
layout a server's shard snapshot has (a tar of ``segments/<id>.tar``, each a plain archive of
one segment's folder, and ``wal/``), which the engine's own ``unpack_snapshot`` reads."""

from __future__ import annotations

import io
import json
import re
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest

from kbguard.errors import SnapshotWrongModel
from kbguard.recovery.restore import pending_restore, restore_from_qdrant_snapshot
from kbguard.store import Point, VectorSpec
from kbguard.store.edge import EdgeStore
from tests.kbtest import (
    FAKE_DIM,
    KB,
    api_kb,
    edit_corpus,
    make_kb,
    manifest_chunk_ids,
    shard_snapshot,
    store_contents,
)
from tests.openai_server import OpenAIServer


def foreign_snapshot(tmp: Path, name: str, dim: int, payload: dict) -> Path:
    """A snapshot of a collection kbguard did not build: one point."""
    store = EdgeStore(tmp / "foreign")
    store.create([VectorSpec(name, dim, "cosine")])
    vector = np.ones(dim, dtype=np.float32) / np.sqrt(np.float32(dim))
    store.upsert([Point("00000000-0000-0000-0000-000000000001", {name: vector}, payload)])
    store.flush()
    store.close()
    return shard_snapshot(tmp / "foreign", tmp / "foreign.snapshot")


def _untouched(kb: KB, before: dict) -> None:
    assert store_contents(kb.cfg) == before
    assert pending_restore(kb.cfg) is None
    assert not [p for p in kb.cfg.store_path.parent.iterdir()
                if ".staging-" in p.name or ".restore-" in p.name or ".replaced" in p.name]


def test_a_kbguard_collection_s_snapshot_becomes_the_kb(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    original = store_contents(kb.cfg)
    ids = manifest_chunk_ids(kb.cfg)
    snap = shard_snapshot(kb.cfg.store_path, tmp_path / "server.snapshot")
    edit_corpus(kb)
    kb.cli_json("rebuild")
    assert store_contents(kb.cfg) != original
    for p in [kb.corpus / "doc1.md", kb.corpus / "new.md"]:
        p.unlink()
    built_kb(tmp_path / "pristine")           # the corpus as it was when the snapshot was taken
    for p in (tmp_path / "pristine" / "corpus").iterdir():
        (kb.corpus / p.name).write_bytes(p.read_bytes())

    report = kb.cli_json("restore", "--from-qdrant-snapshot", str(snap), "--yes")
    assert report["method"] == "qdrant snapshot"
    assert report["snapshot"] == "qdrant:server.snapshot"
    assert report["points"] == len(original)
    # the manifest rebuilt from the payloads: the cache holds every vector, so the catch-up
    # re-reads the documents without one embedding call and writes nothing
    assert report["catch_up"]["chunks"]["embedded"] == 0
    assert report["catch_up"]["chunks"]["written"] == 0
    assert store_contents(kb.cfg) == original
    assert manifest_chunk_ids(kb.cfg) == ids
    assert kb.cli("verify").code == 0
    _untouched(kb, original)


def test_a_snapshot_with_other_vectors_is_refused_naming_them(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    before = store_contents(kb.cfg)
    snap = foreign_snapshot(tmp_path, "dense", 8, {"title": "x"})
    res = kb.cli("restore", "--from-qdrant-snapshot", str(snap), "--yes")
    assert res.code == 2, (res.stdout, res.stderr)
    assert (f"The Qdrant snapshot foreign.snapshot holds the vectors dense (8-d cosine), but "
            f"the config's spaces are local ({FAKE_DIM}-d cosine)") in " ".join(res.stderr.split())
    _untouched(kb, before)


def test_a_collection_kbguard_did_not_build_is_refused(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    before = store_contents(kb.cfg)
    snap = foreign_snapshot(tmp_path, "local", FAKE_DIM, {"title": "x"})
    res = kb.cli("restore", "--from-qdrant-snapshot", str(snap), "--yes")
    assert res.code == 2
    err = " ".join(res.stderr.split())
    assert ("was not written by kbguard for KB 'testkb' (its payload has the keys ['title']), "
            "so the manifest cannot be rebuilt from the points") in err
    _untouched(kb, before)


def test_a_file_that_is_no_shard_snapshot_is_refused(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    before = store_contents(kb.cfg)
    junk = tmp_path / "junk.snapshot"
    junk.write_bytes(b"not a tar archive" * 100)
    res = kb.cli("restore", "--from-qdrant-snapshot", str(junk), "--yes")
    assert res.code == 2
    assert "is not a Qdrant shard snapshot the engine can unpack" in " ".join(res.stderr.split())
    _untouched(kb, before)


@pytest.mark.parametrize("crash_at", ["restore-commit:1", "restore-switch:1"])
def test_sigkill_during_an_import_leaves_old_or_new(built_kb, tmp_path: Path,
                                                    crash_at: str) -> None:
    kb = built_kb(tmp_path / "kb")
    original = store_contents(kb.cfg)
    snap = shard_snapshot(kb.cfg.store_path, tmp_path / "server.snapshot")
    edit_corpus(kb)
    kb.cli_json("rebuild")
    old = store_contents(kb.cfg)
    killed = kb.subprocess("restore", "--from-qdrant-snapshot", str(snap), "--yes",
                           "--no-catch-up", "--quiet", env={"KBGUARD_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    journal = pending_restore(kb.cfg)
    assert journal is not None
    assert store_contents(kb.cfg) == (original if crash_at == "restore-switch:1" else old)
    again = kb.subprocess("restore", "--from-qdrant-snapshot", str(snap), "--yes",
                          "--no-catch-up", "--json")
    assert again.returncode == 0, again.stderr
    assert store_contents(kb.cfg) == original
    assert "interrupted restore" in json.loads(again.stdout)["notes"][0]
    _untouched(kb, original)


def _with_extras(snap: Path, extras: int, outside: Path) -> Path:
    """The snapshot file with members no shard has: ``extras`` small files beside its own,
    one at an absolute path and one under ``..`` (both naming ``outside``), one climbing out
    of ``segments/``."""
    with tarfile.open(snap, "a") as tar:
        def add(name: str, data: bytes = b"x") -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for i in range(extras):
            add(f"junk/{i // 100}/file{i}.bin")
        add(outside.as_posix())
        add(f"../{outside.name}")
        add("segments/../../climbs.txt")
    return snap


def test_members_outside_a_shard_s_layout_are_left_out(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    original = store_contents(kb.cfg)
    snap = shard_snapshot(kb.cfg.store_path, tmp_path / "server.snapshot")
    layout = sorted(p.relative_to(kb.cfg.store_path).parts[0]
                    for p in kb.cfg.store_path.iterdir())
    outside = tmp_path / "outside" / "planted.txt"
    outside.parent.mkdir()
    _with_extras(snap, 1000, outside)
    edit_corpus(kb)
    kb.cli_json("rebuild")

    report = kb.cli_json("restore", "--from-qdrant-snapshot", str(snap), "--yes",
                         "--no-catch-up")
    assert store_contents(kb.cfg) == original
    # nothing but the shard's own files in the live store, and nothing written elsewhere
    assert sorted(p.name for p in kb.cfg.store_path.iterdir()) == layout
    assert not [p for p in kb.cfg.store_path.rglob("*")
                if p.name in ("planted.txt", "climbs.txt") or "junk" in p.parts]
    assert list(outside.parent.iterdir()) == []
    assert not (tmp_path / "climbs.txt").exists()
    assert not (tmp_path / "kb" / "climbs.txt").exists()
    left_out = [n for n in report["notes"] if "outside a shard's layout" in n]
    assert left_out and "1,003 member" in left_out[0], report["notes"]
    assert kb.cli("verify").code == 1   # the catch-up was skipped: the corpus moved on
    kb.cli_json("rebuild")
    assert kb.cli("verify").code == 0
    _untouched(kb, store_contents(kb.cfg))


@pytest.mark.model
def test_another_model_s_vectors_are_refused_with_the_cosine_found(tmp_path: Path) -> None:
    """Same KB name, space name and dimension, another model: the vectors are re-embedded in
    a sample, as `verify --sample` does, and the import is refused before the switch."""
    kb = make_kb(tmp_path / "kb", provider="sentence-transformers", dim=384, max_tokens=128)
    kb.cli_json("rebuild")
    own = shard_snapshot(kb.cfg.store_path, tmp_path / "own.snapshot")
    other = make_kb(tmp_path / "other", provider="fake", dim=384, max_tokens=128)
    other.cli_json("rebuild")
    assert other.cfg.kb == kb.cfg.kb and other.cfg.spaces[0].name == kb.cfg.spaces[0].name
    snap = shard_snapshot(other.cfg.store_path, tmp_path / "fake-model.snapshot")
    before = store_contents(kb.cfg)

    res = kb.cli("restore", "--from-qdrant-snapshot", str(snap), "--yes", "--json")
    assert res.code == 2, (res.stdout, res.stderr)
    error = json.loads(res.stdout)
    assert error["error_type"] == "SnapshotWrongModel"
    assert re.search(r"gives cosine as low as -?0\.\d{4}, at least 0\.999 is required",
                     error["error"]), error["error"]
    with pytest.raises(SnapshotWrongModel) as refused:
        restore_from_qdrant_snapshot(kb.cfg, snap, catch_up=False)
    assert refused.value.space == "local" and refused.value.cosine < 0.5
    _untouched(kb, before)
    assert kb.cli("verify").code == 0

    # the KB's own model passes the same check
    report = kb.cli_json("restore", "--from-qdrant-snapshot", str(own), "--yes")
    assert report["catch_up"]["chunks"]["embedded"] == 0
    assert store_contents(kb.cfg) == before
    _untouched(kb, before)


def test_vectors_that_cannot_be_checked_now_are_not_imported(tmp_path: Path,
                                                            server: OpenAIServer) -> None:
    kb = api_kb(tmp_path / "kb", server.url)
    kb.cli_json("rebuild")
    snap = shard_snapshot(kb.cfg.store_path, tmp_path / "server.snapshot")
    before = store_contents(kb.cfg)
    server.fail("status", times=100, code=503)     # the primary's API is down
    res = kb.cli("restore", "--from-qdrant-snapshot", str(snap), "--yes")
    assert res.code == 2, (res.stdout, res.stderr)
    assert ("could not be checked against the config's models" in " ".join(res.stderr.split())
            and "Run the restore again when the provider answers" in res.stderr)
    _untouched(kb, before)
    server.clear_faults()
    assert kb.cli_json("restore", "--from-qdrant-snapshot", str(snap), "--yes")["points"] \
        == len(before)
    assert store_contents(kb.cfg) == before
