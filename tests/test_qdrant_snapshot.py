"""`kbguard restore --from-qdrant-snapshot FILE`: a Qdrant shard snapshot brought into the
embedded Edge store, the manifest rebuilt from the points' payloads, switched in atomically.

No Qdrant server runs here, so the snapshot files are made from Edge shard folders in the
layout a server's shard snapshot has (a tar of ``segments/<id>.tar``, each a plain archive of
one segment's folder, and ``wal/``), which the engine's own ``unpack_snapshot`` reads."""

from __future__ import annotations

import io
import json
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import KB, FAKE_DIM, edit_corpus, manifest_chunk_ids, store_contents

from kbguard.restore import pending_restore
from kbguard.store import Point, VectorSpec
from kbguard.store.edge import EdgeStore


def shard_snapshot(shard: Path, out: Path) -> Path:
    """A shard snapshot file of the closed Edge shard folder ``shard``."""
    with tarfile.open(out, "w") as tar:
        for segment in sorted((shard / "segments").iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(segment.rglob("*")):
                    inner.add(f, arcname=f.relative_to(segment).as_posix(), recursive=False)
            info = tarfile.TarInfo(f"segments/{segment.name}.tar")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        for f in sorted((shard / "wal").rglob("*")):
            tar.add(f, arcname=f.relative_to(shard).as_posix(), recursive=False)
    return out


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
