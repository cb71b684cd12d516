"""Full disks, read-only manifests, corpus entries that are not regular files, and --prom-file
targets that cannot be written.

Full disks are real: small tmpfs mounts filled with a preallocated file (skipped with the reason
where this machine does not allow mounting). Read-only manifests are real too: `chattr +i` on
the file, or a read-only bind mount of its folder (as root, file modes do not stop a write).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from kbguard.core.durable import atomic_write_text
from kbguard.core.progress import Progress
from kbguard.errors import DiskFullError
from kbguard.ingest.rebuild import rebuild
from kbguard.manifest import Manifest
from kbguard.store import Point, VectorSpec
from kbguard.store.edge import EdgeStore
from tests.kbtest import (
    BACKENDS,
    KB,
    fill,
    long_markdown,
    make_kb,
    manifest_chunk_ids,
    run_quiet,
    store_contents,
    tmpfs,
)

MiB = 1 << 20


# -- the KB's paths ---------------------------------------------------------------------------

def place(kb: KB, **paths: str) -> None:
    """Move the store, manifest or snapshot root of ``kb``'s config to other relative paths."""
    text = kb.config_path.read_text()
    defaults = {"store": 'path = "state/store"', "manifest": 'path = "state/manifest.duckdb"',
                "snapshots": 'root = "state/snapshots"'}
    for key, rel in paths.items():
        old = defaults[key]
        text = text.replace(old, old.split("=")[0] + f'= "{rel}"')
    kb.config_path.write_text(text)


def no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text and "Internal error" not in text, text


# -- 1. the manifest on a full disk ----------------------------------------------------------

class _FillAt(Progress):
    """Fills the disk completely when a named stage begins."""

    def __init__(self, stage: str, where: Path):
        self.at, self.where = stage, where

    def stage(self, name: str, total: int | None = None) -> None:
        if name == self.at:
            fill(self.where, 0)


def test_manifest_filling_the_disk_mid_rebuild_says_so_and_a_rerun_resumes(
        tmp_path: Path, mounts: list[Path]) -> None:
    kb = make_kb(tmp_path / "kb")
    place(kb, store="elsewhere/store")
    state = tmpfs(mounts, kb.root / "state", "8m")
    with pytest.raises(DiskFullError) as err:
        rebuild(kb.cfg, progress=_FillAt("embed local", state))
    message = str(err.value)
    assert message.startswith(f"The disk is full: there is no room to write the manifest "
                              f"{kb.cfg.manifest} on the filesystem mounted at {state} (tmpfs) (")
    assert " free)" in message and "Nothing committed before was lost" in message

    (state / "filler").unlink()
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        # a batch may have committed into the last free page before the disk was full
        cached = m.counts()["cached_vectors"]
    report = kb.cli_json("rebuild")  # the parsed documents were kept: it goes on embedding
    assert report["documents"]["unchanged"] == 3 and report["documents"]["failed"] == 0
    assert report["chunks"]["written"] == 27
    assert report["chunks"]["embedded"] == 27 - cached     # no text embedded twice
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)


def test_manifest_on_a_full_disk_from_the_start_is_one_clear_error(
        tmp_path: Path, mounts: list[Path]) -> None:
    kb = make_kb(tmp_path / "kb")
    place(kb, store="elsewhere/store")
    state = tmpfs(mounts, kb.root / "state", "1m")
    filler = fill(state, 0)
    res = kb.cli("rebuild")
    assert res.code == 2, (res.stderr, res.exception)
    no_traceback(res.stdout, res.stderr)
    assert f"The disk is full: there is no room to write the manifest {kb.cfg.manifest} " \
           f"on the filesystem mounted at {state} (tmpfs)" in res.stderr
    assert "cannot be read" not in res.stderr and "restore" not in res.stderr

    # What DuckDB left (a file of 0 bytes) holds nothing: the rerun builds the KB.
    filler.unlink()
    assert kb.cli_json("rebuild")["documents"]["added"] == 3


def test_snapshot_root_on_a_full_disk(tmp_path: Path, mounts: list[Path]) -> None:
    kb = make_kb(tmp_path / "kb")
    kb.cli_json("rebuild")
    place(kb, snapshots="snaps")
    snaps = tmpfs(mounts, kb.root / "snaps", "2m")
    filler = fill(snaps, 512 * 1024)
    res = kb.cli("snapshot", "create")
    assert res.code == 2
    no_traceback(res.stdout, res.stderr)
    assert "The disk is full: there is no room to write snapshot " in res.stderr
    assert f"on the filesystem mounted at {snaps} (tmpfs)" in res.stderr
    assert "needed)" in res.stderr and "run `kbguard snapshot create` again" in res.stderr
    filler.unlink()

    # Room for the estimate, then the disk fills while the files are written: still one
    # clear error, and no partial snapshot left behind.
    from kbguard.recovery.snapshot import create_snapshot

    for stage in ("snapshot points", "snapshot manifest"):
        with pytest.raises(DiskFullError) as err:
            create_snapshot(kb.cfg, progress=_FillAt(stage, snaps))
        assert "The disk is full: there is no room to write " in str(err.value)
        assert f"on the filesystem mounted at {snaps} (tmpfs)" in str(err.value)
        assert [p.name for p in snaps.iterdir()] == ["filler"]
        (snaps / "filler").unlink()
    assert kb.cli_json("snapshot", "create")["points"] == len(manifest_chunk_ids(kb.cfg))


def test_qdrant_local_store_on_a_full_disk(tmp_path: Path, mounts: list[Path]) -> None:
    kb = make_kb(tmp_path / "kb", backend="qdrant")
    place(kb, store="small/store")
    small = tmpfs(mounts, kb.root / "small", "64k")
    res = kb.cli("rebuild")
    assert res.code == 2
    no_traceback(res.stdout, res.stderr)
    assert "The disk is full: there is no room to go on upserting" in res.stderr
    assert f"Qdrant local store at {kb.cfg.store_path} on the filesystem mounted at {small}" \
        in res.stderr
    run_quiet("mount", "-o", "remount,size=16m", str(small))
    assert kb.cli_json("rebuild")["chunks"]["written"] > 0
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)


# -- 2. the Edge store on a full disk: refused before the engine's memory maps fault ----------

def test_edge_store_on_a_full_disk_is_refused_not_killed(tmp_path: Path,
                                                        mounts: list[Path]) -> None:
    kb = make_kb(tmp_path / "kb")
    # opening a shard may take a whole WAL segment (32 MiB) on tmpfs: room for that and more
    state = tmpfs(mounts, kb.root / "state", "160m")
    assert kb.subprocess("rebuild", "-q").returncode == 0
    kb.write("doc9.md", long_markdown("Document 9", sections=3))
    filler = fill(state, 8 * MiB)

    res = kb.subprocess("rebuild")
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])  # SIGBUS was -7
    no_traceback(res.stderr)
    assert (f"The disk is full: there is no room to open the Edge store at {kb.cfg.store_path} "
            f"on the filesystem mounted at {state} (tmpfs) (") in res.stderr
    assert "MiB free, about 64.0 MiB needed)" in res.stderr

    status = kb.subprocess("status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    store = json.loads(status.stdout)["store"]
    assert store["error"].startswith("The disk is full: there is no room to open the Edge store")

    filler.unlink()
    again = kb.subprocess("rebuild", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["chunks"]["written"] == 9  # doc9's, parsed the first time
    points = store_contents(kb.cfg)
    assert set(points) == manifest_chunk_ids(kb.cfg)
    assert sum(1 for _, payload in points.values() if payload["path"] == "doc9.md") == 9


def test_edge_write_batch_is_sized_before_it_is_written(tmp_path: Path,
                                                       mounts: list[Path]) -> None:
    where = tmpfs(mounts, tmp_path / "small", "96m")
    store = EdgeStore(where / "store")
    store.create([VectorSpec("v", 384)])
    rng = __import__("numpy").random.default_rng(0)
    vec = rng.standard_normal(384).astype("float32")
    vec /= (vec @ vec) ** 0.5

    def points(n: int, start: int = 0) -> list[Point]:
        return [Point(f"00000000-0000-0000-0000-{i:012d}", {"v": vec}, {"text": "x" * 2000})
                for i in range(start, start + n)]

    fill(where, 70 * MiB)  # room to open the shard, not for 2,000 points of 3.5 KB
    with pytest.raises(DiskFullError) as err:
        store.upsert(points(2000))
    assert f"no room to write 2000 points into the Edge store at {where / 'store'}" \
        in str(err.value)
    # 64 MiB for the engine + 1.5 x (2 copies x 2,000 x 3,584 raw bytes + 2,000 x 512)
    assert "about 86.0 MiB needed" in str(err.value)
    store.upsert(points(10, start=5000))  # a batch that fits is written
    store.flush()
    assert store.count() == 10
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_restore_that_cannot_fit_is_refused_before_it_writes(
        tmp_path: Path, mounts: list[Path], backend: str) -> None:
    kb = make_kb(tmp_path / "kb", backend=backend)
    place(kb, snapshots="snaps")
    state = tmpfs(mounts, kb.root / "state", "160m")
    kb.cli_json("rebuild")
    sid = kb.cli_json("snapshot", "create")["id"]
    before = store_contents(kb.cfg)
    filler = fill(state, 2 * MiB)
    res = kb.subprocess("restore", sid, "--yes")  # its own process: a SIGBUS is not ours
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    no_traceback(res.stderr)
    assert f"The disk is full: there is no room to restore snapshot {sid} (a copy of " \
        in res.stderr
    assert f"on the filesystem mounted at {state} (tmpfs)" in res.stderr
    assert "needed). " in res.stderr and "the KB was not touched" in res.stderr
    assert sorted(p.name for p in state.iterdir()) == sorted(
        ["filler", "manifest.duckdb", "manifest.duckdb.lock", "store"])
    filler.unlink()
    assert store_contents(kb.cfg) == before
    assert kb.cli_json("restore", sid, "--yes")["points"] == len(before)


# -- 3. a read-only manifest -----------------------------------------------------------------

def _immutable(path: Path) -> None:
    """Make ``path`` unwritable even for root, or skip saying why that is impossible here."""
    if os.geteuid() != 0:
        path.chmod(0o444 if path.is_file() else 0o555)
    elif shutil.which("chattr") is None or run_quiet("chattr", "+i", str(path)).returncode != 0:
        pytest.skip(f"`chattr +i` does not work on {path}'s filesystem here, and root ignores "
                    "file modes: no way to make it read-only")
    if os.access(path, os.W_OK):
        pytest.skip(f"{path} stays writable here")


def _mutable(path: Path) -> None:
    if os.geteuid() == 0:
        run_quiet("chattr", "-i", str(path))
    path.chmod(0o644 if path.is_file() else 0o755)


READ_ONLY = "cannot be written"
READERS = "`kbguard status`, `kbguard search`"


def _readers_still_work(kb: KB) -> None:
    assert kb.cli_json("status")["counts"]["documents"] == 3
    hits = kb.cli_json("search", "Document 1 part 2 topic2")["results"]
    assert hits and hits[0]["path"] == "doc1.md"
    res = kb.cli("verify")
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    assert "is healthy" in res.stdout
    assert "the check is not recorded: the manifest cannot be written" in res.stdout


@pytest.fixture
def built_kb(tmp_path: Path) -> KB:
    kb = make_kb(tmp_path / "kb")
    place(kb, store="elsewhere/store")
    kb.cli_json("rebuild")
    return kb


def test_immutable_manifest_is_not_called_unreadable_and_readers_work(built_kb: KB) -> None:
    kb = built_kb
    _immutable(kb.cfg.manifest)
    try:
        for args in (("rebuild",), ("verify", "--repair")):
            res = kb.cli(*args)
            assert res.code == 2, (args, res.stderr, res.exception)
            no_traceback(res.stdout, res.stderr)
            assert f"The manifest {kb.cfg.manifest} {READ_ONLY}: the file {kb.cfg.manifest} " \
                   "is not writable" in res.stderr
            assert READERS in res.stderr
            assert "restore" not in res.stderr.replace("or restore, make", "")
            assert "move it aside" not in res.stderr and "cannot be read" not in res.stderr
        _readers_still_work(kb)
    finally:
        _mutable(kb.cfg.manifest)
    assert kb.cli_json("rebuild")["documents"]["unchanged"] == 3


def test_manifest_on_a_read_only_filesystem(built_kb: KB, mounts: list[Path]) -> None:
    kb = built_kb
    state = kb.cfg.manifest.parent
    if run_quiet("mount", "--bind", str(state), str(state)).returncode != 0:
        pytest.skip("bind mounts are not permitted here: no read-only filesystem to test on")
    mounts.append(state)
    if run_quiet("mount", "-o", "remount,bind,ro", str(state)).returncode != 0:
        pytest.skip("a bind mount cannot be made read-only here")
    res = kb.cli("rebuild")
    assert res.code == 2
    no_traceback(res.stdout, res.stderr)
    assert "`kbguard rebuild` cannot take the KB's lock: " in res.stderr
    assert f"is on a read-only filesystem (the filesystem mounted at {state} (" in res.stderr
    assert READERS in res.stderr
    _readers_still_work(kb)
    run_quiet("umount", str(state))
    mounts.remove(state)
    assert kb.cli_json("rebuild")["documents"]["unchanged"] == 3


# -- 4. corpus entries that are not regular files -------------------------------------------

@pytest.mark.timeout(120)
def test_fifo_socket_and_folder_symlink_out_are_recorded_not_read(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb")
    os.mkfifo(kb.corpus / "pipe.md")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(kb.corpus / "sock.md"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nOutside the corpus.\n")
    os.symlink(outside, kb.corpus / "linked")
    (kb.corpus / "sub").mkdir()
    (kb.corpus / "sub" / "inner.md").write_text(long_markdown("Inner", sections=1))
    os.symlink(kb.corpus / "sub", kb.corpus / "alias")  # inside: indexed at its real path
    try:
        report = kb.cli_json("rebuild")
        status = kb.cli_json("status")
    finally:
        sock.close()
    failed = {f["path"]: f["error"] for f in report["failures"]}
    assert set(failed) == {"pipe.md", "sock.md", "linked"}
    assert failed["pipe.md"].startswith("a named pipe (FIFO) is not a regular file, and only "
                                        "regular files are documents")
    assert failed["sock.md"].startswith("a socket is not a regular file")
    assert failed["linked"].startswith(
        f"symlink to a folder outside the corpus (to {outside.resolve()})")
    assert report["documents"]["added"] == 4
    assert {f["path"] for f in status["failed_documents"]} == set(failed)
    assert not any("Secret" in p[1]["text"] for p in store_contents(kb.cfg).values())


def test_folder_symlink_out_that_no_glob_could_select_is_not_reported(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb")
    text = kb.config_path.read_text().replace(
        "[chunking]", 'include = ["*.md"]\nexclude = ["vendor/**"]\n[chunking]')
    kb.config_path.write_text(text)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, kb.corpus / "linked")      # *.md selects only top-level files
    report = kb.cli_json("rebuild")
    assert report["failures"] == []
    text = text.replace('include = ["*.md"]', 'include = ["**/*.md"]')
    kb.config_path.write_text(text)
    os.symlink(outside, kb.corpus / "vendor")      # excluded as a folder
    assert [f["path"] for f in kb.cli_json("rebuild")["failures"]] == ["linked"]


# -- 5. --prom-file to a place it cannot be written -------------------------------------------

def test_prom_file_in_a_missing_folder_is_refused_before_the_check(kb: KB,
                                                                  tmp_path: Path) -> None:
    kb.cli_json("rebuild")
    target = tmp_path / "nonexistent" / "dir" / "x.prom"
    res = kb.cli("verify", "--prom-file", str(target))
    assert res.code == 2
    no_traceback(res.stdout, res.stderr)
    assert (f"--prom-file {target}: the folder {target.parent} does not exist, and kbguard "
            "does not create it.") in res.stderr
    assert "Nothing was checked." in res.stderr
    assert not (tmp_path / "nonexistent").exists()
    assert kb.cli_json("status")["last_check"] is None


def test_prom_file_in_an_unwritable_folder_is_refused_before_the_check(kb: KB,
                                                                      tmp_path: Path) -> None:
    kb.cli_json("rebuild")
    folder = tmp_path / "textfile"
    folder.mkdir()
    _immutable(folder)
    try:
        res = kb.cli("verify", "--prom-file", str(folder / "kb.prom"))
        assert res.code == 2
        no_traceback(res.stdout, res.stderr)
        assert f"--prom-file {folder / 'kb.prom'}: cannot write in {folder} (" in res.stderr
        assert "Nothing was checked." in res.stderr
        assert list(folder.iterdir()) == []
    finally:
        _mutable(folder)
    assert kb.cli_json("status")["last_check"] is None
    res = kb.cli("verify", "--prom-file", str(folder))
    assert res.code == 2 and f"--prom-file {folder} is a folder" in res.stderr


def test_atomic_writes_never_create_folders(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "a" / "b" / "c.txt", "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("refusal", ["EINVAL", "EOPNOTSUPP"])
def test_a_sparse_copy_where_holes_cannot_be_found_copies_every_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str) -> None:
    """A filesystem that cannot say where a file's holes are (lseek SEEK_DATA refused) gets
    the whole file copied as data, never a file of zeros in its place. No filesystem here
    refuses it, so lseek is made to."""
    import errno
    import hashlib

    from kbguard.core.durable import copy_hashed, copy_sparse

    src = tmp_path / "sparse"
    with open(src, "wb") as fh:
        fh.write(b"head" * 1000)
        fh.seek(3 << 20)                       # a hole, then data, then a hole at the end
        fh.write(b"tail" * 1000)
        fh.truncate(5 << 20)
    want = src.read_bytes()
    real = os.lseek

    def no_hole_support(fd: int, pos: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(getattr(errno, refusal), os.strerror(getattr(errno, refusal)))
        return real(fd, pos, how)

    monkeypatch.setattr(os, "lseek", no_hole_support)
    copy_sparse(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == want
    assert copy_hashed(src, tmp_path / "hashed") == (hashlib.sha256(want).hexdigest(), len(want))
    assert (tmp_path / "hashed").read_bytes() == want
