"""The snapshot format: what a snapshot folder holds, and how it is written and read back.

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

It is written into ``<root>/.tmp-<id>-<random>`` and renamed into place after everything is
on disk (``start_folder``, then ``publish``), so a folder with a snapshot's name is always
complete. Nothing read back is trusted: the metadata is checked against its own checksum,
file names must be plain names inside the folder, every file must match its sha256 before a
single row is read, and no file is ever unpickled.

This module knows folders and files only; `kbguard.recovery.snapshot` (the commands) and
`kbguard.recovery.restore` work on a KB with it, and whatever only asks "is there a
snapshot?" reads ``list_snapshots_under``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kbguard.core.durable import copy_hashed, fsync_path
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import SnapshotDamaged, SnapshotError
from kbguard.store import Point, VectorSpec

FORMAT_VERSION = 1
META_FILE = "snapshot.json"
POINTS_FILE = "points.parquet"
TABLES = ("documents", "chunks", "embeddings")
DATA_FILES = (POINTS_FILE, *(f"{t}.parquet" for t in TABLES))
SHARD_DIR = "shard"            # the shard's files, in the snapshot and in snapshot.json
BATCH = 4096                   # points per Parquet row group and per store page
VECTOR_PREFIX = "vector:"      # points.parquet column of each named vector
_TMP_PREFIX = ".tmp-"
_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,127}$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_HASH_BLOCK = 1 << 20


def table_file(table: str) -> str:
    """The name of the file that holds manifest table ``table`` (one of ``TABLES``)."""
    return f"{table}.parquet"


# -- identity ---------------------------------------------------------------------------------

def new_snapshot_id(now: datetime | None = None) -> str:
    """A name that sorts by creation time: ``20261129T013605.123Z``."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%S.") + f"{now.microsecond // 1000:03d}Z"


def check_snapshot_id(snapshot_id: str) -> str:
    """The id, if it is a plain folder name; SnapshotError otherwise (it is used as a path)."""
    if not _ID.match(snapshot_id) or ".." in snapshot_id or snapshot_id.endswith(".dvc"):
        raise SnapshotError(
            f"{snapshot_id!r} is not a snapshot id. Ids are folder names such as "
            "20261129T013605.123Z; `kbguard snapshot list` shows them."
        )
    return snapshot_id


# -- snapshot.json ----------------------------------------------------------------------------

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
    meta: dict[str, Any] = body
    return meta


# -- checksums --------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


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


# -- writing a snapshot folder ----------------------------------------------------------------

def start_folder(root: Path, snapshot_id: str) -> Path:
    """A new temporary folder under ``root`` to write snapshot ``snapshot_id`` into; nothing
    lists it as a snapshot until ``publish`` renames it. OSError as the filesystem raises it."""
    tmp = root / f"{_TMP_PREFIX}{snapshot_id}-{secrets.token_hex(3)}"
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, body: dict[str, Any]) -> dict[str, Any]:
    """Finish the snapshot written into ``tmp`` (by ``start_folder``): list the sha256, size
    and rows of each data file, write ``snapshot.json``, sync every file and rename the folder
    into place as ``<root>/<body["id"]>``. Returns the body written."""
    files = {}
    for name in DATA_FILES:
        path = tmp / name
        files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                       "rows": pq.ParquetFile(path).metadata.num_rows}
    body = {**body, "format_version": FORMAT_VERSION, "files": files}
    (tmp / META_FILE).write_bytes(render_meta(body))
    for name in (*DATA_FILES, META_FILE):
        fsync_path(tmp / name)
    os.rename(tmp, tmp.parent / check_snapshot_id(body["id"]))
    fsync_path(tmp.parent)
    return body


def unfinished_folders(root: Path) -> list[str]:
    """The names of the temporary folders under ``root``: snapshots being written, or left by
    a write that crashed."""
    return sorted(p.name for p in root.glob(_TMP_PREFIX + "*")) if root.is_dir() else []


# -- finding snapshots ------------------------------------------------------------------------

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


def list_snapshots_under(root: Path) -> list[SnapshotEntry]:
    """Every snapshot under ``root``, local or DVC-tracked only, oldest first."""
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


# -- shard files ------------------------------------------------------------------------------

class ShardUnfit(Exception):
    """The shard folder holds something a snapshot cannot carry: the snapshot goes without
    shard files (its Parquet files hold everything)."""


def copy_shard_files(src: Path, dst: Path, engine: str,
                     engine_version: str | None) -> dict[str, Any]:
    """Copy a closed shard folder ``src`` into ``dst`` (a snapshot's ``shard`` folder, which
    exists), each file hashed as it is copied; returns its entry for snapshot.json."""
    files: dict[str, Any] = {}
    dirs: list[str] = []
    for here, subdirs, names in os.walk(src):
        rel_here = Path(here).relative_to(src)
        subdirs.sort()
        for d in subdirs:
            rel = (rel_here / d).as_posix()
            if not _FILE_NAME.match(d):
                raise ShardUnfit(f"the shard holds a folder named {rel!r}, which a snapshot "
                                 "cannot list")
            (dst / rel).mkdir(parents=True)
            dirs.append(rel)
        for name in sorted(names):
            rel = (rel_here / name).as_posix()
            if not _FILE_NAME.match(name):
                raise ShardUnfit(f"the shard holds a file named {rel!r}, which a snapshot "
                                 "cannot list")
            if (Path(here) / name).is_symlink():
                raise SnapshotError(f"The Edge store at {src} holds a link, {rel}; kbguard "
                                    "does not copy links. Remove it, or rebuild the store.")
            digest, size = copy_hashed(Path(here) / name, dst / rel)
            files[rel] = {"sha256": digest, "bytes": size}
    for rel in [*dirs, "."]:
        fsync_path(dst / rel)
    return {"engine": engine, "engine_version": engine_version, "files": files, "dirs": dirs}


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
    """The folders of the shard a snapshot lists, each checked as ``shard_entries`` does."""
    return [d for d in body["shard"].get("dirs", [])
            if _safe_rel(folder, folder / SHARD_DIR, d)]


def restore_shard_files(folder: Path, body: dict[str, Any], target: Path,
                        progress: Progress = SILENT,
                        after_each: Callable[[], None] = lambda: None) -> None:
    """Copy the shard files of the snapshot in ``folder`` into the new folder ``target``, each
    checked against its sha256 as it is copied (SnapshotDamaged names the first that is
    missing or differs), then synced; ``after_each`` runs after every file. An OSError of the
    target's filesystem (a full disk) is the caller's to explain."""
    entries = shard_entries(folder, body)
    target.mkdir()
    for rel in shard_dirs(folder, body):
        (target / rel).mkdir(parents=True, exist_ok=True)
    progress.stage("restore shard files", len(entries))
    for rel, (src, entry) in entries.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            digest, size = copy_hashed(src, target / rel)
        except FileNotFoundError as exc:
            raise SnapshotDamaged(f"{SHARD_DIR}/{rel} is missing", snapshot_id=folder.name,
                                  file=f"{SHARD_DIR}/{rel}") from exc
        if digest != entry.get("sha256") or size != entry.get("bytes"):
            raise SnapshotDamaged(f"{SHARD_DIR}/{rel} does not match its sha256",
                                  snapshot_id=folder.name, file=f"{SHARD_DIR}/{rel}")
        after_each()
        progress.advance(1)
    for rel in [*shard_dirs(folder, body), "."]:
        fsync_path(target / rel)


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


# -- points.parquet ---------------------------------------------------------------------------

class PointsWriter:
    """Writes ``points.parquet``, one row group per batch written: memory bounded by the
    batch. Use it as a context manager; the file is complete when it closes."""

    def __init__(self, path: Path, specs: Sequence[VectorSpec]):
        self.specs = list(specs)
        self.schema = pa.schema(
            [pa.field("id", pa.string(), nullable=False)]
            + [pa.field(VECTOR_PREFIX + s.name, pa.list_(pa.float32(), s.dim))
               for s in self.specs]
            + [pa.field("payload", pa.string(), nullable=False)]
        )
        # Float32 vectors hardly compress and decompressing them costs a restore time: only
        # the ids and payloads are compressed.
        compression = {name: "none" if name.startswith(VECTOR_PREFIX) else "zstd"
                       for name in self.schema.names}
        # No dictionaries or statistics: ids, payloads and vectors are all distinct, and
        # trying them cost the writer half its time (measured at 100k points: 1.17 s against
        # 0.55 s).
        self._writer = pq.ParquetWriter(path, self.schema, compression=compression,
                                        use_dictionary=False, write_statistics=False)

    def write(self, ids: pa.Array, vectors: Sequence[pa.Array], payloads: pa.Array) -> None:
        """One batch: the ids, one ``vector_array`` per spec (in the order given), and the
        payloads as JSON text."""
        self._writer.write_batch(pa.record_batch([ids, *vectors, payloads], schema=self.schema))

    def write_points(self, page: Sequence[Point]) -> None:
        """One batch of points as a store gives them."""
        self.write(pa.array([p.id for p in page], pa.string()),
                   [_vector_column(page, s.name, s.dim) for s in self.specs],
                   pa.array([json.dumps(p.payload, sort_keys=True, ensure_ascii=False)
                             for p in page], pa.string()))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> PointsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vector_array(matrix: np.ndarray, present: np.ndarray) -> pa.Array:
    """A vector column of ``points.parquet`` from an ``(n, dim)`` float32 matrix: null where
    ``present`` is false (a point without this vector), never a made-up vector."""
    dim = matrix.shape[1]
    values = pa.array(np.asarray(matrix, dtype="<f4").reshape(-1), pa.float32())
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)


def _vector_column(page: Sequence[Point], name: str, dim: int) -> pa.Array:
    matrix = np.zeros((len(page), dim), dtype="<f4")
    present = np.ones(len(page), dtype=bool)
    for i, p in enumerate(page):
        v = p.vectors.get(name)
        if v is None or v.shape != (dim,):
            present[i] = False
        else:
            matrix[i] = v
    return vector_array(matrix, present)


def write_points(path: Path, pages: Iterable[Sequence[Point]], specs: Sequence[VectorSpec],
                 progress: Progress = SILENT) -> int:
    """Stream store pages into ``points.parquet``, one row group per page; returns the number
    of points written."""
    n = 0
    with PointsWriter(path, specs) as writer:
        for page in pages:
            writer.write_points(page)
            n += len(page)
            progress.advance(len(page))
    return n


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
