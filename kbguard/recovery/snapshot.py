"""Snapshots: a portable, checksummed copy of a KB's store and manifest.

A snapshot is a folder ``<snapshot root>/<id>/`` holding

    points.parquet      every point: id, one float32 column per named vector, payload (JSON)
    documents.parquet   the manifest tables a restore needs to rebuild the KB from: documents,
    chunks.parquet      chunks (with their text) and the embedding cache
    embeddings.parquet
    shard/              an Edge store's own shard folder, copied while the shard was closed
                        (Edge snapshots only): a restore into an Edge store of the same
                        engine version copies it back at disk speed instead of rebuilding
    snapshot.json       format version, KB, time, corpus revision, config, counts, and the
                        sha256 and size of every other file (the shard's files under
                        ``shard``, with the engine version); it carries its own checksum

It is written into ``<root>/.tmp-<id>`` and renamed into place after everything is on disk, so
a folder with a snapshot's name is always complete. Nothing read back is trusted: the metadata
is checked against its own checksum, file names must be plain names inside the folder, every
file must match its sha256 before a single row is read, and no file is ever unpickled.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kbguard.config import Config
from kbguard.core.disk import disk_full, is_disk_full, require_free
from kbguard.errors import SnapshotDamaged, SnapshotError
from kbguard.core.faults import crash_point
from kbguard.core.durable import fsync_path
from kbguard.core.lock import kb_lock
from kbguard.manifest import Manifest, vector_checksum
from kbguard.core.progress import SILENT, Progress
from kbguard.store import Point
from kbguard.ingest.dvc_corpus import find_dvc_root
from kbguard.store import store_for
from kbguard.store.edge import EdgeStore

FORMAT_VERSION = 1
META_FILE = "snapshot.json"
POINTS_FILE = "points.parquet"
TABLES = ("documents", "chunks", "embeddings")
DATA_FILES = (POINTS_FILE, *(f"{t}.parquet" for t in TABLES))
BATCH = 4096                   # points per Parquet row group and per store page
VECTOR_PREFIX = "vector:"      # points.parquet column of each named vector
_TMP_PREFIX = ".tmp-"
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HASH_BLOCK = 1 << 20
SHARD_DIR = "shard"            # the shard's files, in the snapshot and in snapshot.json
ENGINE = "qdrant-edge-py"      # the package whose version decides whether shard files load
_ZEROS = bytes(_HASH_BLOCK)
_AGAIN = "run `kbguard snapshot create` again (the unfinished snapshot was deleted)"


@dataclass
class SnapshotEntry:
    """One snapshot as ``list`` sees it: from its metadata, without checking the data files."""

    id: str
    path: Path
    created_at: str | None
    local: bool                 # the folder is here (else only its .dvc file is)
    dvc: bool                   # tracked with DVC
    points: int | None = None
    bytes: int | None = None
    problem: str | None = None  # why the metadata could not be read

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


@dataclass
class CreateReport:
    id: str
    path: str
    points: int
    counts: dict[str, int]
    bytes: int
    seconds: float
    points_per_s: float
    dvc: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)  # seconds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- identity and metadata --------------------------------------------------------------------

def new_snapshot_id(now: datetime | None = None) -> str:
    """A name that sorts by creation time: ``20261129T013605.123Z``."""
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


def check_snapshot_id(snapshot_id: str) -> str:
    """The id, if it is a plain folder name; SnapshotError otherwise (it is used as a path)."""
    if not _ID.match(snapshot_id) or ".." in snapshot_id or snapshot_id.endswith(".dvc"):
        raise SnapshotError(
            f"{snapshot_id!r} is not a snapshot id. Ids are folder names such as "
            "20261129T013605.123Z; `kbguard snapshot list` shows them."
        )
    return snapshot_id


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, indent=2).encode("ascii")


def render_meta(body: dict[str, Any]) -> bytes:
    """``snapshot.json``: the body plus the sha256 of its canonical form."""
    digest = hashlib.sha256(_canonical(body)).hexdigest()
    return _canonical({"snapshot": body, "sha256": digest}) + b"\n"


def read_meta(folder: Path) -> dict[str, Any]:
    """The checked body of ``folder/snapshot.json``; SnapshotDamaged names what is wrong.

    The file must be exactly the canonical rendering of what it parses to, and the body must
    match its checksum, so any changed byte is caught.
    """
    path = folder / META_FILE
    if path.is_symlink() or not path.is_file():
        raise SnapshotDamaged(
            f"Snapshot {folder.name} has no {META_FILE}: it is incomplete or not a snapshot. "
            f"Delete {folder} and use another snapshot.", snapshot_id=folder.name, file=META_FILE
        )
    raw = path.read_bytes()
    try:
        doc = json.loads(raw)
        body, digest = doc["snapshot"], doc["sha256"]
        ok = (isinstance(body, dict) and raw == _canonical(doc) + b"\n"
              and hashlib.sha256(_canonical(body)).hexdigest() == digest)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise SnapshotDamaged(
            f"Snapshot {folder.name} is damaged: {META_FILE} does not match its own checksum. "
            "Use another snapshot (`kbguard snapshot list`).", snapshot_id=folder.name,
            file=META_FILE
        )
    if body.get("format_version") != FORMAT_VERSION:
        raise SnapshotError(
            f"Snapshot {folder.name} has format version {body.get('format_version')!r}; this "
            f"kbguard reads version {FORMAT_VERSION}. Use a kbguard that matches the snapshot."
        )
    return body


def _safe_file(folder: Path, name: Any) -> Path:
    """``folder/name``, refusing any name that could lead outside the folder."""
    if not isinstance(name, str) or not _FILE_NAME.match(name) or name == META_FILE:
        raise SnapshotError(
            f"Snapshot {folder.name} lists a file named {name!r}, which is not a plain file "
            "name inside the snapshot. kbguard refuses it; do not use this snapshot."
        )
    path = folder / name
    if path.is_symlink() or path.resolve().parent != folder.resolve():
        raise SnapshotError(
            f"Snapshot {folder.name}: {name} points outside the snapshot folder. kbguard "
            "refuses it; do not use this snapshot."
        )
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def verify_folder(folder: Path, *, shard: bool = True) -> dict[str, Any]:
    """Check a snapshot folder completely; returns its metadata body.

    Raises SnapshotDamaged naming the first file whose size or sha256 differs, or that is
    missing, and SnapshotError for a snapshot that is unsafe to read. ``shard=False`` leaves
    the shard files' contents unchecked (restore checks them as it copies them, and falls
    back to the Parquet files when one is damaged), but not their names.
    """
    body = read_meta(folder)
    shard_files = shard_entries(folder, body)
    files = body.get("files")
    if not isinstance(files, dict) or set(files) != set(DATA_FILES):
        raise SnapshotDamaged(
            f"Snapshot {folder.name} lists the files {sorted(files or {})}, not "
            f"{sorted(DATA_FILES)}. Use another snapshot.", snapshot_id=folder.name,
            file=META_FILE
        )
    for name in sorted(files):
        entry = files[name]
        path = _safe_file(folder, name)
        if not path.is_file():
            raise SnapshotDamaged(
                f"Snapshot {folder.name} is damaged: {name} is missing. Use another snapshot.",
                snapshot_id=folder.name, file=name)
        if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
            raise SnapshotDamaged(
                f"Snapshot {folder.name} is damaged: {name} does not match its sha256. "
                "Use another snapshot (`kbguard restore --latest` skips damaged ones).",
                snapshot_id=folder.name, file=name
            )
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise SnapshotDamaged(
                f"Snapshot {folder.name}: {name} is not a readable Parquet file ({exc}).",
                snapshot_id=folder.name, file=name) from exc
        if rows != entry.get("rows"):
            raise SnapshotDamaged(
                f"Snapshot {folder.name}: {name} holds {rows} rows, its metadata says "
                f"{entry.get('rows')}. Use another snapshot.", snapshot_id=folder.name, file=name
            )
    if shard:
        for rel, (path, entry) in shard_files.items():
            if (not path.is_file() or path.stat().st_size != entry.get("bytes")
                    or sha256_file(path) != entry.get("sha256")):
                raise SnapshotDamaged(
                    f"Snapshot {folder.name} is damaged: {SHARD_DIR}/{rel} is missing or does "
                    "not match its sha256. A restore still works from its Parquet files; or "
                    "use another snapshot.", snapshot_id=folder.name, file=f"{SHARD_DIR}/{rel}")
    return body


def engine_version() -> str | None:
    """The installed Qdrant Edge bindings' version: shard files load only into the same one."""
    try:
        return importlib.metadata.version(ENGINE)
    except importlib.metadata.PackageNotFoundError:
        return None


def shard_entries(folder: Path, body: dict[str, Any]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The shard files a snapshot lists (relative path -> its path here and its entry); none
    for a snapshot without them. Every name is checked to stay inside ``folder/shard``."""
    shard = body.get("shard")
    if shard is None:
        return {}
    files = shard.get("files") if isinstance(shard, dict) else None
    if not isinstance(files, dict) or not isinstance(shard.get("dirs", []), list):
        raise SnapshotDamaged(f"Snapshot {folder.name} lists its shard files wrongly. Use "
                              "another snapshot.", snapshot_id=folder.name, file=META_FILE)
    base = folder / SHARD_DIR
    out = {}
    for rel in [*files, *shard.get("dirs", [])]:
        path = _safe_rel(folder, base, rel)
        if rel in files:
            out[rel] = (path, files[rel])
    return out


def shard_dirs(folder: Path, body: dict[str, Any]) -> list[str]:
    return [d for d in body["shard"].get("dirs", [])
            if _safe_rel(folder, folder / SHARD_DIR, d)]


def _safe_rel(folder: Path, base: Path, rel: Any) -> Path:
    """``base/rel`` for a relative path of plain names; SnapshotError for anything else."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or not all(_FILE_NAME.match(p) for p in parts):
        raise SnapshotError(
            f"Snapshot {folder.name} lists a shard file named {rel!r}, which is not a plain "
            "path inside the snapshot. kbguard refuses it; do not use this snapshot.")
    path = base.joinpath(*parts)
    for p in [path, *path.parents]:
        if p == base:
            break
        if p.is_symlink():
            raise SnapshotError(
                f"Snapshot {folder.name}: {SHARD_DIR}/{rel} is a link. kbguard refuses it; "
                "do not use this snapshot.")
    return path


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy one file and return its sha256 and size, in one read of it.

    The engine preallocates its files sparse (32 MiB mostly holes): holes stay holes in the
    copy and are hashed as the zeros they read as."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fd = fin.fileno()
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
                end = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    start = end = size      # only a hole is left
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    start, end = pos, size  # no hole support here: all of it is data
                else:
                    raise
            while pos < start:  # the hole before this data
                n = min(start - pos, _HASH_BLOCK)
                h.update(_ZEROS[:n] if n < _HASH_BLOCK else _ZEROS)
                pos += n
            fin.seek(start)
            fout.seek(start)
            while pos < end:
                block = fin.read(min(end - pos, _HASH_BLOCK))
                if not block:
                    break  # the file shrank: the sha256 check says so
                h.update(block)
                fout.write(block)
                pos += len(block)
            if pos < end:
                break
        fout.truncate(pos)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), pos


def _allocated(folder: Path) -> int:
    """The bytes a folder's files take on disk (holes not counted)."""
    total = 0
    for here, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(here, name)).st_blocks * 512
            except OSError:
                pass  # gone meanwhile: the copy reports what matters
    return total


class _ShardUnfit(Exception):
    """The shard folder holds something a snapshot cannot carry: the snapshot goes without
    shard files (its Parquet files hold everything)."""


def _copy_shard(src: Path, dst: Path) -> dict[str, Any]:
    """Copy a closed shard folder into ``dst``; returns its entry for snapshot.json."""
    files: dict[str, Any] = {}
    dirs: list[str] = []
    for here, subdirs, names in os.walk(src):
        rel_here = Path(here).relative_to(src)
        subdirs.sort()
        for d in subdirs:
            rel = (rel_here / d).as_posix()
            if not _FILE_NAME.match(d):
                raise _ShardUnfit(f"the shard holds a folder named {rel!r}, which a snapshot "
                                  "cannot list")
            (dst / rel).mkdir(parents=True)
            dirs.append(rel)
        for name in sorted(names):
            rel = (rel_here / name).as_posix()
            if not _FILE_NAME.match(name):
                raise _ShardUnfit(f"the shard holds a file named {rel!r}, which a snapshot "
                                  "cannot list")
            if (Path(here) / name).is_symlink():
                raise SnapshotError(f"The Edge store at {src} holds a link, {rel}; kbguard "
                                    "does not copy links. Remove it, or rebuild the store.")
            digest, size = copy_hashed(Path(here) / name, dst / rel)
            files[rel] = {"sha256": digest, "bytes": size}
    for rel in [*dirs, "."]:
        fsync_path(dst / rel)
    return {"engine": ENGINE, "engine_version": engine_version(), "files": files,
            "dirs": dirs}


@dataclass
class SnapshotCheck:
    """What `kbguard snapshot verify` found: ``ok``, or the ``problem`` that makes it damaged."""

    id: str
    ok: bool
    problem: str | None = None
    damaged_file: str | None = None   # the file that failed its check (None: the metadata)
    counts: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    files: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        if not self.ok:
            return {"id": self.id, "ok": False, "problem": self.problem,
                    "damaged_file": self.damaged_file}
        return {"id": self.id, "ok": True, "counts": self.counts, "created_at": self.created_at,
                "files": self.files}


def verify_snapshot(cfg: Config, snapshot_id: str) -> SnapshotCheck:
    """Check one local snapshot of the KB: its metadata and the sha256 of every file.

    A damaged snapshot is a verdict (``ok`` false), not an error; a snapshot that is not there
    raises SnapshotError."""
    folder = snapshot_folder(cfg, snapshot_id)
    if not folder.is_dir():
        raise SnapshotError(f"There is no snapshot folder {folder}. `kbguard snapshot list` "
                            "shows the snapshots; `kbguard restore ID` pulls one from DVC.")
    try:
        body = verify_folder(folder)
    except SnapshotDamaged as exc:
        return SnapshotCheck(snapshot_id, ok=False, problem=str(exc), damaged_file=exc.file)
    return SnapshotCheck(snapshot_id, ok=True, counts=body["counts"],
                         created_at=body["created_at"], files=body["files"])


# -- finding snapshots ------------------------------------------------------------------------

def snapshot_folder(cfg: Config, snapshot_id: str) -> Path:
    return cfg.snapshot_root / check_snapshot_id(snapshot_id)


def list_snapshots(cfg: Config) -> list[SnapshotEntry]:
    """Every snapshot under the root, local or DVC-tracked only, oldest first."""
    root = cfg.snapshot_root
    if not root.is_dir():
        return []
    ids: dict[str, tuple[bool, bool]] = {}
    for entry in root.iterdir():
        name = entry.name
        if name.startswith("."):
            continue  # .tmp-* (a snapshot being written, or a crashed one), .gitignore
        if name.endswith(".dvc") and entry.is_file():
            sid = name[:-4]
            if _ID.match(sid):
                local, _ = ids.get(sid, (False, False))
                ids[sid] = (local, True)
        elif entry.is_dir() and not entry.is_symlink() and _ID.match(name):
            _, dvc = ids.get(name, (False, False))
            ids[name] = (True, dvc)
    out = []
    for sid, (local, dvc) in ids.items():
        snap = SnapshotEntry(sid, root / sid, None, local, dvc)
        if local:
            try:
                body = read_meta(root / sid)
                snap.created_at = body.get("created_at")
                snap.points = body.get("counts", {}).get("points")
                snap.bytes = sum(int(f.get("bytes", 0)) for f in [
                    *body.get("files", {}).values(),
                    *(body.get("shard") or {}).get("files", {}).values()])
            except SnapshotError as exc:
                snap.problem = str(exc)
        out.append(snap)
    out.sort(key=lambda s: (s.created_at or "", s.id))
    return out


# -- creating ---------------------------------------------------------------------------------

def create_snapshot(cfg: Config, *, batch_size: int = BATCH, dvc_push: bool = False,
                    dvc_remote: str | None = None, progress: Progress = SILENT) -> CreateReport:
    """Write a snapshot of the KB's store and manifest; returns what was written."""

    if batch_size < 1:
        raise SnapshotError(f"batch_size must be positive, not {batch_size}.")
    started = time.perf_counter()
    notes: list[str] = []
    stages: dict[str, float] = {}
    if not cfg.manifest.exists():  # before the lock, which would create the manifest's folder
        raise SnapshotError(
            f"There is no manifest at {cfg.manifest}, so there is nothing to snapshot. "
            "Run `kbguard rebuild` first."
        )
    with kb_lock(cfg.manifest, "snapshot create"):
        sid = new_snapshot_id()
        root = cfg.snapshot_root
        final = root / sid
        tmp = root / f"{_TMP_PREFIX}{sid}-{secrets.token_hex(3)}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(root, f"write snapshot {sid} into {root}", resume=_AGAIN) from exc
            raise
        try:
            with Manifest.open(cfg.manifest, kb=cfg.kb) as manifest, store_for(cfg) as store:
                info = store.describe()
                if not info.exists:
                    raise SnapshotError(
                        f"The KB's {cfg.store_backend} store does not exist, so a snapshot would "
                        "not hold it. Run `kbguard rebuild` (or `kbguard restore`) first."
                    )
                want = {s.name: s.dim for s in cfg.spaces}
                have = {v.name: v.dim for v in info.vectors}
                if have != want:
                    raise SnapshotError(
                        f"The store holds vectors {have} but the config asks for {want}. "
                        "Run `kbguard rebuild --full` before taking a snapshot."
                    )
                specs = sorted(info.vectors, key=lambda v: v.name)
                # Float32 vectors do not compress: the points file holds each once, the
                # embedding cache about as many again. Refuse now rather than half-way.
                # An Edge snapshot also holds the shard's files: as many blocks as they take.
                shard_room = (_allocated(store.path) if isinstance(store, EdgeStore) else 0)
                require_free(tmp, 2 * 4 * info.points * sum(have.values()) + (1 << 20)
                             + shard_room,
                             f"write snapshot {sid} ({info.points:,} points) into {root}",
                             resume=_AGAIN)
                # DuckDB writes the manifest tables in a thread while this one reads the
                # store: DuckDB runs without the GIL, reading the store needs it.
                progress.stage("snapshot manifest")
                exporter = _TableExporter(manifest, tmp)
                exporter.start()
                try:
                    progress.stage("snapshot points", info.points)
                    t = time.perf_counter()
                    points, shard = None, None
                    if isinstance(store, EdgeStore):
                        # The points come from the manifest, so the store is not read: its
                        # files are copied (hashing releases the GIL) while they are written.
                        why = _unrecorded(manifest, cfg, specs)
                        copier = _ShardCopier(store, tmp / SHARD_DIR)
                        copier.start()
                        try:
                            if why is None:
                                try:
                                    points = _write_recorded_points(
                                        tmp / POINTS_FILE, manifest, cfg, specs, info.points,
                                        batch_size)
                                    progress.advance(points)
                                except _ManifestUnfit as exc:
                                    why = str(exc)
                        finally:
                            copier.join()
                        if copier.error is not None:
                            raise copier.error
                        shard = copier.shard
                        if copier.unfit:
                            notes.append(f"this snapshot holds no shard files ({copier.unfit}); "
                                         "a restore rebuilds the store from its Parquet files")
                        stages["shard files (beside the points)"] = copier.seconds
                        if why is not None:
                            notes.append(f"the points were read from the store: {why}")
                    if points is None:
                        points = _write_points(tmp / POINTS_FILE,
                                               store.scroll(batch_size=batch_size), specs,
                                               progress)
                    stages["points parquet"] = time.perf_counter() - t
                finally:
                    t = time.perf_counter()
                    exporter.join()  # never close the manifest under a thread still using it
                    stages["manifest tables (after the points)"] = time.perf_counter() - t
                if exporter.error is not None:
                    raise exporter.error
                crash_point("snapshot-write")
                counts = manifest.tables.row_counts(TABLES)
                pending = manifest.points.pending_count()
                missing = manifest.points.unwritten_chunk_count()
                run = manifest.runs.last(kind="rebuild%", status="ok")
            if pending or missing:
                notes.append(f"the last rebuild did not finish: {missing} chunks are not in the "
                             "store; a restore of this snapshot catches them up")
            counts["points"] = points
            files = {}
            t = time.perf_counter()
            for name in DATA_FILES:
                path = tmp / name
                files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                               "rows": pq.ParquetFile(path).metadata.num_rows}
            body = {
                "format_version": FORMAT_VERSION,
                "id": sid,
                "kb": cfg.kb,
                "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "corpus": _corpus_revision(run),
                "config": {
                    "backend": cfg.store_backend,
                    "collection": cfg.collection,
                    "vectors": [{"name": v.name, "dim": v.dim, "distance": v.distance}
                                for v in specs],
                    "spaces": [{"name": s.name, "space_id": s.space_id, "provider": s.provider,
                                "model": s.model, "dim": s.dim, "normalize": s.normalize}
                               for s in cfg.spaces],
                },
                "counts": counts,
                "files": files,
            }
            if shard is not None:
                body["shard"] = shard
            (tmp / META_FILE).write_bytes(render_meta(body))
            for name in (*DATA_FILES, META_FILE):
                fsync_path(tmp / name)
            os.rename(tmp, final)
            fsync_path(root)
            stages["checksums and sync"] = time.perf_counter() - t
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise disk_full(root, f"write snapshot {sid} into {root}",
                                resume=_AGAIN) from exc
            raise
        total = sum(f["bytes"] for f in files.values()) + (final / META_FILE).stat().st_size
        if shard is not None:
            total += sum(f["bytes"] for f in shard["files"].values())
        dvc = _dvc_add_and_push(cfg, final, dvc_remote) if dvc_push else None
    seconds = time.perf_counter() - started
    return CreateReport(id=sid, path=str(final), points=points, counts=counts, bytes=total,
                        seconds=round(seconds, 3),
                        points_per_s=round(points / seconds, 1) if seconds else 0.0,
                        dvc=dvc, notes=notes,
                        stages={k: round(v, 3) for k, v in stages.items()})


class _ShardCopier(threading.Thread):
    """Copies an Edge store's shard folder into the snapshot, the store closed and held."""

    def __init__(self, store: EdgeStore, dst: Path):
        super().__init__(name="kbguard-snapshot-shard", daemon=True)
        self.store, self.dst = store, dst
        self.shard: dict[str, Any] | None = None
        self.unfit: str | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        t = time.perf_counter()
        try:
            self.dst.mkdir()
            with self.store.closed_and_held() as shard_path:
                self.shard = _copy_shard(shard_path, self.dst)
        except _ShardUnfit as exc:
            shutil.rmtree(self.dst, ignore_errors=True)
            self.unfit = str(exc)
        except BaseException as exc:  # handed to the snapshotting thread, which raises it
            self.error = exc
        self.seconds = time.perf_counter() - t


class _TableExporter(threading.Thread):
    """Writes the manifest tables a restore needs into the snapshot folder."""

    def __init__(self, manifest: Manifest, folder: Path):
        super().__init__(name="kbguard-snapshot-tables", daemon=True)
        self.manifest, self.folder = manifest, folder
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for table in TABLES:
                self.manifest.tables.export(table, self.folder / f"{table}.parquet")
        except Exception as exc:  # handed to the snapshotting thread, which raises it
            self.error = exc


def _points_writer(path: Path, specs: list[Any]) -> tuple[pq.ParquetWriter, pa.Schema]:
    schema = pa.schema(
        [pa.field("id", pa.string(), nullable=False)]
        + [pa.field(VECTOR_PREFIX + s.name, pa.list_(pa.float32(), s.dim)) for s in specs]
        + [pa.field("payload", pa.string(), nullable=False)]
    )
    # Float32 vectors hardly compress and decompressing them costs a restore time: only the
    # ids and payloads are compressed.
    compression = {name: "none" if name.startswith(VECTOR_PREFIX) else "zstd"
                   for name in schema.names}
    # No dictionaries or statistics: ids, payloads and vectors are all distinct, and trying
    # them cost the writer half its time (measured at 100k points: 1.17 s against 0.55 s).
    return pq.ParquetWriter(path, schema, compression=compression, use_dictionary=False,
                            write_statistics=False), schema


class _ManifestUnfit(Exception):
    """The manifest cannot say exactly what the store holds: the points are read from the
    store instead, as for a store of another kind."""


def _unrecorded(manifest: Manifest, cfg: Config, specs: list[Any]) -> str | None:
    """Why points.parquet cannot be written from the manifest (see _write_recorded_points)."""
    by_name = {s.name: s for s in cfg.spaces}
    for spec in specs:
        space = by_name.get(spec.name)
        if space is None or not space.normalize:
            return (f"the vectors of {spec.name!r} are not cached normalised, and the store "
                    "keeps them normalised")
    return manifest.points.unrecorded([s.name for s in specs])


def _write_recorded_points(path: Path, manifest: Manifest, cfg: Config, specs: list[Any],
                           store_points: int, batch_size: int) -> int:
    """Write points.parquet from the manifest: every confirmed point with the payload it was
    written with and its cached vectors, in the format a scroll of the store gives.

    The store is not read: the snapshot's shard files are its bytes, and a restore reads
    them back against this file before it switches, so a store that differs from its
    manifest (a silently damaged vector file, say) is caught then and restored from this
    file. Only a manifest that records every point exactly is used: no pending write, no
    point without its chunk, the store's count, every vector cached with a good checksum,
    and spaces whose vectors are cached normalised (a cosine store keeps those unchanged):
    ``_unrecorded`` has said so before this is called.
    """
    by_name = {s.name: s for s in cfg.spaces}
    spaces = [(s.name, by_name[s.name].space_id) for s in specs]
    writer, schema = _points_writer(path, specs)
    n = 0
    try:
        with writer:
            for batch in manifest.points.recorded(cfg.kb, spaces, batch_size):
                columns: list[pa.Array] = [batch.column("id")]
                for i, spec in enumerate(specs):
                    columns.append(_cached_vector_column(batch, i, spec))
                columns.append(batch.column("payload"))
                writer.write_batch(pa.record_batch(columns, schema=schema))
                n += batch.num_rows
    except _ManifestUnfit:
        path.unlink(missing_ok=True)
        raise
    if n != store_points:
        path.unlink()
        raise _ManifestUnfit(f"the manifest records {n} points, the store holds "
                             f"{store_points}")
    return n


def _cached_vector_column(batch: pa.RecordBatch, i: int, spec: Any) -> pa.Array:
    """The ``spec`` vector of a batch of recorded points, checked against its checksums."""
    named = batch.column(f"named{i}").to_numpy(zero_copy_only=False).astype(bool)
    blobs = batch.column(f"vector{i}")
    if blobs.null_count and (named & ~blobs.is_valid().to_numpy(zero_copy_only=False)).any():
        raise _ManifestUnfit(f"a point's {spec.name!r} vector is not in the embedding cache")
    size = 4 * spec.dim
    kept = [(b, k) for b, k, w in zip(blobs.to_pylist(), batch.column(f"checksum{i}")
                                      .to_pylist(), named, strict=True) if w]
    for blob, checksum in kept:
        if len(blob) != size or vector_checksum(blob) != checksum:
            raise _ManifestUnfit(f"a cached {spec.name!r} vector fails its checksum "
                                 "(`kbguard verify` names it)")
    matrix = np.zeros((len(named), spec.dim), dtype="<f4")
    if kept:
        matrix[named] = np.frombuffer(b"".join(b for b, _ in kept), dtype="<f4"
                                      ).reshape(len(kept), spec.dim)
    values = pa.array(matrix.reshape(-1), pa.float32())
    mask = None if named.all() else pa.array(~named)
    return pa.FixedSizeListArray.from_arrays(values, spec.dim, mask=mask)


def _write_points(path: Path, pages: Iterator[list[Point]], specs: list[Any],
                  progress: Progress) -> int:
    """Stream store pages into Parquet, one row group per page: memory bounded by the page."""
    writer, schema = _points_writer(path, specs)
    n = 0
    with writer:
        for page in pages:
            columns: list[pa.Array] = [pa.array([p.id for p in page], pa.string())]
            for s in specs:
                columns.append(_vector_column(page, s.name, s.dim))
            columns.append(pa.array(
                [json.dumps(p.payload, sort_keys=True, ensure_ascii=False) for p in page],
                pa.string()))
            writer.write_batch(pa.record_batch(columns, schema=schema))
            n += len(page)
            progress.advance(len(page))
    return n


def _vector_column(page: list[Point], name: str, dim: int) -> pa.Array:
    matrix = np.zeros((len(page), dim), dtype="<f4")
    present = np.ones(len(page), dtype=bool)
    for i, p in enumerate(page):
        v = p.vectors.get(name)
        if v is None or v.shape != (dim,):
            present[i] = False  # a point without this vector: a null, never a made-up one
        else:
            matrix[i] = v
    values = pa.array(matrix.reshape(-1), pa.float32())
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def _corpus_revision(run: dict[str, Any] | None) -> dict[str, Any]:
    if run is None:
        return {"fingerprint": None, "git_rev": None, "rebuild_run": None}
    git_rev = None
    for note in (run.get("summary") or {}).get("notes", []):
        if note.startswith("corpus git revision "):
            git_rev = note.rsplit(" ", 1)[-1]
    finished = run.get("finished_at")
    return {"fingerprint": run.get("corpus_rev"), "git_rev": git_rev,
            "rebuild_run": run.get("run_id"),
            "rebuilt_at": finished.isoformat(timespec="seconds") if finished else None}




# -- reading points back ----------------------------------------------------------------------

@dataclass
class PointBatch:
    ids: list[str]
    vectors: dict[str, np.ndarray]       # name -> (n, dim) float32
    present: dict[str, np.ndarray]       # name -> (n,) bool: False where the point has no vector
    payloads: list[str]                  # JSON text, parsed by the caller

    def points(self) -> list[Point]:
        out = []
        for i, pid in enumerate(self.ids):
            vecs = {name: m[i] for name, m in self.vectors.items() if self.present[name][i]}
            out.append(Point(pid, vecs, json.loads(self.payloads[i])))
        return out


def read_points(folder: Path, body: dict[str, Any], batch_size: int = BATCH
                ) -> Iterator[PointBatch]:
    """The snapshot's points in batches; checks the columns against the metadata."""
    vectors = {v["name"]: int(v["dim"]) for v in body["config"]["vectors"]}
    pf = pq.ParquetFile(_safe_file(folder, POINTS_FILE))
    want = {"id", "payload", *(VECTOR_PREFIX + n for n in vectors)}
    if set(pf.schema_arrow.names) != want:
        raise SnapshotDamaged(
            f"Snapshot {folder.name}: {POINTS_FILE} has columns {pf.schema_arrow.names}, "
            f"not {sorted(want)}.", snapshot_id=folder.name, file=POINTS_FILE)
    for batch in pf.iter_batches(batch_size=batch_size):
        n = batch.num_rows
        mats, present = {}, {}
        for name, dim in vectors.items():
            col = batch.column(VECTOR_PREFIX + name)
            if not isinstance(col.type, pa.FixedSizeListType) or col.type.list_size != dim:
                raise SnapshotDamaged(
                    f"Snapshot {folder.name}: vector {name!r} in {POINTS_FILE} is {col.type}, "
                    f"not {dim} float32 values.", snapshot_id=folder.name, file=POINTS_FILE)
            flat = col.values.slice(col.offset * dim, n * dim)
            mats[name] = flat.to_numpy(zero_copy_only=False).astype("<f4", copy=False
                                                                     ).reshape(n, dim)
            present[name] = (~np.asarray(col.is_null().to_numpy(zero_copy_only=False))
                             if col.null_count else np.ones(n, dtype=bool))
        yield PointBatch(batch.column("id").to_pylist(), mats, present,
                         batch.column("payload").to_pylist())


# -- pruning ----------------------------------------------------------------------------------

@dataclass
class PruneReport:
    kept: list[str]
    deleted: list[str]
    dry_run: bool
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable: never deleted
    temporary: list[str] = field(default_factory=list)           # crashed writes cleared away

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_prune(entries: list[SnapshotEntry], keep_last: int, keep_daily: int) -> set[str]:
    """The ids to keep: the ``keep_last`` newest, plus the newest of each of the
    ``keep_daily`` most recent days (UTC) that have a snapshot."""
    newest_first = sorted(entries, key=lambda s: (s.created_at or s.id, s.id), reverse=True)
    keep = {s.id for s in newest_first[:keep_last]}
    days: list[str] = []
    for s in newest_first:
        day = s.created_at[:10] if s.created_at else f"{s.id[:4]}-{s.id[4:6]}-{s.id[6:8]}"
        if day not in days:
            days.append(day)
            if len(days) > keep_daily:
                break
            keep.add(s.id)
    return keep


def prune_snapshots(cfg: Config, *, keep_last: int, keep_daily: int,
                    dry_run: bool = False) -> PruneReport:
    """Delete the snapshots that the retention rule does not keep (and crashed writes)."""
    if keep_last < 0 or keep_daily < 0:
        raise SnapshotError("--keep-last and --keep-daily must be 0 or more.")
    if keep_last == 0 and keep_daily == 0:
        raise SnapshotError(
            "--keep-last 0 --keep-daily 0 would delete every snapshot. Keep at least one; "
            "to delete them all, remove the snapshot folder yourself.")
    with kb_lock(cfg.manifest, "snapshot prune"):
        entries = list_snapshots(cfg)
        readable = [s for s in entries if s.problem is None]
        keep = plan_prune(readable, keep_last, keep_daily)
        report = PruneReport(
            kept=[s.id for s in readable if s.id in keep],
            deleted=[s.id for s in readable if s.id not in keep],
            dry_run=dry_run,
            skipped=[{"id": s.id, "problem": s.problem or ""} for s in entries if s.problem],
            temporary=sorted(p.name for p in cfg.snapshot_root.glob(_TMP_PREFIX + "*"))
            if cfg.snapshot_root.is_dir() else [],
        )
        if dry_run:
            return report
        by_id = {s.id: s for s in readable}
        for sid in report.deleted:
            _delete_snapshot(cfg, by_id[sid])
        for name in report.temporary:  # we hold the lock, so no snapshot is being written
            shutil.rmtree(cfg.snapshot_root / name, ignore_errors=True)
    return report


def _delete_snapshot(cfg: Config, snap: SnapshotEntry) -> None:
    dvc_file = snap.path.with_name(snap.id + ".dvc")
    if dvc_file.exists():
        root = find_dvc_root(cfg.snapshot_root)
        if root is not None:
            # removes the .dvc file and its .gitignore entry; the data stays in the DVC cache
            # and remotes until `dvc gc`
            _dvc(root, "remove", "-q", str(dvc_file.relative_to(root)))
        else:
            dvc_file.unlink()
    if snap.path.is_dir():
        shutil.rmtree(snap.path)


# -- DVC --------------------------------------------------------------------------------------

def _dvc(root: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SnapshotError(f"`dvc {args[0]}` could not run in {root}: {exc}.") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise SnapshotError(
            f"`dvc {' '.join(args)}` failed in {root}: {' '.join(detail[-3:]) or 'no output'}. "
            "Fix the DVC setup (`dvc remote list`, `dvc doctor`) and run again."
        )
    return done.stdout


def _dvc_root_for(cfg: Config) -> Path:
    root = find_dvc_root(cfg.snapshot_root.resolve())
    if root is None:
        raise SnapshotError(
            f"The snapshot root {cfg.snapshot_root} is not inside a DVC repository. Run "
            "`dvc init` in the repository that holds it (and add a remote with `dvc remote add "
            "-d NAME URL`), or leave out --dvc-push."
        )
    return root


def _dvc_add_and_push(cfg: Config, folder: Path, remote: str | None) -> dict[str, str]:
    root = _dvc_root_for(cfg)
    rel = str(folder.relative_to(root))
    _dvc(root, "add", "-q", rel)
    _dvc(root, "push", "-q", *(["-r", remote] if remote else []), rel + ".dvc")
    return {"dvc_file": rel + ".dvc", "remote": remote or "(default)",
            "next": f"commit {rel}.dvc and {Path(rel).parent / '.gitignore'} with git"}


def pull_snapshot(cfg: Config, snapshot_id: str, remote: str | None = None) -> Path:
    """Fetch a DVC-tracked snapshot that is not present locally; returns its folder."""
    folder = snapshot_folder(cfg, snapshot_id)
    dvc_file = folder.with_name(snapshot_id + ".dvc")
    if not dvc_file.is_file():
        raise SnapshotError(
            f"There is no snapshot {snapshot_id} under {cfg.snapshot_root} (neither a folder nor "
            "a .dvc file). `kbguard snapshot list` shows the snapshots there."
        )
    root = _dvc_root_for(cfg)
    _dvc(root, "pull", "-q", *(["-r", remote] if remote else []),
         str(dvc_file.relative_to(root)))
    if not folder.is_dir():
        raise SnapshotError(f"`dvc pull` did not bring back {folder}. Check {dvc_file}.")
    return folder
