"""The ways back from a broken KB that the messages recommend must work: `rebuild --full` and
`restore` replace a store that cannot be opened, a killed rebuild is reported as interrupted,
and a missing store or an empty corpus is named with the command that fixes it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
from pathlib import Path

import pytest

from kbguard.manifest import Manifest
from tests.kbtest import KB, make_kb, manifest_chunk_ids, store_contents, write_config


def _built(tmp_path: Path, backend: str) -> KB:
    kb = make_kb(tmp_path, backend=backend)
    kb.cli_json("rebuild")
    return kb


def _cache_rows(kb: KB) -> int:
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        return m.cache.count()


def _assert_unreadable(kb: KB) -> None:
    res = kb.cli("search", "anything")
    assert res.code == 2 and "cannot be opened" in res.stderr, (res.stdout, res.stderr)


# -- an unreadable store ----------------------------------------------------------------------

def test_full_rebuild_replaces_an_unreadable_store_without_embedding(tmp_path: Path,
                                                                      backend: str) -> None:
    kb = _built(tmp_path, backend)
    before = store_contents(kb.cfg)
    cached = _cache_rows(kb)
    assert kb.cli("chaos", "truncate-store", "--yes").code == 0
    _assert_unreadable(kb)

    res = kb.cli("rebuild", "--full", "--json")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    report = json.loads(res.stdout)
    assert report["chunks"]["embedded"] == 0
    assert report["chunks"]["written"] == len(before)
    assert any("could not be opened" in n for n in report["notes"]), report["notes"]
    assert _cache_rows(kb) == cached
    assert store_contents(kb.cfg) == before
    assert kb.cli_json("verify")["healthy"]


def test_restore_replaces_an_unreadable_store(tmp_path: Path, backend: str) -> None:
    kb = _built(tmp_path, backend)
    before = store_contents(kb.cfg)
    assert kb.cli("snapshot", "create").code == 0
    assert kb.cli("chaos", "truncate-store", "--yes").code == 0
    _assert_unreadable(kb)

    res = kb.cli("restore", "--latest", "--yes", "--json")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    report = json.loads(res.stdout)
    # an Edge shard is set aside by the switch unread; a local folder must open to build in
    said = any("could not be opened" in n for n in report["notes"])
    assert said == (backend == "qdrant"), report["notes"]
    assert report["catch_up"]["chunks"]["embedded"] == 0
    assert kb.cli_json("verify")["healthy"]
    assert store_contents(kb.cfg) == before


def test_a_refused_snapshot_leaves_the_unreadable_store_alone(tmp_path: Path) -> None:
    kb = _built(tmp_path, "qdrant")
    assert kb.cli("chaos", "truncate-store", "--yes").code == 0
    files = sorted(p.relative_to(kb.cfg.store_path) for p in kb.cfg.store_path.rglob("*"))

    res = kb.cli("restore", "20990101T000000.000Z", "--yes")
    assert res.code == 2
    assert sorted(p.relative_to(kb.cfg.store_path)
                  for p in kb.cfg.store_path.rglob("*")) == files


def test_dropping_an_unreadable_local_folder_keeps_other_collections(tmp_path: Path) -> None:
    """Two KBs may share one qdrant-client local folder: clearing one KB's damaged collection
    must leave the other's intact."""
    from kbguard.errors import StoreDamaged
    from kbguard.store import Point, VectorSpec, open_store

    folder = tmp_path / "store"
    other = open_store("qdrant", path=folder, collection="other")
    other.create([VectorSpec("v", 4)])
    other.upsert([Point("00000000-0000-4000-8000-000000000001",
                        {"v": [0.5, 0.5, 0.5, 0.5]}, {"k": 1})])
    other.close()
    mine = open_store("qdrant", path=folder, collection="mine")
    mine.create([VectorSpec("v", 4)])
    mine.close()
    sqlite = folder / "collection" / "mine" / "storage.sqlite"
    sqlite.write_bytes(sqlite.read_bytes()[: sqlite.stat().st_size // 2])
    with pytest.raises(StoreDamaged):
        mine.describe()

    mine.drop()
    assert not mine.describe().exists
    mine.close()
    assert not (folder / "collection" / "mine").exists()
    assert not any(p.name.startswith(".dropped") for p in folder.iterdir())
    with open_store("qdrant", path=folder, collection="other") as again:
        assert again.count() == 1


@pytest.mark.parametrize("shared", [False, True])
def test_dropping_a_local_folder_with_an_unreadable_meta_file(tmp_path: Path,
                                                             shared: bool) -> None:
    """Without meta.json nothing says whose collections a folder holds: kbguard deletes the
    folder's collections only when every one of them is this KB's."""
    from kbguard.errors import StoreDamaged
    from kbguard.store import VectorSpec, open_store

    folder = tmp_path / "store"
    for name in (["mine", "other"] if shared else ["mine", "mine--1a2b3c4d"]):
        with open_store("qdrant", path=folder, collection=name) as s:
            s.create([VectorSpec("v", 4)])
    (folder / "meta.json").write_text('{"collections": {"mi')
    mine = open_store("qdrant", path=folder, collection="mine")
    if shared:
        with pytest.raises(StoreDamaged, match="will not guess"):
            mine.drop()
        assert sorted(p.name for p in (folder / "collection").iterdir()) == ["mine", "other"]
        return
    mine.drop()
    assert not mine.describe().exists
    mine.close()
    assert not any((folder / "collection").iterdir())


def test_dropping_a_local_folder_another_client_holds_is_refused(tmp_path: Path) -> None:
    from kbguard.errors import StoreUnavailable
    from kbguard.store import VectorSpec, open_store

    folder = tmp_path / "store"
    holder = open_store("qdrant", path=folder, collection="kb")
    holder.create([VectorSpec("v", 4)])
    sqlite = folder / "collection" / "kb" / "storage.sqlite"
    sqlite.write_bytes(sqlite.read_bytes()[: sqlite.stat().st_size // 2])
    try:
        # the holder loaded the folder before the damage: another opener now sees damage
        # while the folder is still in use, and must not delete it under the holder
        with pytest.raises(StoreUnavailable, match="in another process"):
            open_store("qdrant", path=folder, collection="kb").drop()
        assert sqlite.exists()
    finally:
        holder.close()


def test_dropping_a_damaged_shard_another_opener_holds_is_refused(tmp_path: Path) -> None:
    from kbguard.errors import StoreUnavailable
    from kbguard.store import Point, VectorSpec, open_store

    folder = tmp_path / "store"
    holder = open_store("edge", path=folder)
    holder.create([VectorSpec("v", 4)])
    holder.upsert([Point("00000000-0000-4000-8000-000000000001", {"v": [0.5] * 4}, {})])
    holder.flush()
    for f in folder.glob("segments/*/segment.json"):
        f.write_bytes(f.read_bytes()[:10])
    try:
        with pytest.raises(StoreUnavailable, match="open in another process"):
            open_store("edge", path=folder).drop()
        assert folder.is_dir()
    finally:
        holder.close()
    open_store("edge", path=folder).drop()
    assert not folder.exists()


def test_restore_after_a_killed_one_clears_an_unreadable_local_folder(tmp_path: Path) -> None:
    kb = _built(tmp_path, "qdrant")
    before = store_contents(kb.cfg)
    assert kb.cli("snapshot", "create").code == 0
    killed = kb.subprocess("restore", "--latest", "--yes", "--quiet",
                           env={"KBGUARD_CRASH_AT": "restore-build:1"})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    assert kb.cli("chaos", "truncate-store", "--yes").code == 0   # live and staging copy
    _assert_unreadable(kb)

    res = kb.cli("restore", "--latest", "--yes", "--json")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    notes = json.loads(res.stdout)["notes"]
    assert any("had not switched over" in n for n in notes), notes
    assert any("could not be opened" in n for n in notes), notes
    assert kb.cli_json("verify")["healthy"]
    assert store_contents(kb.cfg) == before


# -- no manifest and a store that raises ------------------------------------------------------

def test_no_manifest_and_an_unreadable_store_names_the_full_rebuild(tmp_path: Path,
                                                                     backend: str) -> None:
    kb = _built(tmp_path, backend)
    assert kb.cli("chaos", "truncate-store", "--yes").code == 0
    kb.cfg.manifest.unlink()

    res = kb.cli("rebuild")
    assert res.code == 2, (res.stdout, res.stderr, res.exception)
    assert "NameError" not in res.stderr and "Internal error" not in res.stderr
    assert f"is still there ({kb.cfg.store_path})" in res.stderr
    assert "kbguard rebuild --full" in res.stderr
    assert not kb.cfg.manifest.exists()

    full = kb.cli_json("rebuild", "--full")
    assert full["chunks"]["embedded"] == full["chunks"]["total"] > 0
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_manifest_and_an_unreachable_server_fails_before_embedding(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("# A\n\nSome text about apples.\n")
    cfg = write_config(tmp_path / "kbguard.toml", corpus, backend="qdrant")
    text = cfg.read_text().replace('path = "state/store"',
                                   f'url = "http://127.0.0.1:{_closed_port()}"')
    cfg.write_text(text)
    kb = KB(tmp_path, corpus, cfg)

    res = kb.cli("rebuild")
    assert res.code == 2, (res.stdout, res.stderr, res.exception)
    assert "cannot be reached" in res.stderr and "NameError" not in res.stderr
    assert not kb.cfg.manifest.exists()   # failed before parsing or embedding anything


def test_no_manifest_and_an_empty_collection_name_is_a_clear_error(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, backend="qdrant")
    kb.config_path.write_text(kb.config_path.read_text().replace('collection = "testkb"',
                                                                 'collection = ""'))
    res = kb.cli("rebuild", "--quiet")
    assert res.code == 2, (res.stdout, res.stderr, res.exception)
    assert "NameError" not in res.stderr and "Internal error" not in res.stderr
    assert res.stderr.startswith("Error: ") and "store.collection must be a name" in res.stderr
    assert not (tmp_path / "state").exists()   # refused by the config check, before any write


# -- a killed rebuild -------------------------------------------------------------------------

def test_status_after_a_killed_rebuild_says_interrupted(tmp_path: Path) -> None:
    from kbguard.core.lock import lock_holder

    kb = make_kb(tmp_path)
    killed = kb.subprocess("rebuild", "--quiet", env={"KBGUARD_CRASH_AT": "embed-batch:2"})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)
    assert lock_holder(kb.cfg.manifest) is None

    text = kb.cli("status", "--no-corpus-check")
    assert text.code == 0, (text.stdout, text.stderr)
    assert "rebuild interrupted" in text.stdout and "running" not in text.stdout
    assert "the next `kbguard rebuild` resumes it" in text.stdout
    st = kb.cli_json("status", "--no-corpus-check")
    assert st["last_run"]["status"] == "interrupted"
    assert "the next `kbguard rebuild` resumes it" in st["last_run"]["note"]

    kb.cli_json("rebuild")
    assert kb.cli_json("status")["last_run"]["status"] == "ok"


def test_lock_holder_names_a_live_holder_only(tmp_path: Path) -> None:
    from kbguard.core.lock import kb_lock, lock_holder

    manifest = tmp_path / "m.duckdb"
    assert lock_holder(manifest) is None
    with kb_lock(manifest, "rebuild"):
        holder = lock_holder(manifest)
        assert holder is not None and holder["command"] == "rebuild"
    assert lock_holder(manifest) is None


# -- a missing store, an empty corpus ---------------------------------------------------------

def test_search_of_a_deleted_store_folder_names_the_rebuild(tmp_path: Path,
                                                            backend: str) -> None:
    kb = _built(tmp_path, backend)
    shutil.rmtree(kb.cfg.store_path)

    res = kb.cli("search", "paragraph")
    assert res.code == 2, (res.stdout, res.stderr)
    assert "not found" not in res.stderr
    assert "is missing" in res.stderr and "Run `kbguard rebuild`" in res.stderr
    assert not kb.cfg.store_path.exists()    # a search creates nothing

    assert kb.cli_json("rebuild")["chunks"]["embedded"] == 0
    assert kb.cli_json("search", "paragraph")["results"]


def test_an_empty_corpus_is_named_by_search_and_status(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "notes.xyz").write_text("not a supported format")
    kb = KB(tmp_path, corpus, write_config(tmp_path / "kbguard.toml", corpus))
    assert kb.cli_json("rebuild")["chunks"]["total"] == 0
    globs = ", ".join(kb.cfg.include)

    res = kb.cli("search", "anything")
    assert res.code == 2, (res.stdout, res.stderr)
    assert f"No file in {corpus} matches corpus.include ({globs})" in res.stderr
    assert str(kb.config_path) in res.stderr and "store is empty" not in res.stderr
    as_json = kb.cli("search", "anything", "--json")
    assert json.loads(as_json.stdout)["error_type"] == "CorpusError"

    st = kb.cli("status")
    assert st.code == 0
    assert f"matches corpus.include ({globs})" in st.stdout and str(kb.config_path) in st.stdout
    assert "up to date" not in st.stdout
    assert kb.cli_json("status")["pending"]["files"] == 0


def test_search_of_an_emptied_store_names_the_repair(tmp_path: Path) -> None:
    kb = _built(tmp_path, "edge")
    chunks = len(manifest_chunk_ids(kb.cfg))
    assert kb.cli("chaos", "delete-points", "-n", str(chunks), "--yes").code == 0

    res = kb.cli("search", "paragraph")
    assert res.code == 2, (res.stdout, res.stderr)
    assert f"holds no points, but the manifest lists {chunks} chunks" in res.stderr
    assert "Run `kbguard verify --repair`" in res.stderr
    assert kb.cli("verify", "--repair").code == 0
    assert kb.cli_json("search", "paragraph")["results"]

