"""The Qdrant Edge adapter: one shard folder, Qdrant's engine running in this process.

The bindings raise bare ``Exception`` (and pyo3's ``PanicException``, a ``BaseException``) for
everything, so errors are told apart by the engine's message. One process may hold a shard at a
time: the WAL folder is locked, even against a second open in the same process.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import json
import os
import shutil
import struct
import tarfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import starmap
from pathlib import Path
from typing import Any

import numpy as np

from kbguard.core.disk import disk_full, free_bytes, is_disk_full
from kbguard.core.durable import fsync_path
from kbguard.errors import SnapshotError, StoreDamaged, StoreError, StoreUnavailable
from kbguard.store._common import (
    canonical_id,
    canonical_ids,
    check_specs,
    config_mismatch,
    engine_message,
    id_from_store,
    same_config,
    vector_buffer,
    vector_in,
    vector_out,
)
from kbguard.store.base import (
    CollectionInfo,
    Hit,
    NativeFiles,
    Point,
    PointArrays,
    Store,
    VectorSpec,
)

_CONFIG_FILE = "edge_config.json"
ENGINE = "qdrant-edge-py"      # the package whose version decides whether a shard's files load

# The engine writes through memory maps into sparse files, so on a full disk a write does not
# fail: the page fault kills the process with SIGBUS, with nothing to catch and no message.
# Room is therefore checked before the shard is opened and before every write. Measured on
# ext4 and tmpfs: a shard grows by 1.7-2.1x the raw bytes written (ids, float32 vectors, JSON
# payloads), each write lands in the WAL and in a segment, and opening or creating a shard may
# allocate a whole WAL segment (32 MiB) and 1 MiB per named vector.
_ENGINE_HEADROOM = 64 << 20
_COPIES = 2
_BYTES_PER_POINT = 512
_SAFETY = 1.5
_PAYLOAD_SAMPLE = 16
_TO_EDGE = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
_FROM_EDGE = {"Cosine": "cosine", "Dot": "dot", "Euclid": "euclid", "Manhattan": "manhattan"}


def _held_elsewhere(exc: BaseException) -> bool:
    # The bindings raise a bare Exception whose text alone says another opener holds the
    # shard's WAL (`Can't init WAL: Kind(WouldBlock)`): this adapter boundary reads it
    return "WouldBlock" in str(exc)


def engine_version() -> str | None:
    """The installed Qdrant Edge bindings' version: shard files load only into the same one."""
    try:
        return importlib.metadata.version(ENGINE)
    except importlib.metadata.PackageNotFoundError:
        return None


class _ShardLocked(StoreUnavailable):
    """Another opener holds the shard's WAL lock."""


def _reraise_interrupts(exc: BaseException) -> None:
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc


class EdgeStore(Store):
    """A KB collection kept in a Qdrant Edge shard folder."""

    backend = "edge"
    unpacks_shard_snapshots = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._shard: Any = None

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------------------

    def _is_shard(self) -> bool:
        # A failed load of an empty folder leaves an empty `segments/` behind, so only a
        # config file, a WAL or at least one segment counts as a shard.
        if not self.path.is_dir():
            return False
        if (self.path / _CONFIG_FILE).exists() or (self.path / "wal").is_dir():
            return True
        segments = self.path / "segments"
        return segments.is_dir() and any(segments.iterdir())

    def _locked_error(self) -> StoreUnavailable:
        return _ShardLocked(
            f"The Edge store at {self.path} is open in another process; wait for it to finish."
        )

    def _require_room(self, points: Sequence[Point] = (), doing: str = "open") -> None:
        """Refuse a write (or an open) that could fill the disk under the engine's memory maps."""
        try:
            free = free_bytes(self.path)
        except OSError:
            return  # cannot tell; the engine reports what it can
        if free >= _space_needed(len(points), _raw_bytes(points, _PAYLOAD_SAMPLE)):
            return
        needed = _space_needed(len(points), _raw_bytes(points, None))
        if free < needed:
            raise disk_full(
                self.path, f"{doing} the Edge store at {self.path}", needed=needed,
                resume="run the same command again (the engine writes through memory maps, "
                       "where a full disk kills the process, so kbguard does not start a write "
                       "that may not fit)")

    def space_needed(self, points: int, raw_bytes: int) -> tuple[Path, int]:
        """About how much room writing ``points`` points of ``raw_bytes`` takes, and where."""
        return self.path, _space_needed(points, raw_bytes)

    def _load(self) -> Any:
        from qdrant_edge import EdgeShard

        self._require_room()
        try:
            return EdgeShard.load(str(self.path))
        except BaseException as exc:
            _reraise_interrupts(exc)
            if _held_elsewhere(exc):
                raise self._locked_error() from exc
            raise StoreDamaged(
                f"The Edge store at {self.path} cannot be opened: {engine_message(exc)}. "
                "Run `kbguard restore --latest` or `kbguard rebuild --full`."
            ) from exc

    def _open(self) -> Any:
        if self._shard is None:
            if not self._is_shard():
                raise StoreUnavailable(
                    f"There is no Edge store at {self.path}. "
                    "Run `kbguard rebuild`: it writes the store from the embedding cache."
                )
            self._shard = self._load()
        return self._shard

    @contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except BaseException as exc:
            _reraise_interrupts(exc)
            raise StoreError(
                f"The Edge store at {self.path} failed while {doing}: {engine_message(exc)}. "
                "If the store is damaged, `kbguard verify` says what is wrong."
            ) from exc

    def _read_config(self) -> tuple[VectorSpec, ...]:
        # The bindings have no getter for a shard's config. Loading checks this file against the
        # segments (and writes it if it is missing), so once the shard is open it is accurate.
        try:
            raw = json.loads((self.path / _CONFIG_FILE).read_text())
            vectors = raw.get("vectors") or {}
            specs = tuple(
                VectorSpec(name, int(p["size"]), _FROM_EDGE.get(p["distance"], "unknown"))
                for name, p in vectors.items()
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreDamaged(
                f"The Edge store at {self.path} has an unreadable {_CONFIG_FILE} ({exc}). "
                "Run `kbguard restore --latest` or `kbguard rebuild --full`."
            ) from exc
        return tuple(sorted(specs, key=lambda s: s.name))

    # -- the Store interface ---------------------------------------------------------------

    def describe(self) -> CollectionInfo:
        """Whether the shard exists, its named vectors and its exact point count."""
        if self._shard is None and not self._is_shard():
            return CollectionInfo(exists=False)
        self._open()
        return CollectionInfo(exists=True, vectors=self._read_config(), points=self.count())

    def create(self, vectors: Sequence[VectorSpec]) -> None:
        """Create the shard folder; a no-op if it exists with exactly these vectors."""
        want = check_specs(vectors)
        info = self.describe()
        if info.exists:
            if not same_config(info.vectors, want):
                raise config_mismatch(self.backend, str(self.path), info.vectors, want)
            return
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams

        params = {
            s.name: EdgeVectorParams(size=s.dim, distance=getattr(Distance, _TO_EDGE[s.distance]))
            for s in want.values()
        }
        self._require_room(doing="create")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._shard = EdgeShard.create(str(self.path), EdgeConfig(vectors=params))
        except BaseException as exc:
            _reraise_interrupts(exc)
            if _held_elsewhere(exc):
                raise self._locked_error() from exc
            raise StoreError(
                f"Could not create an Edge store at {self.path}: {engine_message(exc)}. "
                "Check that the folder is writable and holds no other data."
            ) from exc

    def drop(self) -> None:
        """Close the shard and delete its folder; refuses a folder that is not a shard."""
        self.close()
        if not self.path.exists():
            return
        if not self._is_shard():
            if self.path.is_dir() and not any(self.path.iterdir()):
                self.path.rmdir()
                return
            raise StoreError(
                f"{self.path} does not look like an Edge store, so kbguard will not delete it. "
                "Check the store path in the KB config."
            )
        # Deleting a shard another process is writing would corrupt its work: take the lock
        # first. A shard too damaged to load is exactly what drop() exists to clear away, but
        # the engine reads the segments before it locks the WAL, so a failed load proves
        # nothing about other openers: take the WAL's lock directly for that case.
        try:
            shard = self._load()
        except StoreDamaged:
            with self._wal_lock():
                self._delete_folder()
            return
        with contextlib.suppress(Exception):   # the folder is deleted next either way
            shard.close()
        self._delete_folder()

    def _delete_folder(self) -> None:
        try:
            shutil.rmtree(self.path)
        except OSError as exc:
            raise StoreError(f"Could not delete the Edge store at {self.path}: {exc}.") from exc

    @contextmanager
    def _wal_lock(self) -> Iterator[None]:
        """Hold the lock an opener of the shard holds: the engine flocks the ``wal`` folder."""
        try:
            fd = os.open(self.path / "wal", os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            yield  # no WAL folder, so no opener can hold it
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked_error() from None
            yield
        finally:
            os.close(fd)

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace whole points (every named vector and the payload)."""
        if not points:
            return
        from qdrant_edge import Point as EdgePoint
        from qdrant_edge import UpdateOperation

        batch = [
            EdgePoint(
                canonical_id(p.id),
                # a buffer where the stubs say list: the bindings take either (see vector_buffer)
                {name: vector_buffer(v) for name, v in p.vectors.items()},  # type: ignore[misc]
                p.payload,
            )
            for p in points
        ]
        shard = self._open()
        self._require_room(points, f"write {len(points)} points into")
        with self._translate(f"upserting {len(batch)} points"):
            shard.update(UpdateOperation.upsert_points(batch))

    def delete(self, ids: Iterable[str]) -> None:
        """Delete points by id; ids that are not stored are ignored."""
        wanted = [canonical_id(i) for i in ids]
        if not wanted:
            return
        from qdrant_edge import UpdateOperation

        shard = self._open()
        self._require_room(doing=f"delete {len(wanted)} points from")
        with self._translate(f"deleting {len(wanted)} points"):
            shard.update(UpdateOperation.delete_points(list[int | uuid.UUID | str](wanted)))

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = True) -> list[Point]:
        """The points among ``ids`` that exist, in no particular order."""
        wanted = [canonical_id(i) for i in ids]
        if not wanted:
            return []
        shard = self._open()
        with self._translate(f"reading {len(wanted)} points"):
            records = shard.retrieve(wanted, True, with_vectors)
            return [_to_point(r, with_vectors) for r in records]

    def retrieve_arrays(self, ids: Sequence[str], dims: Mapping[str, int]) -> PointArrays:
        """The points among ``ids`` that exist, as columns (see ``PointArrays``)."""
        wanted = canonical_ids(ids)
        if not wanted:
            return _arrays_from_records([], dims)
        shard = self._open()
        with self._translate(f"reading {len(wanted)} points"):
            records = shard.retrieve(wanted, True, bool(dims))
            return _arrays_from_records(records, dims)

    def will_read_all(self) -> None:
        """Read the payload storage files once, front to back, before the engine reads them.

        The engine reads payloads through memory maps a page at a time. Measured on a
        100k-point shard: its first retrieve of every point took 1.3 s without this and 0.54 s
        after it, even with the files already in the page cache, and one sequential read of the
        files (~50 MB there) costs a few hundredths of a second. Skipped when the files would
        not fit in free memory; only reads, never writes.
        """
        files = [f for f in self.path.glob("segments/*/payload_storage/*") if f.is_file()]
        try:
            total = sum(f.stat().st_size for f in files)
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return
        if total > free // 2:
            return
        buf = bytearray(1 << 20)
        for f in files:
            try:
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass
            except OSError:
                pass  # a hint only: the engine reports any real problem when it reads

    def scroll(self, *, batch_size: int = 1024, with_vectors: bool = True) -> Iterator[list[Point]]:
        """Every point in id order, in pages of at most ``batch_size``."""
        if batch_size <= 0:
            raise StoreError(f"batch_size must be positive, not {batch_size}.")
        from qdrant_edge import ScrollRequest

        shard = self._open()
        offset = None
        while True:
            with self._translate("scrolling points"):
                records, offset = shard.scroll(
                    ScrollRequest(
                        offset=offset, limit=batch_size, with_payload=True, with_vector=with_vectors
                    )
                )
                page = [_to_point(r, with_vectors) for r in records]
            if page:
                yield page
            if offset is None:
                return

    def count(self) -> int:
        """The exact number of points."""
        from qdrant_edge import CountRequest

        shard = self._open()
        with self._translate("counting points"):
            return int(shard.count(CountRequest(exact=True)))

    def query(self, vector_name: str, vector: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` nearest points by the named vector, best first, with payloads.

        Scores are similarities for cosine/dot and distances (smaller is nearer) for euclid.
        """
        from qdrant_edge import Query, QueryRequest

        shard = self._open()
        with self._translate(f"querying vector {vector_name!r}"):
            scored = shard.query(
                QueryRequest(
                    limit=k,
                    query=Query.Nearest(vector_in(vector), using=vector_name),
                    with_payload=True,
                    with_vector=False,
                )
            )
            return [Hit(id_from_store(s.id), float(s.score), dict(s.payload or {})) for s in scored]

    def flush(self) -> None:
        """Write every acknowledged update into the segments on disk."""
        if self._shard is None:
            return
        with self._translate("flushing"):
            self._shard.flush()

    def close(self) -> None:
        """Flush and release the shard; safe to call twice. A later call reopens it."""
        shard, self._shard = self._shard, None
        if shard is None:
            return
        # Flushed segments let a copy of the closed folder load without replaying the WAL; if
        # the flush fails, the WAL still holds the writes, and closing matters more.
        with contextlib.suppress(Exception):
            shard.flush()
        with self._translate("closing"):
            shard.close()

    # -- the shard's own files ---------------------------------------------------------------

    def native_files(self) -> NativeFiles:
        """The shard folder: a copy of it loads into the engine version that wrote it."""
        return NativeFiles(self.path, ENGINE, engine_version())

    @contextmanager
    def closed_and_held(self) -> Iterator[Path]:
        """Flush and close the shard, then hold the lock its openers take, so the folder
        (yielded) stays exactly as it is while it is read: no other process can open the
        shard and write into it. The shard reopens on the next call that needs it."""
        self.close()
        with self._wal_lock():
            yield self.path

    def unpack_shard_snapshot(self, archive: Path, scratch: Path) -> list[str]:
        """Unpack the members of a shard's own layout into this store's folder; returns the
        names of the others, which are left out. The engine unpacks whatever an archive holds,
        so one with other members is first copied to ``scratch`` without them (deleted
        afterwards)."""
        from qdrant_edge import EdgeShard

        source = archive
        try:
            with tarfile.open(archive, "r:") as tar:
                members = tar.getmembers()
                left_out = [m.name for m in members if not _in_shard_layout(m)]
                if left_out:
                    with tarfile.open(scratch, "w") as kept:
                        for m in members:
                            if _in_shard_layout(m):
                                kept.addfile(m, tar.extractfile(m) if m.isfile() else None)
                    source = scratch
            EdgeShard.unpack_snapshot(str(source), str(self.path))
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.path.parent, f"unpack {archive.name} into {self.path}",
                                resume="run the restore again; the KB was not touched") from exc
            raise SnapshotError(f"{archive} cannot be read ({exc}). The KB was not "
                                "touched.") from exc
        except Exception as exc:
            raise SnapshotError(
                f"{archive} is not a Qdrant shard snapshot the engine can unpack ({exc}). "
                "Take the snapshot of one shard (GET /collections/NAME/shards/0/snapshot), not "
                "of the whole collection, and download it whole. The KB was not touched."
            ) from exc
        finally:
            scratch.unlink(missing_ok=True)
        return left_out

    # -- replacing the shard folder --------------------------------------------------------
    #
    # A replacement is built in a sibling folder, then two renames switch it in:
    # live -> live.replaced, staging -> live. A rename within one folder is atomic, and which of
    # the three folders exist says exactly how far an interrupted swap got, so calling swap_in
    # again finishes it.

    def staging(self, tag: str) -> EdgeStore:
        """A shard folder beside this one (``<store>.staging-<tag>``) to build a replacement in."""
        return EdgeStore(self.path.with_name(f"{self.path.name}{_STAGING}{tag}"))

    @property
    def _replaced(self) -> Path:
        return self.path.with_name(self.path.name + _REPLACED)

    def swap_in(self, staging: Store) -> None:
        """Rename the staging folder into place, keeping the old shard as ``<store>.replaced``."""
        if not isinstance(staging, EdgeStore) or staging.path.parent != self.path.parent:
            raise StoreError(f"{staging!r} is not a staging shard of {self!r}.")
        self.close()
        staging.close()
        try:
            if not staging.path.exists():
                if self._is_shard():
                    return  # swapped already
                raise StoreError(
                    f"Neither the staging shard {staging.path} nor the store {self.path} exists, "
                    "so there is nothing to switch to. Run the restore again."
                )
            if self.path.exists():
                if self._replaced.exists():
                    shutil.rmtree(self._replaced)  # an older swap's leftover
                os.rename(self.path, self._replaced)
            os.rename(staging.path, self.path)
            fsync_path(self.path.parent)
        except OSError as exc:
            raise StoreError(
                f"Could not switch the Edge store at {self.path} to {staging.path}: {exc}. "
                "Fix the cause and run the restore again; it finishes the switch."
            ) from exc

    def drop_leftovers(self) -> None:
        """Delete ``<store>.replaced`` and every ``<store>.staging-*`` folder."""
        parent = self.path.parent
        if not parent.is_dir():
            return
        for entry in parent.iterdir():
            if entry.name == self.path.name + _REPLACED or entry.name.startswith(
                    self.path.name + _STAGING):
                try:
                    shutil.rmtree(entry)
                except OSError as exc:
                    raise StoreError(f"Could not delete {entry}: {exc}. Delete it by hand.") from exc



_STAGING = ".staging-"
_REPLACED = ".replaced"

#: a shard's own files beside segments/ and wal/: a server's clocks, replica state and shard
#: config, and an Edge shard's config
_SHARD_FILES = frozenset({"newest_clocks.json", "oldest_clocks.json", "replica_state.json",
                          "shard_config.json", _CONFIG_FILE})


def _in_shard_layout(member: tarfile.TarInfo) -> bool:
    """Whether a snapshot member is part of a shard: under ``segments/`` (a segment's archive,
    or a segment's folder), a file of ``wal/``, or one of the shard's own files. Only plain
    files and folders with plain relative names: no link, no absolute path, no ``..``."""
    if not (member.isfile() or member.isdir()):
        return False
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return False
    top, depth = parts[0], len(parts)
    if top in ("segments", "wal") and depth == 1:
        return member.isdir()
    if top == "segments":
        return depth > 2 or member.isdir() or parts[1].endswith(".tar")
    if top == "wal":
        return depth == 2 and member.isfile()
    return depth == 1 and member.isfile() and top in _SHARD_FILES




def _space_needed(points: int, raw_bytes: int) -> int:
    return _ENGINE_HEADROOM + int(_SAFETY * (_COPIES * raw_bytes + _BYTES_PER_POINT * points))


def _raw_bytes(points: Sequence[Point], sample: int | None) -> int:
    """Ids, vectors and JSON payloads of ``points``; payloads measured on at most ``sample``
    points spread over the batch (None: all of them) and scaled to the batch."""
    if not points:
        return 0
    vectors = sum(4 * len(v) for p in points for v in p.vectors.values())
    step = max(1, len(points) // sample) if sample else 1
    measured = points[::step]
    payloads = sum(len(json.dumps(p.payload, default=str)) for p in measured)
    return 36 * len(points) + vectors + payloads * len(points) // len(measured)


def _to_point(record: Any, with_vectors: bool) -> Point:
    vectors: dict[str, np.ndarray] = {}
    if with_vectors and record.vector is not None:
        raw = record.vector
        # A collection made outside kbguard may have one unnamed vector, which Edge names "".
        items = raw.items() if isinstance(raw, dict) else [("", raw)]
        vectors = {name: vector_out(v) for name, v in items}
    return Point(id=id_from_store(record.id), vectors=vectors, payload=dict(record.payload or {}))


def _arrays_from_records(records: Sequence[Any], dims: Mapping[str, int]) -> PointArrays:
    # The bindings hand each vector over as a list of Python floats. Packing that list into
    # float32 bytes with struct (exact: the values are float32s) and making one matrix of a
    # page's bytes costs about two thirds of what numpy's conversion of the lists costs.
    n = len(records)
    ids = [str(rid) if type(rid) is uuid.UUID else id_from_store(rid)
           for rid in [r.id for r in records]]  # a UUID's str() is the canonical form already
    payloads = [r.payload or {} for r in records]
    if len(dims) == 1:
        # The usual case, one named vector on every point: the whole page in one C-level pass.
        # Anything unusual (a missing or unnamed vector, another length) takes the loop below.
        [(name, dim)] = dims.items()
        try:
            page = b"".join(starmap(struct.Struct(f"<{dim}f").pack,
                                    (r.vector[name] for r in records)))
        except (struct.error, OverflowError, TypeError, KeyError):
            pass
        else:
            return PointArrays(
                ids=ids, payloads=payloads,
                vectors={name: np.frombuffer(page, dtype="<f4").reshape(n, dim)},
                present={name: np.ones(n, dtype=bool)}, odd={name: {}})
    packers = {name: struct.Struct(f"<{dim}f") for name, dim in dims.items()}
    packed: dict[str, list[bytes]] = {name: [] for name in dims}
    present: dict[str, list[bool]] = {name: [] for name in dims}
    odd: dict[str, dict[int, np.ndarray]] = {name: {} for name in dims}
    for row, r in enumerate(records):
        if not dims:
            break
        raw = r.vector
        # A collection made outside kbguard may have one unnamed vector, which Edge names "".
        named = raw if isinstance(raw, dict) else {"": raw} if raw is not None else {}
        for name, packer in packers.items():
            values = named.get(name)
            blob: bytes | None = None
            if values is not None and len(values) == dims[name]:
                with contextlib.suppress(struct.error, OverflowError, TypeError):
                    blob = packer.pack(*values)   # else numpy's conversion below decides
            if blob is None and values is not None:
                vec = vector_out(values)
                if vec.shape == (dims[name],):
                    blob = vec.astype("<f4").tobytes()
                else:
                    odd[name][row] = vec
            packed[name].append(bytes(packer.size) if blob is None else blob)
            present[name].append(blob is not None)
    vectors = {
        name: np.frombuffer(b"".join(packed[name]), dtype="<f4").reshape(n, dim).astype(
            np.float32, copy=False)
        for name, dim in dims.items()
    }
    flags = {name: np.array(present[name], dtype=bool) for name in dims}
    return PointArrays(ids=ids, payloads=payloads, vectors=vectors, present=flags, odd=odd)
