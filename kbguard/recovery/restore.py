"""Restore: replace a KB's store and manifest with a verified snapshot, then catch up.

The order is what makes a restore safe to kill at any moment:

1. check the snapshot (metadata checksum, every file's sha256) — a damaged one is refused
   before anything is written;
2. write the journal ``<manifest>.restore.json`` (phase ``building``), then build the snapshot
   into a *staging* store beside the live one (an Edge shard folder ``<store>.staging-<tag>``,
   a Qdrant collection ``<name>--<tag>``) and a staging manifest ``<manifest>.restore-<tag>``.
   An Edge snapshot restored into an Edge store of the same engine version has its shard
   files copied (each checked against its sha256 as it is copied); anything else, and any
   shard file or read-back that does not match, is rebuilt point by point from Parquet;
3. verify the staging store point by point against the snapshot, and the staging manifest's
   row counts;
4. set the journal's phase to ``switching`` — the commit point, one atomic rename;
5. swap the staging store in (the old one is set aside), replace the manifest file, delete the
   set-aside store, delete the journal;
6. catch up: an incremental rebuild of whatever changed in the corpus since the snapshot.

Killed before step 4, the KB is the old one, untouched; the next restore deletes the partial
staging copy and starts again. Killed after it, the next restore (any snapshot) first finishes
the switch the journal records, so store and manifest always end up from the same snapshot.
"""

from __future__ import annotations

import json
import os
import queue
import random
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kbguard.config import Config
from kbguard.core.disk import disk_full, existing_ancestor, free_bytes, is_disk_full
from kbguard.core.durable import atomic_write_text, fsync_path
from kbguard.core.faults import crash_point
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import (
    DiskFullError,
    EmbedError,
    KbguardError,
    ManifestError,
    ProviderUnavailable,
    SnapshotDamaged,
    SnapshotError,
    SnapshotWrongModel,
    StoreDamaged,
    StoreError,
)
from kbguard.ingest.rebuild import rebuild
from kbguard.integrity.verify import DRIFT_MIN_COSINE, ReembedPoint, reembed_cosines
from kbguard.kb.preflight import Lock, Needs, preflight
from kbguard.manifest import Manifest, now
from kbguard.providers import Usage, spent, spent_since
from kbguard.recovery.snapshot import list_snapshots, pull_snapshot, snapshot_folder
from kbguard.snapshot_format import (
    BATCH,
    POINTS_FILE,
    TABLES,
    VECTOR_PREFIX,
    PointBatch,
    read_points,
    restore_shard_files,
    table_file,
    verify_folder,
    write_points,
)
from kbguard.store import NativeFiles, Store, VectorSpec, store_for

BUILDING, SWITCHING = "building", "switching"
# a restore is the one command that runs while a restore is half done: it finishes it
RESTORE = Needs("restore", lock=Lock.WRITE, restoring=True, store=True)


@dataclass
class RestoreReport:
    kb: str
    snapshot: str
    backend: str
    points: int
    seconds: float
    points_per_s: float
    stages: dict[str, float]
    notes: list[str] = field(default_factory=list)
    catch_up: dict[str, Any] | None = None
    # "shard files": the snapshot's Edge shard copied in; "parquet": rebuilt point by point;
    # "finished": an interrupted restore of this snapshot was completed
    method: str = "parquet"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the journal ------------------------------------------------------------------------------

def journal_path(cfg: Config) -> Path:
    return cfg.manifest.with_name(cfg.manifest.name + ".restore.json")


def _staged_manifest(cfg: Config, tag: str) -> Path:
    return cfg.manifest.with_name(f"{cfg.manifest.name}.restore-{tag}")


def pending_restore(cfg: Config) -> dict[str, Any] | None:
    """The journal of an interrupted restore, or None. While one is in phase ``switching``,
    store and manifest may be from different snapshots until `kbguard restore` runs again."""
    path = journal_path(cfg)
    if not path.exists():
        return None
    try:
        journal = json.loads(path.read_text())
        if journal["phase"] not in (BUILDING, SWITCHING) or not journal["tag"].isalnum():
            raise ValueError(journal["phase"])
        found: dict[str, Any] = journal
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SnapshotError(
            f"The restore journal {path} is unreadable ({exc}). It is written atomically, so "
            "something else changed it: inspect it, then delete it and run the restore again."
        ) from exc


def _write_journal(cfg: Config, journal: dict[str, Any]) -> None:
    atomic_write_text(journal_path(cfg), json.dumps(journal))


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        if p.exists():
            p.unlink()


# -- restoring --------------------------------------------------------------------------------

def restore(cfg: Config, snapshot_id: str | None = None, *, latest: bool = False,
            catch_up: bool = True, dvc_remote: str | None = None, batch_size: int = BATCH,
            progress: Progress = SILENT) -> RestoreReport:
    """Restore the KB from snapshot ``snapshot_id`` (or the newest intact one with ``latest``)."""

    if (snapshot_id is None) == (not latest):
        raise SnapshotError("Name one snapshot ID or pass --latest (not both). "
                            "`kbguard snapshot list` shows the snapshots.")
    started = time.perf_counter()
    notes: list[str] = []
    stages: dict[str, float] = {}
    with preflight(cfg, RESTORE) as kb:
        live = kb.store
        finished = _finish_interrupted(cfg, live, notes)
        t = time.perf_counter()
        sid, folder, body = _choose(cfg, snapshot_id, dvc_remote, notes, progress)
        stages["check snapshot"] = time.perf_counter() - t
        _check_fits(cfg, sid, body)
        if finished == sid:
            points = int(body["counts"]["points"])  # that restore is this one: it is done
            method = "finished"
        else:
            _check_room(cfg, live, sid, folder, body)
            points, method = _restore_into(cfg, live, sid, folder, body, batch_size,
                                           stages, notes, progress)
    seconds = time.perf_counter() - started
    report = RestoreReport(
        kb=cfg.kb, snapshot=sid, backend=cfg.store_backend, points=points,
        seconds=round(seconds, 3), points_per_s=round(points / seconds, 1) if seconds else 0.0,
        stages={k: round(v, 3) for k, v in stages.items()}, notes=notes, method=method)
    if catch_up:
        try:
            report.catch_up = rebuild(cfg, progress=progress).to_dict()
        except KbguardError as exc:
            raise type(exc)(
                f"Snapshot {sid} was restored, but the catch-up rebuild failed: {exc} "
                "The KB is as of the snapshot; run `kbguard rebuild` once this is fixed."
            ) from exc
    return report


def _choose(cfg: Config, snapshot_id: str | None, dvc_remote: str | None, notes: list[str],
            progress: Progress) -> tuple[str, Path, dict[str, Any]]:
    """The snapshot to restore, checked; with --latest the newest intact one."""
    if snapshot_id is not None:
        candidates = [snapshot_id]
    else:
        candidates = [s.id for s in reversed(list_snapshots(cfg))]
        if not candidates:
            raise SnapshotError(
                f"There are no snapshots under {cfg.snapshot_root}. Take one with "
                "`kbguard snapshot create`, or run `kbguard rebuild --full`.")
    refused: list[str] = []
    for sid in candidates:
        try:
            folder = snapshot_folder(cfg, sid)
            if not folder.is_dir():
                progress.note(f"snapshot {sid} is not here: pulling it with DVC")
                folder = pull_snapshot(cfg, sid, dvc_remote)
            progress.stage(f"check {sid}")
            # the shard files are checked as they are copied: a damaged one is a reason to
            # restore from Parquet, not to refuse the snapshot
            body = verify_folder(folder, shard=False)
        except SnapshotError as exc:
            if snapshot_id is not None:
                raise
            refused.append(str(exc))
            notes.append(f"skipped snapshot {sid}: {exc}")
            progress.note(f"skipped snapshot {sid}: {exc}")
            continue
        if refused:
            notes.append(f"restoring {sid}, the newest intact snapshot")
            progress.note(f"restoring {sid}, the newest intact snapshot")
        return sid, folder, body
    raise SnapshotError("No intact snapshot to restore: " + " ".join(refused))


def _check_fits(cfg: Config, sid: str, body: dict[str, Any]) -> None:
    """Refuse a snapshot whose KB or vectors are not this config's."""
    if body.get("kb") != cfg.kb:
        raise SnapshotError(
            f"Snapshot {sid} is of KB {body.get('kb')!r}, but the config is for KB {cfg.kb!r}. "
            "Restore it with that KB's config.")
    have = {s["name"]: (s["space_id"], int(s["dim"])) for s in body["config"]["spaces"]}
    want = {s.name: (s.space_id, s.dim) for s in cfg.spaces}
    vectors = {v["name"]: int(v["dim"]) for v in body["config"]["vectors"]}
    if have != want or vectors != {s.name: s.dim for s in cfg.spaces}:
        raise SnapshotError(
            f"Snapshot {sid} holds the spaces {_fmt(have)}, but the config has {_fmt(want)}. "
            "Vectors of different models never mix: restore with the config the snapshot was "
            "taken with, or run `kbguard rebuild --full` for the new spaces.")


# A DuckDB manifest takes about twice the raw bytes of its rows (measured: ~3 KB per 384-d
# cached vector) plus a few MiB that even a small one allocates in blocks.
_MANIFEST_FACTOR = 2
_MANIFEST_BASE = 4 << 20


def _check_room(cfg: Config, live: Store, sid: str, folder: Path, body: dict[str, Any]) -> None:
    """Refuse, before anything is written, a restore whose copy cannot fit: the staging store
    and manifest are built beside the live ones, which stay until the switch. The sizes come
    from the snapshot (its points and the uncompressed size of its Parquet files)."""
    points = int(body["counts"]["points"])
    wants: list[tuple[Path, int, str]] = []
    store = live.space_needed(points, _uncompressed(folder / POINTS_FILE))
    if store is not None:
        wants.append((store[0], store[1], f"the store's {points:,} points"))
    tables = sum(_uncompressed(folder / table_file(t)) for t in TABLES)
    wants.append((cfg.manifest, _MANIFEST_FACTOR * tables + _MANIFEST_BASE, "the manifest"))
    by_fs: dict[int, tuple[Path, int, list[str]]] = {}
    for path, needed, what in wants:
        try:
            dev = existing_ancestor(path).stat().st_dev
        except OSError:
            continue
        where, total, whats = by_fs.get(dev, (path, 0, []))
        by_fs[dev] = (where, total + needed, [*whats, what])
    for where, needed, whats in by_fs.values():
        try:
            free = free_bytes(where)
        except OSError:
            continue
        if free < needed:
            raise disk_full(
                where, f"restore snapshot {sid} (a copy of {' and '.join(whats)} is built "
                "beside the live KB until the switch)", needed=needed,
                resume="run the restore again; the KB was not touched")


def _uncompressed(path: Path) -> int:
    try:
        meta = pq.ParquetFile(path).metadata
        return sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except (OSError, ValueError, pa.ArrowException):
        return 0  # verify_folder has read it already; an estimate is not worth failing over


def _fmt(spaces: dict[str, tuple[str, int]]) -> str:
    return ", ".join(f"{n}={sid}" for n, (sid, _) in sorted(spaces.items())) or "none"


def _clear_leftovers(live: Store, notes: list[str]) -> None:
    """Delete what dead restores left beside the live store.

    A qdrant-client local folder has to open for that, and for a replacement to be built in
    it; when it cannot be opened, the KB's collections in it are deleted unread: nothing in
    them can be read, and the restore under way replaces them. An Edge shard is never opened
    here, so a damaged one is set aside by the switch as usual.
    """
    try:
        live.drop_leftovers()
    except StoreDamaged:
        live.drop()
        live.drop_leftovers()
        notes.append("the live store could not be opened: it was deleted, and the snapshot "
                     "replaces it")


def _restore_into(cfg: Config, live: Store, sid: str, folder: Path, body: dict[str, Any],
                  batch_size: int, stages: dict[str, float], notes: list[str],
                  progress: Progress) -> tuple[int, str]:
    _clear_leftovers(live, notes)  # no journal: anything staged or set aside is a dead restore's
    tag = secrets.token_hex(4)
    staged = _staged_manifest(cfg, tag)
    stage = live.staging(tag)
    _write_journal(cfg, {"snapshot": sid, "tag": tag, "phase": BUILDING,
                         "started_at": now().isoformat(timespec="seconds")})
    method = "parquet"
    try:
        native = stage.native_files()  # a staging store is of the live store's engine
        why_not = _shard_refusal(cfg, native, body)
        if native is not None and why_not is None:
            base = native.path
            try:
                points = _restore_shard(cfg, stage, base, staged, sid, folder, body,
                                        batch_size, stages, progress)
                method = "shard files"
            except (SnapshotError, StoreError) as exc:
                # the shard copy is thrown away; the Parquet files were checked already
                stage.close()
                shutil.rmtree(base, ignore_errors=True)
                _remove(staged)
                why = (f"the snapshot's shard files could not be used ({exc}); restored from "
                       "its Parquet files instead")
                notes.append(why)
                progress.note(why)
        elif body.get("shard") is not None:
            notes.append(f"restored from the snapshot's Parquet files: {why_not}")
        if method == "parquet":
            t = time.perf_counter()
            points = _build(cfg, stage, staged, sid, folder, body, batch_size, progress)
            stages["build"] = time.perf_counter() - t
            t = time.perf_counter()
            _verify_copy(stage, folder, body, batch_size, progress)
            stages["verify"] = time.perf_counter() - t
        stage.close()
    except BaseException:
        _discard_staging(cfg, stage, staged)
        raise
    _commit_and_switch(cfg, live, sid, tag, stages)
    return points, method


def _shard_refusal(cfg: Config, native: NativeFiles | None, body: dict[str, Any]) -> str | None:
    """Why the snapshot's shard files cannot be copied into a store with ``native`` files;
    None when they can."""
    shard = body.get("shard")
    if shard is None:
        return "the snapshot holds no shard files"
    if native is None:
        return (f"the KB's store is {cfg.store_backend}, and the shard files are a Qdrant Edge "
                "store's")
    mine, theirs = native.engine_version, shard.get("engine_version")
    if mine is None or shard.get("engine") != native.engine or theirs != mine:
        return (f"the shard files are from {shard.get('engine')} {theirs}, and this is "
                f"{native.engine} {mine}; a shard loads only into the engine version that "
                "wrote it")
    return None


def _restore_shard(cfg: Config, stage: Store, base: Path, staged: Path, sid: str,
                   folder: Path, body: dict[str, Any], batch_size: int,
                   stages: dict[str, float], progress: Progress) -> int:
    """Copy the snapshot's shard files into the staging store's folder ``base``, each checked
    against its sha256 as it is copied, then read every point back against points.parquet
    (the same check a rebuilt copy gets). SnapshotDamaged or StoreError: not usable, fall
    back."""
    specs = {v["name"]: (int(v["dim"]), v["distance"]) for v in body["config"]["vectors"]}

    def fill() -> int:
        t = time.perf_counter()
        try:
            restore_shard_files(folder, body, base, progress,
                                after_each=lambda: crash_point("restore-build"))
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(base, f"restore snapshot {sid} into {base}",
                                resume="run the restore again; the KB was not "
                                       "touched") from exc
            raise
        stages["copy shard files"] = time.perf_counter() - t
        # The check runs here, while DuckDB loads the manifest tables in its thread: the
        # check needs the GIL, DuckDB does not.
        t2 = time.perf_counter()
        _verify_copy(stage, folder, body, batch_size, progress)
        have = {v.name: (v.dim, v.distance) for v in stage.describe().vectors}
        if have != specs:
            _mismatch(stage, f"its vectors are {have}, the snapshot's {specs}")
        stages["verify"] = time.perf_counter() - t2
        return int(body["counts"]["points"])  # _verify_copy counted what the shard holds

    t = time.perf_counter()
    points = _build(cfg, stage, staged, sid, folder, body, batch_size, progress, fill=fill)
    stages["manifest (after the check)"] = time.perf_counter() - t - sum(
        stages[k] for k in ("copy shard files", "verify"))
    return points


def _commit_and_switch(cfg: Config, live: Store, sid: str, tag: str,
                       stages: dict[str, float]) -> None:
    """The staging copy is checked: journal the switch (from here a killed restore finishes it
    on the next run), then switch."""
    t = time.perf_counter()
    _write_journal(cfg, {"snapshot": sid, "tag": tag, "phase": SWITCHING,
                         "started_at": now().isoformat(timespec="seconds")})
    crash_point("restore-commit")
    _switch(cfg, live, tag)
    stages["switch"] = time.perf_counter() - t


def _discard_staging(cfg: Config, stage: Store, staged: Path) -> None:
    """Not switched: the KB is untouched. Clear the partial copy (a SIGKILL skips this; the
    next restore does it from the journal)."""
    try:
        stage.drop()
        _remove(staged)
        journal_path(cfg).unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - the original error matters more
        pass


def _switch(cfg: Config, live: Store, tag: str) -> None:
    """Roll a committed restore forward; each step is idempotent."""
    live.swap_in(live.staging(tag))
    crash_point("restore-switch")
    staged = _staged_manifest(cfg, tag)
    if staged.exists():
        # A WAL left by the old manifest would be replayed into the new file: drop it first.
        _remove(cfg.manifest.with_name(cfg.manifest.name + ".wal"))
        os.replace(staged, cfg.manifest)
        fsync_path(cfg.manifest.parent)
    live.drop_leftovers()
    journal_path(cfg).unlink(missing_ok=True)
    fsync_path(cfg.manifest.parent)


def _finish_interrupted(cfg: Config, live: Store, notes: list[str]) -> str | None:
    """Deal with a restore that was killed: finish it if it had committed, else clear it away.
    Returns the id of a snapshot whose restore this finished."""
    journal = pending_restore(cfg)
    if journal is None:
        return None
    tag, sid = journal["tag"], journal["snapshot"]
    if journal["phase"] == BUILDING:
        _clear_leftovers(live, notes)  # the staging copy, however far its build got
        _remove(_staged_manifest(cfg, tag))
        shutil.rmtree(_import_folder(cfg, tag), ignore_errors=True)
        journal_path(cfg).unlink()
        notes.append(f"an interrupted restore of snapshot {sid} had not switched over; its "
                     "partial copy was deleted")
        return None
    _switch(cfg, live, tag)
    notes.append(f"finished the switch to snapshot {sid} that an interrupted restore had begun")
    return str(sid)


# -- a Qdrant server's shard snapshot -----------------------------------------------------------

_PAYLOAD_KEYS = {"kb", "path", "content_hash", "occurrence", "section", "text"}


def _import_folder(cfg: Config, tag: str) -> Path:
    """Where the tables made from a Qdrant snapshot's points wait for the staging manifest."""
    return cfg.manifest.with_name(f"{cfg.manifest.name}.restore-{tag}.import")


def restore_from_qdrant_snapshot(cfg: Config, snapshot_file: Path, *, catch_up: bool = True,
                                 batch_size: int = BATCH,
                                 progress: Progress = SILENT) -> RestoreReport:
    """Bring a Qdrant server collection's shard snapshot (``.../shards/0/snapshot``) into the
    KB's embedded Edge store, as a restore: unpacked into a staging shard beside the live one,
    its vectors checked against the config's spaces, the manifest rebuilt from the points'
    payloads (which a kbguard KB writes: path, content hash, text), every point read back,
    then switched in atomically. The catch-up rebuild then re-reads the corpus's documents.

    Only the members of a shard's own layout are unpacked (the others are left out, with a
    note), and a sample of the points is re-embedded with each space's chain before anything
    is switched: vectors of another model are refused (``SnapshotWrongModel``)."""
    if not store_for(cfg).unpacks_shard_snapshots:
        raise SnapshotError(
            f"--from-qdrant-snapshot brings a snapshot into an embedded Qdrant Edge store, and "
            f"this KB's store is {cfg.store_backend}. Restore it on the server instead, or set "
            "store.backend = \"edge\".")
    if not snapshot_file.is_file():
        raise SnapshotError(f"There is no snapshot file {snapshot_file}. Download the shard "
                            "snapshot from the server first (GET /collections/NAME/shards/0/"
                            "snapshot).")
    started = time.perf_counter()
    notes: list[str] = []
    stages: dict[str, float] = {}
    sid = f"qdrant:{snapshot_file.name}"
    with preflight(cfg, RESTORE) as kb:
        live = kb.store
        _finish_interrupted(cfg, live, notes)
        _clear_leftovers(live, notes)
        tag = secrets.token_hex(4)
        staged = _staged_manifest(cfg, tag)
        stage = live.staging(tag)
        folder = _import_folder(cfg, tag)
        _write_journal(cfg, {"snapshot": sid, "tag": tag, "phase": BUILDING,
                             "started_at": now().isoformat(timespec="seconds")})
        try:
            t = time.perf_counter()
            folder.mkdir()
            left_out = stage.unpack_shard_snapshot(snapshot_file, folder / "shard.tar")
            if left_out:
                notes.append(
                    f"{len(left_out):,} member(s) of {snapshot_file.name} outside a shard's "
                    f"layout were left out ({', '.join(map(repr, left_out[:3]))}"
                    f"{', ...' if len(left_out) > 3 else ''}): only segments/, wal/ and "
                    "the shard's clock, state and config files are unpacked")
            stages["unpack"] = time.perf_counter() - t
            t = time.perf_counter()
            paid = spent(cfg.spaces)   # the model check's embedding is billed
            body = _tables_from_points(cfg, stage, folder, snapshot_file.name, batch_size,
                                       progress)
            check_cost = spent_since(paid)
            stages["tables from the points"] = time.perf_counter() - t
            t = time.perf_counter()

            def fill() -> int:
                _verify_copy(stage, folder, body, batch_size, progress)
                return int(body["counts"]["points"])

            points = _build(cfg, stage, staged, sid, folder, body, batch_size, progress,
                            fill=fill, keep=True, usage=check_cost)
            stages["manifest and read-back"] = time.perf_counter() - t
            stage.close()
        except BaseException:
            _discard_staging(cfg, stage, staged)
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        _commit_and_switch(cfg, live, sid, tag, stages)
    notes.append("documents were rebuilt from the points' payloads; the catch-up rebuild "
                 "reads the corpus again to fill in their files' details")
    seconds = time.perf_counter() - started
    report = RestoreReport(
        kb=cfg.kb, snapshot=sid, backend=cfg.store_backend, points=points,
        seconds=round(seconds, 3), points_per_s=round(points / seconds, 1) if seconds else 0.0,
        stages={k: round(v, 3) for k, v in stages.items()}, notes=notes,
        method="qdrant snapshot")
    if catch_up:
        try:
            report.catch_up = rebuild(cfg, progress=progress).to_dict()
        except KbguardError as exc:
            raise type(exc)(
                f"The Qdrant snapshot {snapshot_file.name} was restored, but the catch-up "
                f"rebuild failed: {exc} Run `kbguard rebuild` once this is fixed.") from exc
    return report


MODEL_SAMPLE = 16   # points per space whose texts an import re-embeds to check the model


def _check_model(cfg: Config, pages: list[list[Any]], name: str) -> None:
    """Re-embed a sample of the points' texts with each space's chain and compare them with
    the points' vectors, as `verify --sample` does: a collection built with another model,
    under the same space names and dimensions, is refused before anything is switched."""
    points = [p for page in pages for p in page]
    rng = random.Random(0)
    sample = []
    for space in cfg.spaces:
        have = [p for p in points if p.vectors.get(space.name) is not None]
        for p in rng.sample(have, min(MODEL_SAMPLE, len(have))):
            sample.append(ReembedPoint(p.id, p.payload["path"], p.payload["content_hash"],
                                       space, str(p.payload["text"]),
                                       np.asarray(p.vectors[space.name], dtype=np.float32)))
    try:
        for space, items, cosines in reembed_cosines(sample):
            worst = float(cosines.min())
            if worst < DRIFT_MIN_COSINE:
                raise SnapshotWrongModel(
                    f"The {space.name!r} vectors of the Qdrant snapshot {name} are not what "
                    f"{space.model} makes of their texts: re-embedding {len(items)} of them "
                    f"gives cosine as low as {worst:.4f}, at least {DRIFT_MIN_COSINE} is "
                    "required, so the collection was built with another model. Restore it with "
                    "a config whose space has that model, or rebuild this KB from its corpus "
                    "(`kbguard rebuild --full`). The KB was not touched.",
                    space=space.name, cosine=worst)
    except EmbedError as exc:
        then = ("Run the restore again when the provider answers" if
                isinstance(exc, ProviderUnavailable) else
                "Restore it with a config of the collection's own model")
        raise SnapshotError(
            f"The vectors of the Qdrant snapshot {name} could not be checked against the "
            f"config's models ({exc}). {then}. The KB was not touched.") from exc


def _tables_from_points(cfg: Config, stage: Store, folder: Path, name: str,
                        batch_size: int, progress: Progress) -> dict[str, Any]:
    """Write the points of an unpacked shard and the manifest tables their payloads give
    into ``folder``, as a kbguard snapshot holds them; returns a snapshot body for them."""
    info = stage.describe()
    have = {v.name: (v.dim, v.distance) for v in info.vectors}
    want = {s.name: (s.dim, "cosine") for s in cfg.spaces}
    if have != want:
        raise SnapshotError(
            f"The Qdrant snapshot {name} holds the vectors {_fmt_vectors(have)}, but the config's "
            f"spaces are {_fmt_vectors(want)}. Restore it with a config whose [[spaces]] match "
            "the collection's vectors (names and dimensions). The KB was not touched.")
    specs = sorted(info.vectors, key=lambda v: v.name)
    folder.mkdir(exist_ok=True)
    progress.stage("read the snapshot's points", info.points)
    pages = list(stage.scroll(batch_size=batch_size))
    for page in pages:
        for p in page:
            payload = p.payload
            if set(payload) != _PAYLOAD_KEYS or payload.get("kb") != cfg.kb:
                why = (f"it belongs to KB {payload.get('kb')!r}" if set(payload) == _PAYLOAD_KEYS
                       else f"its payload has the keys {sorted(payload)}")
                raise SnapshotError(
                    f"Point {p.id} of the Qdrant snapshot {name} was not written by kbguard for "
                    f"KB {cfg.kb!r} ({why}), so the manifest cannot be rebuilt from the "
                    "points. Restore only snapshots of a collection kbguard built for this KB; "
                    "for any other, run `kbguard rebuild --full`. The KB was not touched.")
        progress.advance(len(page))
    _check_model(cfg, pages, name)
    points = write_points(folder / POINTS_FILE, pages, specs)  # the file a snapshot holds
    _write_tables(cfg, pages, folder)
    counts = {t: pq.ParquetFile(folder / table_file(t)).metadata.num_rows for t in TABLES}
    return {"config": {"vectors": [{"name": v.name, "dim": v.dim, "distance": v.distance}
                                   for v in specs]},
            "counts": {**counts, "points": points}, "corpus": {}}


def _write_tables(cfg: Config, pages: list[list[Any]], folder: Path) -> None:
    """documents, chunks and embeddings as the points' payloads and vectors give them."""
    from kbguard.manifest import vector_checksum

    stamp = now()
    by_path: dict[str, list[Any]] = {}
    for page in pages:
        for p in page:
            by_path.setdefault(p.payload["path"], []).append(p)
    chunks: dict[str, list[Any]] = {k: [] for k in ("point_id", "path", "seq", "content_hash",
                                                     "occurrence", "section", "text", "tokens")}
    cache: dict[tuple[str, str], bytes] = {}
    space_of = {s.name: s.space_id for s in cfg.spaces}
    for path, points in sorted(by_path.items()):
        # the order within a document is not in the payload: the catch-up re-chunks it
        points.sort(key=lambda p: (p.payload["section"], p.payload["occurrence"], p.id))
        for seq, p in enumerate(points):
            pl = p.payload
            for key, value in (("point_id", p.id), ("path", path), ("seq", seq),
                               ("content_hash", pl["content_hash"]),
                               ("occurrence", int(pl["occurrence"])),
                               ("section", str(pl["section"])), ("text", str(pl["text"])),
                               ("tokens", 0)):
                chunks[key].append(value)
            for vname, vec in p.vectors.items():
                cache[(space_of[vname], pl["content_hash"])] = np.asarray(
                    vec, dtype="<f4").tobytes()
    docs = sorted(by_path)
    pq.write_table(pa.table({
        "path": pa.array(docs, pa.string()), "file_hash": pa.nulls(len(docs), pa.string()),
        "size": pa.nulls(len(docs), pa.int64()), "mtime_ns": pa.nulls(len(docs), pa.int64()),
        "indexed_hash": pa.nulls(len(docs), pa.string()),
        "status": pa.array(["ok"] * len(docs), pa.string()),
        "error": pa.nulls(len(docs), pa.string()),
        "chunks": pa.array([len(by_path[d]) for d in docs], pa.int32()),
        "updated_at": pa.array([stamp] * len(docs), pa.timestamp("us", tz="UTC"))}),
        folder / "documents.parquet")
    pq.write_table(pa.table({
        "point_id": pa.array(chunks["point_id"], pa.string()),
        "path": pa.array(chunks["path"], pa.string()),
        "seq": pa.array(chunks["seq"], pa.int32()),
        "content_hash": pa.array(chunks["content_hash"], pa.string()),
        "occurrence": pa.array(chunks["occurrence"], pa.int32()),
        "section": pa.array(chunks["section"], pa.string()),
        "text": pa.array(chunks["text"], pa.string()),
        "tokens": pa.array(chunks["tokens"], pa.int32())}), folder / "chunks.parquet")
    keys = sorted(cache)
    pq.write_table(pa.table({
        "space_id": pa.array([k[0] for k in keys], pa.string()),
        "content_hash": pa.array([k[1] for k in keys], pa.string()),
        "vector": pa.array([cache[k] for k in keys], pa.binary()),
        "checksum": pa.array([vector_checksum(cache[k]) for k in keys], pa.string()),
        "created_at": pa.array([stamp] * len(keys), pa.timestamp("us", tz="UTC"))}),
        folder / "embeddings.parquet")


def _fmt_vectors(vectors: dict[str, tuple[int, str]]) -> str:
    return ", ".join(f"{n or '(unnamed)'} ({dim}-d {dist})"
                     for n, (dim, dist) in sorted(vectors.items())) or "none"


# -- building and checking the copy -----------------------------------------------------------

def _build(cfg: Config, stage: Store, staged: Path, sid: str, folder: Path,
           body: dict[str, Any], batch_size: int, progress: Progress,
           fill: Any = None, keep: bool = False,
           usage: dict[tuple[Any, str], Usage] | None = None) -> int:
    """Build the staging manifest from the snapshot's tables and the staging store from its
    points, or with ``fill()`` (which returns the number of points) instead; ``keep``: the
    staging store holds the points already, and ``fill()`` only checks them. ``usage``: what
    the restore's embedding cost, by (space, provider), for the ledger."""
    specs = [VectorSpec(v["name"], int(v["dim"]), v["distance"])
             for v in body["config"]["vectors"]]
    if not keep:
        stage.drop()
    if fill is None:
        stage.create(specs)
    _remove(staged)
    with Manifest.open(staged, kb=cfg.kb) as manifest:
        # the snapshot holds what the KB contains, the live manifest what happened to it
        lost = manifest.tables.import_history(cfg.manifest)
        if lost and cfg.manifest.exists():
            progress.note(f"the KB's run, check, spend and drill history is not kept: {lost}")
        run_id = manifest.runs.start("restore")
        for (space, provider), spend in (usage or {}).items():
            manifest.ledger.record(run_id, "restore", space, provider, spend)
        # DuckDB loads the manifest tables on a connection of its own in a thread while this
        # one writes the points: DuckDB runs without the GIL, the point writes need it.
        names = sorted(v["name"] for v in body["config"]["vectors"])
        loader = _TableLoader(manifest, folder, {name: VECTOR_PREFIX + name for name in names})
        loader.start()
        try:
            if fill is not None:
                n = fill()
            else:
                progress.stage("restore points", int(body["counts"]["points"]))
                n = 0
                for batch in read_points(folder, body, batch_size):
                    points = batch.points()
                    # no flush per batch: a killed build is thrown away, never resumed
                    stage.upsert(points)
                    n += len(points)
                    crash_point("restore-build")
                    progress.advance(len(points))
                stage.flush()
        finally:
            loader.join()  # never close the manifest under a thread still writing into it
        if isinstance(loader.error, DiskFullError):
            raise loader.error
        if loader.error is not None:
            # DuckDB's own words: the advice for a damaged live manifest does not fit a copy
            # that is thrown away
            reason = loader.error.__cause__ or loader.error
            raise ManifestError(f"Loading the snapshot's tables into the new manifest failed: "
                                f"{reason}. The KB was not switched.") from loader.error
        counts = body["counts"]
        got = manifest.tables.row_counts(TABLES)
        got["points"] = n
        wrong = {k: (v, counts.get(k)) for k, v in got.items() if v != counts.get(k)}
        if wrong:
            raise SnapshotError(
                f"Snapshot {sid} restored the wrong number of rows ({wrong}: restored, expected)."
                " The KB was not switched; use another snapshot.")
        manifest.runs.finish(run_id, "ok", {"snapshot": sid, "points": n, **got},
                             body.get("corpus", {}).get("fingerprint"))
        manifest.checkpoint()  # everything in the file itself, nothing in a WAL
    return int(n)


class _TableLoader(threading.Thread):
    """Loads documents, chunks and the embedding cache from the snapshot into the staging
    manifest, in one transaction on a connection of its own, then the store state of the
    snapshot's points (the restoring thread does not use the manifest meanwhile)."""

    def __init__(self, manifest: Manifest, folder: Path, vector_columns: dict[str, str]):
        super().__init__(name="kbguard-restore-tables", daemon=True)
        self.manifest, self.folder, self.columns = manifest, folder, vector_columns
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.manifest.tables.import_files({t: self.folder / table_file(t) for t in TABLES})
            self.manifest.points.record_restored(self.folder / POINTS_FILE, self.columns)
        except Exception as exc:  # noqa: BLE001 - handed to the restoring thread, which raises it
            self.error = exc


def _verify_copy(stage: Store, folder: Path, body: dict[str, Any], batch_size: int,
                 progress: Progress) -> None:
    """Read the staging store back and compare every point with the snapshot: ids, vectors
    (bit for bit, as the store keeps them) and payloads, and the total count."""
    stage.close()  # reopen from disk: what is checked is what a later open will see
    stage.will_read_all()
    distance = {v["name"]: v["distance"] for v in body["config"]["vectors"]}
    dims = {v["name"]: int(v["dim"]) for v in body["config"]["vectors"]}
    progress.stage("verify copy", int(body["counts"]["points"]))
    n = 0
    for batch, wanted in _read_ahead(read_points(folder, body, batch_size)):
        got = stage.retrieve_arrays(batch.ids, dims)
        row_of = {pid: i for i, pid in enumerate(got.ids)}
        missing = [pid for pid in batch.ids if pid not in row_of]
        if missing:
            _mismatch(stage, f"point {missing[0]} is missing")
        order = np.fromiter((row_of[pid] for pid in batch.ids), dtype=np.int64,
                            count=len(batch.ids))
        for name, matrix in batch.vectors.items():
            if got.odd[name]:
                row = next(iter(got.odd[name]))
                _mismatch(stage, f"vector {name!r} of point {got.ids[row]} has the wrong length")
            want = stage.kept_vectors(distance[name], matrix)
            present = batch.present[name]
            stored = got.present[name][order]
            if (stored != present).any():
                i = int(np.flatnonzero(stored != present)[0])
                _mismatch(stage, f"point {batch.ids[i]} {'has' if stored[i] else 'lacks'} "
                                 f"vector {name!r}")
            rows = got.vectors[name][order]
            bad = np.flatnonzero((rows != want).any(axis=1) & present)
            if bad.size:
                _mismatch(stage, f"vector {name!r} of point {batch.ids[bad[0]]} differs")
        stored_payloads = [got.payloads[i] for i in order.tolist()]
        if stored_payloads != wanted:
            for pid, have, want in zip(batch.ids, stored_payloads, wanted, strict=True):
                if have != want:
                    _mismatch(stage, f"the payload of point {pid} differs")
        n += len(batch.ids)
        progress.advance(len(batch.ids))
    if stage.count() != n:
        _mismatch(stage, f"it holds {stage.count()} points, the snapshot {n}")


def _read_ahead(batches: Iterator[PointBatch]) -> Iterator[tuple[PointBatch, list[Any]]]:
    """The snapshot's batches with their payloads decoded, read one batch ahead in a thread:
    Parquet decoding runs without the GIL while the engine is read. The payloads of a batch
    are decoded in one call, as one JSON array (each is one JSON value: checked by count)."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():  # the consumer may have stopped reading: never block
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                wanted = json.loads("[" + ",".join(batch.payloads) + "]")
                if len(wanted) != len(batch.ids):
                    raise ValueError("a payload is not one JSON value")
                if not put((batch, wanted)):
                    return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, which raises it
            put(exc)

    reader = threading.Thread(target=produce, name="kbguard-restore-read", daemon=True)
    reader.start()
    try:
        while (item := ahead.get()) is not None:
            if isinstance(item, BaseException):
                if isinstance(item, ValueError):
                    raise SnapshotDamaged(f"{POINTS_FILE} holds a payload that is not JSON "
                                          f"({item})", file=POINTS_FILE) from item
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


def _mismatch(stage: Store, what: str) -> None:
    raise StoreError(
        f"The restored copy ({stage!r}) does not match the snapshot: {what}. The KB was not "
        "switched and is unchanged. Check the store's disk and run the restore again.")
