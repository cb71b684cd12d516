"""The qdrant-client adapter: a Qdrant server or cluster by URL, or qdrant-client's local mode.

Local mode (``path=``) is the stand-in for the server API in tests. It pickles points into
SQLite, so only open folders you wrote yourself, and it keeps every point in memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np

from kbguard.core.disk import disk_full, is_disk_full
from kbguard.core.durable import atomic_write_text, fsync_path
from kbguard.core.redact import redact_url, scrub, url_secrets
from kbguard.errors import ConfigError, KbguardError, StoreDamaged, StoreError, StoreUnavailable
from kbguard.store._common import (
    canonical_id,
    check_specs,
    config_mismatch,
    engine_message,
    id_from_store,
    same_config,
    vector_in,
    vector_out,
)
from kbguard.store.base import CollectionInfo, Hit, Point, Store, VectorSpec

_TIMEOUT_S = 60
_F32_EPS = np.float32(1.1920929e-7)  # local mode leaves vectors with a smaller norm alone
_TO_QDRANT = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}
# gRPC status codes that mean "could not reach or talk to the server", not "bad request".
_GRPC_UNAVAILABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "PERMISSION_DENIED"}
# qdrant-client's local mode: its collections and aliases, the folder lock it flocks, the
# folder of each collection's storage, and where kbguard moves a collection it deletes by hand
_META = "meta.json"
_LOCK = ".lock"
_COLLECTIONS = "collection"
_DROPPED = ".dropped-"


class QdrantStore(Store):
    """A KB collection in Qdrant, reached through qdrant-client."""

    backend = "qdrant"

    def __init__(
        self,
        collection: str,
        *,
        url: str | None = None,
        path: Path | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
    ) -> None:
        if (url is None) == (path is None):
            raise StoreError("A Qdrant store needs exactly one of a server URL or a local path.")
        if (api_key is not None or api_key_env is not None) and url is None:
            raise StoreError("An API key only applies to a Qdrant server URL, not a local path.")
        self.collection = collection
        self.url = url
        # what messages show: the URL without its credentials
        self.shown_url = redact_url(url) if url is not None else None
        self.path = Path(path) if path is not None else None
        self._api_key = api_key
        self._api_key_env = api_key_env
        self._client: Any = None
        self._shares_client = False  # a staging store borrows its parent's client

    def __repr__(self) -> str:
        where = f"url={self.shown_url!r}" if self.url else f"path={str(self.path)!r}"
        return f"QdrantStore({self.collection!r}, {where})"

    @property
    def where(self) -> str:
        """Where the collection lives, as the user would recognise it in a message."""
        if self.url:
            return f"collection {self.collection!r} on the Qdrant server at {self.shown_url}"
        return f"collection {self.collection!r} in the Qdrant local store at {self.path}"

    # -- connection and errors -------------------------------------------------------------

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        from qdrant_client import QdrantClient

        if self.url is not None:
            api_key = self._key()
            with self._translate("connecting"):
                # The version check would contact the server here and only warn on failure;
                # the first real call reports an unreachable server as an error instead.
                self._client = QdrantClient(
                    url=self.url,
                    api_key=api_key,
                    timeout=_TIMEOUT_S,
                    check_compatibility=False,
                )
            return self._client
        try:
            self._client = QdrantClient(path=str(self.path))
        except RuntimeError as exc:
            # qdrant-client says another client holds the folder only in its message
            if "already accessed" in str(exc):
                raise self._busy() from exc
            raise self._damaged(exc) from exc
        except Exception as exc:
            raise self._damaged(exc) from exc
        return self._client

    def _key(self) -> str | None:
        """The API key: given, or read from the named environment variable now, when the store
        is opened (never kept in the config, never written anywhere)."""
        if self._api_key is not None or self._api_key_env is None:
            return self._api_key
        key = os.environ.get(self._api_key_env, "").strip()
        if not key:
            raise ConfigError(
                f"store.api_key_env names the environment variable {self._api_key_env}, but it "
                f"is not set (or empty). Export the Qdrant API key in it "
                f"(`export {self._api_key_env}=...`) and run again.")
        self._api_key = key
        return key

    def _secrets(self) -> list[str]:
        return [*url_secrets(self.url), *([self._api_key] if self._api_key else [])]

    def _busy(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"The Qdrant local store at {self.path} is open in another process or client; "
            "wait for it to finish."
        )

    def _damaged(self, exc: BaseException) -> KbguardError:
        if is_disk_full(exc):
            return disk_full(self.path or Path("."), f"open the Qdrant local store at {self.path}")
        return StoreDamaged(
            f"The Qdrant local store at {self.path} cannot be opened: {engine_message(exc)}. "
            "Run `kbguard restore --latest` or `kbguard rebuild --full`."
        )

    @contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreError:
            raise
        except Exception as exc:
            err = self._error(exc, doing)
            # a client library's message may quote the URL, credentials included
            raise type(err)(scrub(str(err), self._secrets())) from exc

    def _error(self, exc: Exception, doing: str) -> KbguardError:
        import httpx
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if self.path is not None and is_disk_full(exc):
            # SQLite fails cleanly ("database or disk is full"): the write was not made
            return disk_full(self.path, f"go on {doing} in the {self.where}")

        cause: BaseException = exc
        if isinstance(exc, ResponseHandlingException) and isinstance(exc.source, BaseException):
            cause = exc.source
        if isinstance(cause, (httpx.TransportError, ConnectionError, TimeoutError)):
            reason = str(cause) or type(cause).__name__
            return StoreUnavailable(
                f"The Qdrant server at {self.shown_url} cannot be reached ({reason}). "
                "Check that it is running and that the URL is right."
            )
        if isinstance(exc, UnexpectedResponse):
            if exc.status_code in (401, 403):
                return StoreUnavailable(
                    f"The Qdrant server at {self.shown_url} refused the request "
                    f"({exc.status_code}). "
                    "Check the API key (the variable named by store.api_key_env)."
                )
            detail = exc.content.decode("utf-8", "replace")[:300]
            return StoreError(
                f"The {self.where} rejected {doing}: HTTP {exc.status_code} {detail}".rstrip()
            )
        grpc_code = _grpc_code(exc)
        if grpc_code in _GRPC_UNAVAILABLE:
            return StoreUnavailable(
                f"The Qdrant server at {self.shown_url} cannot be used ({grpc_code}). "
                "Check that it is running, the URL and the API key."
            )
        return StoreError(f"The {self.where} failed while {doing}: {engine_message(exc)}")

    # -- the Store interface ---------------------------------------------------------------

    def describe(self) -> CollectionInfo:
        """Whether the collection exists, its named vectors and its exact point count."""
        if self._client is None and self.path is not None and not (self.path / _META).exists():
            return CollectionInfo(exists=False)  # opening would create an empty store there
        client = self._connect()
        with self._translate("describing the collection"):
            if not client.collection_exists(self.collection):
                return CollectionInfo(exists=False)
            params = client.get_collection(self.collection).config.params.vectors
        if params is None:
            specs: list[VectorSpec] = []
        elif isinstance(params, dict):
            specs = [_spec(name, p) for name, p in params.items()]
        else:
            specs = [_spec("", params)]  # one unnamed vector: a collection made outside kbguard
        specs.sort(key=lambda s: s.name)
        return CollectionInfo(exists=True, vectors=tuple(specs), points=self.count())

    def create(self, vectors: Sequence[VectorSpec]) -> None:
        """Create the collection; a no-op if it exists with exactly these vectors."""
        from qdrant_client import models

        want = check_specs(vectors)
        info = self.describe()
        if info.exists:
            if not same_config(info.vectors, want):
                raise config_mismatch(self.backend, self.where, info.vectors, want)
            return
        config = {
            s.name: models.VectorParams(
                size=s.dim, distance=models.Distance(_TO_QDRANT[s.distance])
            )
            for s in want.values()
        }
        with self._translate("creating the collection"):
            self._connect().create_collection(self.collection, vectors_config=config)

    def drop(self) -> None:
        """Delete the collection and its points; no error if it is not there.

        In local mode a folder the client cannot open (a damaged collection) is cleared of
        this KB's collections without opening it.
        """
        from qdrant_client import models

        if self.path is not None and self._client is None:
            if not (self.path / _META).exists():
                self._drop_unopened()  # nothing the client knows of; clear stray folders
                return
            try:
                self._connect()
            except StoreDamaged:
                self._drop_unopened()
                return
        client = self._connect()
        with self._translate("deleting the collection"):
            target = self._aliases().get(self.collection)
            if target is not None:
                # After a restore the KB's name is an alias: drop it and what it points at.
                client.update_collection_aliases(change_aliases_operations=[
                    models.DeleteAliasOperation(
                        delete_alias=models.DeleteAlias(alias_name=self.collection))])
                client.delete_collection(target)
            elif client.collection_exists(self.collection):
                client.delete_collection(self.collection)

    def _mine(self, name: str) -> bool:
        """Whether a collection of the folder is this KB's: its own, or a staging copy."""
        return name == self.collection or name.startswith(self.collection + "--")

    def _drop_unopened(self) -> None:
        """Delete this KB's collections from a local folder by editing the folder itself.

        The client loads every collection of the folder when it opens it, so one unreadable
        collection keeps it from ever reaching ``delete_collection``. Under the client's own
        folder lock, the KB's collection folders (its name, the collection its alias points at,
        its staging copies) are first moved out of ``collection/``, then ``meta.json`` is
        rewritten without them, then they are deleted. That order matters: the client gives a
        new collection whatever storage it finds under its name, so a folder left in place
        would come back to life; killed at any step, running drop again finishes the job.
        """
        assert self.path is not None
        if not (self.path / _META).exists() and not (self.path / _COLLECTIONS).is_dir():
            return  # no collection was ever made here
        with self._folder_lock():
            for stale in self.path.glob(_DROPPED + "*"):
                shutil.rmtree(stale, ignore_errors=True)
            base = self.path / _COLLECTIONS
            on_disk = sorted(d.name for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
            meta = self._read_meta()
            if meta is None:
                others = [n for n in on_disk if not self._mine(n)]
                if others:
                    raise StoreDamaged(
                        f"The Qdrant local store at {self.path} cannot be opened and its {_META} "
                        f"is missing or unreadable, while the folder also holds the collections "
                        f"{', '.join(others)} of other KBs: kbguard will not guess which files "
                        "are whose. Give this KB a store.path of its own in the config, or "
                        "repair the folder by hand.")
                doomed = set(on_disk)
                meta = {"collections": {}, "aliases": {}}
            else:
                target = meta["aliases"].get(self.collection)
                doomed = {n for n in [*meta["collections"], *on_disk]
                          if self._mine(n) or n == target}
                meta["collections"] = {n: c for n, c in meta["collections"].items()
                                       if n not in doomed}
                meta["aliases"] = {a: n for a, n in meta["aliases"].items()
                                   if a != self.collection and n not in doomed}
                if isinstance(meta.get("text_indexes"), dict):
                    meta["text_indexes"] = {n: t for n, t in meta["text_indexes"].items()
                                            if n not in doomed}
            aside = self.path / f"{_DROPPED}{secrets.token_hex(4)}"
            try:
                for name in sorted(doomed):
                    if _inside(base, name) and (base / name).is_dir():
                        aside.mkdir(exist_ok=True)
                        os.rename(base / name, aside / name)
                if aside.exists():
                    fsync_path(base)
                atomic_write_text(self.path / _META, json.dumps(meta))
                shutil.rmtree(aside, ignore_errors=True)
            except OSError as exc:
                raise StoreError(
                    f"Could not delete the {self.where}: {exc}. Fix the cause and run the "
                    "command again; it finishes the deletion.") from exc
        try:
            self._connect()
        except StoreDamaged as exc:
            raise StoreDamaged(
                f"The Qdrant local store at {self.path} still cannot be opened after the "
                f"collections of KB {self.collection!r} were deleted from it: another "
                f"collection in the folder is damaged ({engine_message(exc)}). Give this KB a "
                "store.path of its own in the config.") from exc

    def _read_meta(self) -> dict[str, Any] | None:
        assert self.path is not None
        try:
            meta = json.loads((self.path / _META).read_text())
        except (OSError, ValueError):
            return None
        if (not isinstance(meta, dict) or not isinstance(meta.get("collections"), dict)
                or not isinstance(meta.get("aliases"), dict)):
            return None
        return meta

    @contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """Hold the lock a client of the folder holds (qdrant-client flocks ``.lock``)."""
        assert self.path is not None
        fd = os.open(self.path / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._busy() from None
            yield
        finally:
            os.close(fd)

    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace whole points; returns once the server has applied the batch."""
        if not points:
            return
        from qdrant_client import models

        batch = [
            models.PointStruct(
                id=canonical_id(p.id),
                vector={name: vector_in(v) for name, v in p.vectors.items()},
                payload=p.payload,
            )
            for p in points
        ]
        client = self._connect()
        with self._translate(f"upserting {len(batch)} points"):
            client.upsert(self.collection, points=batch, wait=True)

    def delete(self, ids: Iterable[str]) -> None:
        """Delete points by id; ids that are not stored are ignored."""
        from qdrant_client import models

        wanted = [canonical_id(i) for i in ids]
        if not wanted:
            return
        client = self._connect()
        with self._translate(f"deleting {len(wanted)} points"):
            client.delete(
                self.collection, points_selector=models.PointIdsList(points=list[int | str | UUID](wanted)), wait=True
            )

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = True) -> list[Point]:
        """The points among ``ids`` that exist, in no particular order."""
        wanted = [canonical_id(i) for i in ids]
        if not wanted:
            return []
        client = self._connect()
        with self._translate(f"reading {len(wanted)} points"):
            records = client.retrieve(
                self.collection, ids=wanted, with_payload=True, with_vectors=with_vectors
            )
        return [_to_point(r, with_vectors) for r in records]

    def scroll(self, *, batch_size: int = 1024, with_vectors: bool = True) -> Iterator[list[Point]]:
        """Every point, in pages of at most ``batch_size``."""
        if batch_size <= 0:
            raise StoreError(f"batch_size must be positive, not {batch_size}.")
        client = self._connect()
        offset = None
        while True:
            with self._translate("scrolling points"):
                records, offset = client.scroll(
                    self.collection,
                    limit=batch_size,
                    offset=offset,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            page = [_to_point(r, with_vectors) for r in records]
            if page:
                yield page
            if offset is None:
                return

    def count(self) -> int:
        """The exact number of points."""
        client = self._connect()
        with self._translate("counting points"):
            return int(client.count(self.collection, exact=True).count)

    def query(self, vector_name: str, vector: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` nearest points by the named vector, best first, with payloads.

        Scores are similarities for cosine/dot and distances (smaller is nearer) for euclid.
        """
        client = self._connect()
        with self._translate(f"querying vector {vector_name!r}"):
            result = client.query_points(
                self.collection,
                query=vector_in(vector),
                using=vector_name,
                limit=k,
                with_payload=True,
                with_vectors=False,
            )
        return [
            Hit(id_from_store(p.id), float(p.score), dict(p.payload or {})) for p in result.points
        ]

    def flush(self) -> None:
        """Nothing to do: every write waits until Qdrant has applied and logged it."""
        # upsert/delete pass wait=True, so the server acknowledges after its WAL write; local
        # mode commits each write to SQLite before returning.

    def close(self) -> None:
        """Release the client (and local mode's folder lock); safe to call twice."""
        if self._shares_client:
            return  # a staging store: the store it was made from owns the client
        client, self._client = self._client, None
        if client is None:
            return
        with self._translate("closing"):
            client.close()


    # -- replacing the collection -----------------------------------------------------------
    #
    # Qdrant cannot rename a collection, but it switches an alias atomically: a replacement is
    # built as collection `<name>--<tag>`, and the KB's name becomes an alias to it in one
    # `update_collection_aliases` call (delete old alias + create new one). The first swap of a
    # collection that `rebuild` created under the plain name has to delete that collection
    # before the alias can take its name: the one step that is not atomic. The restore journal
    # finishes it if the process dies in between.

    def space_needed(self, points: int, raw_bytes: int) -> tuple[Path, int] | None:
        """Local mode pickles each point into SQLite: measured at 1.9-2.8x the raw bytes."""
        if self.path is None:
            return None
        return self.path, 3 * raw_bytes + (1 << 20)

    def staging(self, tag: str) -> QdrantStore:
        """Collection ``<name>--<tag>`` on the same server or local folder, sharing the client
        (local mode allows one client per folder)."""
        other = QdrantStore(f"{self.collection}--{tag}", url=self.url, path=self.path,
                            api_key=self._api_key, api_key_env=self._api_key_env)
        other._client = self._connect()
        other._shares_client = True
        return other

    def _aliases(self) -> dict[str, str]:
        client = self._connect()
        return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}

    def swap_in(self, staging: Store) -> None:
        """Point the KB's name at the staging collection; the old collection is kept."""
        from qdrant_client import models

        if not isinstance(staging, QdrantStore) or not staging.collection.startswith(
                self.collection + "--"):
            raise StoreError(f"{staging!r} is not a staging collection of {self!r}.")
        client = self._connect()
        with self._translate(f"switching to collection {staging.collection!r}"):
            current = self._aliases().get(self.collection)
            if current == staging.collection:
                return  # swapped already
            if staging.collection not in {c.name for c in client.get_collections().collections}:
                raise StoreError(
                    f"The staging collection {staging.collection!r} does not exist in the "
                    f"{self.where}, so there is nothing to switch to. Run the restore again."
                )
            ops: list[Any] = []
            if current is not None:
                ops.append(models.DeleteAliasOperation(
                    delete_alias=models.DeleteAlias(alias_name=self.collection)))
            elif client.collection_exists(self.collection):
                client.delete_collection(self.collection)  # see the note above
            ops.append(models.CreateAliasOperation(create_alias=models.CreateAlias(
                collection_name=staging.collection, alias_name=self.collection)))
            client.update_collection_aliases(change_aliases_operations=ops)

    def drop_leftovers(self) -> None:
        """Delete every ``<name>--*`` collection the KB's name does not point at."""
        client = self._connect()
        with self._translate("deleting replaced collections"):
            live = self._aliases().get(self.collection)
            for c in client.get_collections().collections:
                if c.name.startswith(self.collection + "--") and c.name != live:
                    client.delete_collection(c.name)

    def kept_vectors(self, distance: str, vectors: np.ndarray) -> np.ndarray:
        """What a read through this client returns after a write.

        Local mode divides every cosine vector by its float32 norm in memory, even a unit one,
        which can move it by a rounding step; it persists the vector as written, so a client
        that opens the folder later reads that back. A server keeps unit vectors as they are.
        """
        if self.path is None or distance != "cosine":
            return vectors
        out = np.empty_like(vectors, dtype=np.float32)
        for i, v in enumerate(np.asarray(vectors, dtype=np.float32)):
            norm = np.linalg.norm(v)
            out[i] = v / norm if norm > _F32_EPS else v  # the same arithmetic as local mode
        return out


def _inside(base: Path, name: str) -> bool:
    """Whether collection ``name``'s folder lies strictly inside ``base`` (a name from a
    damaged meta.json, or an empty one, must never make kbguard move ``base`` or beyond)."""
    root = base.resolve()
    return root in (base / name).resolve().parents


def _grpc_code(exc: BaseException) -> str | None:
    try:
        import grpc  # type: ignore[import-untyped]
    except ImportError:
        return None
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        try:
            return str(exc.code().name)
        except Exception:  # noqa: BLE001 - a half-built RpcError has no code
            return None
    return None


def _spec(name: str, params: Any) -> VectorSpec:
    distance = getattr(params.distance, "value", params.distance)
    return VectorSpec(name=name, dim=int(params.size), distance=str(distance).lower())


def _to_point(record: Any, with_vectors: bool) -> Point:
    vectors: dict[str, np.ndarray] = {}
    if with_vectors and record.vector is not None:
        raw = record.vector
        items = raw.items() if isinstance(raw, dict) else [("", raw)]
        vectors = {name: vector_out(v) for name, v in items}
    return Point(id=id_from_store(record.id), vectors=vectors, payload=dict(record.payload or {}))
