"""Snapshots of a KB: create, list, verify and prune them, and track them with DVC.

What a snapshot folder holds, and how it is written and read back, is the snapshot format
(``kbguard.snapshot_format``); these are the commands that take a KB's store and manifest into
that format, under the KB's lock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from kbguard.config import Config
from kbguard.core.disk import allocated, disk_full, is_disk_full, require_free
from kbguard.core.faults import crash_point
from kbguard.core.outcome import Verdict
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import SnapshotDamaged, SnapshotError
from kbguard.ingest.dvc_corpus import find_dvc_root
from kbguard.kb.preflight import Lock, Needs, preflight
from kbguard.manifest import Manifest, vector_checksum
from kbguard.snapshot_format import (
    BATCH,
    META_FILE,
    POINTS_FILE,
    SHARD_DIR,
    TABLES,
    PointsWriter,
    ShardUnfit,
    SnapshotEntry,
    check_snapshot_id,
    copy_shard_files,
    list_snapshots_under,
    new_snapshot_id,
    publish,
    start_folder,
    table_file,
    unfinished_folders,
    vector_array,
    verify_folder,
    write_points,
)
from kbguard.store import NativeFiles, Store, store_for

_AGAIN = "run `kbguard snapshot create` again (the unfinished snapshot was deleted)"


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

    @property
    def verdict(self) -> Verdict:
        """A damaged snapshot is a finding of the check, not a failure to check."""
        return Verdict.HEALTHY if self.ok else Verdict.FINDINGS

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
    """Every snapshot of the KB, local or DVC-tracked only, oldest first."""
    return list_snapshots_under(cfg.snapshot_root)


# -- creating ---------------------------------------------------------------------------------

def _nothing_to_snapshot(cfg: Config) -> SnapshotError:
    return SnapshotError(f"There is no manifest at {cfg.manifest}, so there is nothing to "
                         "snapshot. Run `kbguard rebuild` first.")


def create_snapshot(cfg: Config, *, batch_size: int = BATCH, dvc_push: bool = False,
                    dvc_remote: str | None = None, progress: Progress = SILENT) -> CreateReport:
    """Write a snapshot of the KB's store and manifest; returns what was written."""

    if batch_size < 1:
        raise SnapshotError(f"batch_size must be positive, not {batch_size}.")
    started = time.perf_counter()
    notes: list[str] = []
    stages: dict[str, float] = {}
    with preflight(cfg, Needs("snapshot create", manifest=_nothing_to_snapshot,
                              lock=Lock.WRITE)):
        sid = new_snapshot_id()
        root = cfg.snapshot_root
        final = root / sid
        try:
            tmp = start_folder(root, sid)
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
                # A store with files of its own (an Edge shard) has them copied too: as many
                # blocks as they take.
                native = store.native_files()
                require_free(tmp, 2 * 4 * info.points * sum(have.values()) + (1 << 20)
                             + (allocated(native.path) if native is not None else 0),
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
                    if native is not None:
                        # The points come from the manifest, so the store is not read: its
                        # files are copied (hashing releases the GIL) while they are written.
                        why = _unrecorded(manifest, cfg, specs)
                        copier = _ShardCopier(store, native, tmp / SHARD_DIR)
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
                        points = write_points(tmp / POINTS_FILE,
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
            t = time.perf_counter()
            body: dict[str, Any] = {
                "id": sid,
                "kb": cfg.kb,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
            }
            if shard is not None:
                body["shard"] = shard
            files = publish(tmp, body)["files"]
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
    """Copies a store's own files (an Edge store's shard folder) into the snapshot, the store
    closed and held."""

    def __init__(self, store: Store, native: NativeFiles, dst: Path):
        super().__init__(name="kbguard-snapshot-shard", daemon=True)
        self.store, self.native, self.dst = store, native, dst
        self.shard: dict[str, Any] | None = None
        self.unfit: str | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        t = time.perf_counter()
        try:
            self.dst.mkdir()
            with self.store.closed_and_held() as shard_path:
                self.shard = copy_shard_files(shard_path, self.dst, self.native.engine,
                                              self.native.engine_version)
        except ShardUnfit as exc:
            shutil.rmtree(self.dst, ignore_errors=True)
            self.unfit = str(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the snapshotting thread, which raises it
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
                self.manifest.tables.export(table, self.folder / table_file(table))
        except Exception as exc:  # noqa: BLE001 - handed to the snapshotting thread, which raises it
            self.error = exc


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
    n = 0
    try:
        with PointsWriter(path, specs) as writer:
            for batch in manifest.points.recorded(cfg.kb, spaces, batch_size):
                writer.write(batch.column("id"),
                             [_cached_vector_column(batch, i, spec)
                              for i, spec in enumerate(specs)],
                             batch.column("payload"))
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
    return vector_array(matrix, named)


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
    with preflight(cfg, Needs("snapshot prune", lock=Lock.WRITE)):
        entries = list_snapshots(cfg)
        readable = [s for s in entries if s.problem is None]
        keep = plan_prune(readable, keep_last, keep_daily)
        report = PruneReport(
            kept=[s.id for s in readable if s.id in keep],
            deleted=[s.id for s in readable if s.id not in keep],
            dry_run=dry_run,
            skipped=[{"id": s.id, "problem": s.problem or ""} for s in entries if s.problem],
            temporary=unfinished_folders(cfg.snapshot_root),
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
