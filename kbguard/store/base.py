"""The store interface every vector-store adapter implements.

A KB lives in one collection (Qdrant Edge: one shard folder). Each embedding space of the KB is a
named dense vector on the same point. Point ids are UUID strings. Adapters translate their
library's exceptions into ``StoreError`` / ``StoreUnavailable`` at this boundary, so callers never
see a Qdrant exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kbguard.errors import StoreError

DISTANCES = ("cosine", "dot", "euclid")


@dataclass(frozen=True)
class VectorSpec:
    """One named dense vector of a collection."""

    name: str
    dim: int
    distance: str = "cosine"


@dataclass
class Point:
    id: str
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class PointArrays:
    """Points as columns, for readers that check many points at once.

    Row ``i`` of every field belongs to ``ids[i]``. Each requested vector name has an
    ``(len(ids), dim)`` float32 matrix; a row of it holds the stored vector only where ``present``
    is true. A stored vector of another length is not in the matrix but in ``odd``; a point
    without the vector is in neither. The matrices may be read-only views: copy to change them.
    """

    ids: list[str]
    payloads: list[dict[str, Any]]
    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]
    odd: dict[str, dict[int, np.ndarray]]

    def vector(self, name: str, row: int) -> np.ndarray | None:
        """The stored vector ``name`` of row ``row`` as it is stored; None if it has none."""
        if self.present[name][row]:
            stored: np.ndarray = self.vectors[name][row]
            return stored
        return self.odd[name].get(row)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    exists: bool
    vectors: tuple[VectorSpec, ...] = ()
    points: int = 0


@dataclass(frozen=True)
class NativeFiles:
    """The folder where a store keeps its own files, and the engine that reads them. A copy of
    the folder, taken while the store is closed and held (``Store.closed_and_held``), loads
    into a store of the same engine at the same version, and into no other."""

    path: Path
    engine: str                 # the package that reads and writes the files
    engine_version: str | None  # None: that package is not installed here


class Store(ABC):
    """A vector store holding one KB's collection.

    Writes are idempotent: upserting the same point twice leaves one point, deleting a missing
    id is not an error. ``flush`` makes every acknowledged write durable; the pipeline flushes
    before it records a batch as written.
    """

    backend: str = ""
    #: whether ``unpack_shard_snapshot`` can fill this store from a Qdrant shard snapshot
    unpacks_shard_snapshots: bool = False

    @abstractmethod
    def describe(self) -> CollectionInfo: ...

    @abstractmethod
    def create(self, vectors: Sequence[VectorSpec]) -> None:
        """Create the collection; raise StoreError if it exists with a different configuration."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection and all its points; no error if it does not exist."""

    @abstractmethod
    def upsert(self, points: Sequence[Point]) -> None: ...

    @abstractmethod
    def delete(self, ids: Iterable[str]) -> None: ...

    @abstractmethod
    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = True) -> list[Point]:
        """The points among ``ids`` that exist, in no particular order."""

    def retrieve_arrays(self, ids: Sequence[str], dims: Mapping[str, int]) -> PointArrays:
        """The points among ``ids`` that exist, as columns, with the named vectors of ``dims``
        (name -> dimension) as matrices. This default converts ``retrieve``'s points; adapters
        that can build the columns more cheaply override it."""
        points = self.retrieve(ids, with_vectors=bool(dims))
        n = len(points)
        out = PointArrays(
            ids=[p.id for p in points], payloads=[p.payload for p in points],
            vectors={name: np.zeros((n, dim), dtype=np.float32) for name, dim in dims.items()},
            present={name: np.zeros(n, dtype=bool) for name in dims},
            odd={name: {} for name in dims})
        for row, p in enumerate(points):
            for name, dim in dims.items():
                vec = p.vectors.get(name)
                if vec is None:
                    continue
                if vec.shape == (dim,):
                    out.vectors[name][row] = vec
                    out.present[name][row] = True
                else:
                    out.odd[name][row] = vec
        return out

    def will_read_all(self) -> None:  # noqa: B027 - a hint, optional to act on
        """A hint that every point is about to be read; an adapter may read ahead. No-op here."""

    def space_needed(self, points: int, raw_bytes: int) -> tuple[Path, int] | None:
        """Where on local disk writing ``points`` points takes room, and about how many bytes
        free it needs there; ``raw_bytes`` is their ids, float32 vectors and JSON payloads.
        None when the store is not on local disk (a server keeps its own)."""
        return None

    @abstractmethod
    def scroll(self, *, batch_size: int = 1024, with_vectors: bool = True) -> Iterator[list[Point]]:
        """Every point, in pages of at most ``batch_size``; memory bounded by the page."""

    @abstractmethod
    def count(self) -> int: ...

    @abstractmethod
    def query(self, vector_name: str, vector: np.ndarray, k: int) -> list[Hit]: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # -- building a replacement beside the live store (used by restore) --------------------

    @abstractmethod
    def staging(self, tag: str) -> Store:
        """A store of the same backend beside this one, to build a replacement in.

        ``tag`` tells stagings apart; nothing is created until the first write.
        """

    @abstractmethod
    def swap_in(self, staging: Store) -> None:
        """Make ``staging``'s points this store's, keeping the replaced data aside.

        Idempotent: an interrupted swap is finished by calling it again with the same staging,
        and a finished one is a no-op. The set-aside data stays until ``drop_leftovers``.
        """

    @abstractmethod
    def drop_leftovers(self) -> None:
        """Delete what ``swap_in`` set aside and any staging an interrupted build left behind."""

    # -- the store's own files (used by snapshot and restore) ------------------------------

    def native_files(self) -> NativeFiles | None:
        """The store's own files, which a snapshot may carry and a restore copy back into a
        store of the same engine version; None when it has none a copy could load (a server
        keeps its files to itself). This default: none."""
        return None

    def closed_and_held(self) -> AbstractContextManager[Path]:
        """Flush and close the store, then hold it against every other opener while the
        caller reads its ``native_files`` folder (yielded), so that the files stay exactly as
        they are. The store reopens on the next call that needs it. Only for a store that has
        ``native_files``; StoreError for any other."""
        raise StoreError(f"The {self.backend} store keeps no files of its own that a "
                         "snapshot could copy.")

    def unpack_shard_snapshot(self, archive: Path, scratch: Path) -> list[str]:
        """Fill this store, which must not exist yet, from a Qdrant server's shard snapshot
        ``archive``; returns the names of the members left out (only a shard's own layout is
        unpacked). ``scratch``: a file path it may use meanwhile. Only where
        ``unpacks_shard_snapshots``; StoreError for any other store."""
        raise StoreError(f"The {self.backend} store cannot take in a Qdrant shard snapshot.")

    def kept_vectors(self, distance: str, vectors: np.ndarray) -> np.ndarray:
        """The float32 rows this store keeps when ``vectors`` (one per row) are written.

        Qdrant's engine stores cosine vectors normalised and leaves an already unit vector
        untouched, so by default this is the identity for the vectors kbguard writes.
        """
        return vectors

    def ensure(self, vectors: Sequence[VectorSpec]) -> None:
        """Create the collection unless it exists with exactly this configuration."""
        info = self.describe()
        if not info.exists:
            self.create(vectors)
            return
        want = {v.name: v for v in vectors}
        have = {v.name: v for v in info.vectors}
        if want != have:
            raise StoreError(
                f"The {self.backend} collection exists with vectors {_fmt(have)} but the config "
                f"asks for {_fmt(want)}. Run `kbguard rebuild --full` to recreate it."
            )

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(specs: dict[str, VectorSpec]) -> str:
    return ", ".join(f"{n}({s.dim}-d {s.distance})" for n, s in sorted(specs.items())) or "none"
