"""The reads a rebuild serves while it holds the KB, so that the KB stays available.

No other process can open the manifest while a rebuild writes it (DuckDB), nor an Edge shard or
a qdrant-client local folder while the rebuild has it open; so `kbguard status` and
`kbguard search` ask the rebuild instead (kbguard.kb.read_socket has the asking side). A thread
of the rebuild answers on a Unix socket, to processes of the same user (or root) only:

    {"op": "status"}        the status the manifest and the store give, with the run's progress
    {"op": "search-plan"}   the store's points and, per space, the points lacking its vector
    {"op": "query", "space": NAME, "vector": BASE64, "k": K}
                            the K nearest points in that space, with their payloads

Manifest reads go through a DuckDB connection of their own, which sees only committed batches.
Store calls of the rebuild and of the reads share one lock: qdrant-client's local mode breaks
under concurrent calls (a query during an upsert raised numpy shape errors, 57 in 1,442), and
the lock also makes every read see whole batches. A query waits at most for one store batch.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from kbguard.config import Config
from kbguard.core.progress import Progress
from kbguard.errors import ConfigError, KbguardError
from kbguard.kb.read_socket import socket_name, text_vector
from kbguard.kb.status_report import status_from_manifest, store_summary
from kbguard.manifest import Manifest
from kbguard.store import (
    CollectionInfo,
    Hit,
    NativeFiles,
    Point,
    PointArrays,
    Store,
    VectorSpec,
    store_for,
)

_REQUEST_TIMEOUT_S = 10.0  # a client that connects and sends nothing is dropped
_MAX_REQUEST = 1 << 20
_STOP_WAIT_S = 5.0         # reads still being answered when the rebuild ends


class RunProgress(Progress):
    """The command's progress, passed on, and kept for the status a read asks for."""

    def __init__(self, inner: Progress):
        self.inner = inner
        self._lock = threading.Lock()
        self._stages: list[dict[str, Any]] = []

    def stage(self, name: str, total: int | None = None) -> None:
        with self._lock:
            self._stages.append({"name": name, "done": 0, "total": total})
        self.inner.stage(name, total)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            if self._stages:
                self._stages[-1]["done"] += n
        self.inner.advance(n)

    def note(self, message: str) -> None:
        self.inner.note(message)

    def close(self) -> None:
        self.inner.close()

    def stages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._stages]


class SharedStore(Store):
    """A store used by the rebuild's thread and the read service's, one call at a time."""

    def __init__(self, inner: Store):
        self.inner = inner
        self.backend = inner.backend
        self.unpacks_shard_snapshots = inner.unpacks_shard_snapshots
        self.lock = threading.Lock()

    def describe(self) -> CollectionInfo:
        with self.lock:
            return self.inner.describe()

    def create(self, vectors: Sequence[VectorSpec]) -> None:
        with self.lock:
            self.inner.create(vectors)

    def drop(self) -> None:
        with self.lock:
            self.inner.drop()

    def upsert(self, points: Sequence[Point]) -> None:
        with self.lock:
            self.inner.upsert(points)

    def delete(self, ids: Iterable[str]) -> None:
        with self.lock:
            self.inner.delete(ids)

    def retrieve(self, ids: Sequence[str], *, with_vectors: bool = True) -> list[Point]:
        with self.lock:
            return self.inner.retrieve(ids, with_vectors=with_vectors)

    def retrieve_arrays(self, ids: Sequence[str], dims: Mapping[str, int]) -> PointArrays:
        with self.lock:
            return self.inner.retrieve_arrays(ids, dims)

    def will_read_all(self) -> None:
        self.inner.will_read_all()

    def space_needed(self, points: int, raw_bytes: int) -> tuple[Path, int] | None:
        return self.inner.space_needed(points, raw_bytes)

    def scroll(self, *, batch_size: int = 1024, with_vectors: bool = True) -> Iterator[list[Point]]:
        pages = self.inner.scroll(batch_size=batch_size, with_vectors=with_vectors)
        while True:
            with self.lock:
                page = next(pages, None)
            if page is None:
                return
            yield page

    def count(self) -> int:
        with self.lock:
            return self.inner.count()

    def query(self, vector_name: str, vector: np.ndarray, k: int) -> list[Hit]:
        with self.lock:
            return self.inner.query(vector_name, vector, k)

    def flush(self) -> None:
        with self.lock:
            self.inner.flush()

    def close(self) -> None:
        with self.lock:
            self.inner.close()

    def staging(self, tag: str) -> Store:
        return self.inner.staging(tag)

    def swap_in(self, staging: Store) -> None:
        with self.lock:
            self.inner.swap_in(staging)

    def drop_leftovers(self) -> None:
        with self.lock:
            self.inner.drop_leftovers()

    def kept_vectors(self, distance: str, vectors: np.ndarray) -> np.ndarray:
        return self.inner.kept_vectors(distance, vectors)

    def native_files(self) -> NativeFiles | None:
        return self.inner.native_files()

    @contextmanager
    def closed_and_held(self) -> Iterator[Path]:
        with self.lock, self.inner.closed_and_held() as path:
            yield path

    def unpack_shard_snapshot(self, archive: Path, scratch: Path) -> list[str]:
        with self.lock:
            return self.inner.unpack_shard_snapshot(archive, scratch)


class ReadService:
    """What a rebuild shares with the reads it serves: its progress, its store, its manifest."""

    def __init__(self, cfg: Config, manifest: Manifest, progress: Progress):
        self.cfg = cfg
        self.progress = RunProgress(progress)
        self.shared = SharedStore(store_for(cfg))
        self._reader = manifest.reader()   # made here: on the thread that opened the manifest
        self._reader_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._readers: list[threading.Thread] = []
        self._started = time.monotonic()

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The KB's store for the rebuild's store stage; closed (so flushed) when the stage
        ends, as the stage always closed its store. A read after that opens it again."""
        try:
            yield self.shared
        finally:
            self.shared.close()

    # -- serving -------------------------------------------------------------------------------

    def start(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(socket_name(self.cfg.manifest))
            listener.listen(16)
        except OSError as exc:
            listener.close()
            self.progress.note(f"status and search cannot be answered during this rebuild: "
                               f"the read service could not listen ({exc.strerror or exc}).")
            return
        self._listener = listener
        self._acceptor = _daemon(self._accept_loop, "kbguard-reads")

    def stop(self) -> None:
        """Stop listening, let the reads being answered finish, release store and reader."""
        if self._listener is not None and self._acceptor is not None:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes accept() at once (Linux)
            self._acceptor.join()
            self._listener.close()
        for thread in self._readers:
            thread.join(_STOP_WAIT_S)
        with self._reader_lock:
            self._reader.close()
        try:
            # the store stage closed the store already; only a read can have opened it since
            self.shared.close()
        except KbguardError as exc:
            self.progress.note(f"closing the store after the reads of this rebuild: {exc}")

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return   # stop() shut the listener down
            self._readers = [t for t in self._readers if t.is_alive()]
            self._readers.append(_daemon(self._serve, "kbguard-read", conn))

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(_REQUEST_TIMEOUT_S)
                if not _same_user(conn):
                    answer: dict[str, Any] = {"error": "This KB's rebuild answers reads only "
                                              "for the user running it.",
                                              "error_type": "LockedError"}
                else:
                    answer = self._answer(_read_request(conn))
                conn.sendall(json.dumps(answer, default=str).encode() + b"\n")
            except OSError:
                pass   # the asking process went away; nothing to tell it

    def _answer(self, request: Any) -> dict[str, Any]:
        try:
            op = request.get("op") if isinstance(request, dict) else None
            if op == "status":
                return {"ok": self._status()}
            if op == "search-plan":
                return {"ok": self._search_plan()}
            if op == "query":
                return {"ok": self._query(request)}
            raise KbguardError(f"The rebuild's read service knows no request {op!r}; are "
                               "both commands the same kbguard version?")
        except KbguardError as exc:
            return {"error": str(exc), "error_type": type(exc).__name__}
        except Exception as exc:  # noqa: BLE001 - a failed read must not end the rebuild
            return {"error": f"The running rebuild could not answer: {type(exc).__name__}: "
                             f"{exc}. Run the command again once the rebuild has finished.",
                    "error_type": "KbguardError"}

    # -- the reads -----------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        with self._reader_lock:
            report = status_from_manifest(self.cfg, self._reader)
            running = self._running()
        report.store = store_summary(self.cfg, self.shared)
        report.rebuild = running
        return report.to_dict()

    def _search_plan(self) -> dict[str, Any]:
        info = self.shared.describe()
        with self._reader_lock:
            # one space: nothing to choose between, as without a rebuild (search._lacking)
            lacking = ({s.name: self._reader.points.lacking_vector(s.name)
                        for s in self.cfg.spaces} if len(self.cfg.spaces) > 1 else {})
            running = self._running()
        return {"exists": info.exists, "points": info.points if info.exists else 0,
                "lacking": lacking, "rebuild": running}

    def _query(self, request: dict[str, Any]) -> dict[str, Any]:
        name, k = request.get("space"), request.get("k")
        if name not in {s.name for s in self.cfg.spaces} or not isinstance(k, int) or k < 1:
            raise ConfigError(f"The rebuild's read service was asked for space {name!r} and "
                              f"k = {k!r}; the spaces of this KB are "
                              f"{', '.join(s.name for s in self.cfg.spaces)}.")
        hits = self.shared.query(name, text_vector(str(request.get("vector", ""))), k)
        return {"hits": [{"id": h.id, "score": h.score, "payload": h.payload} for h in hits]}

    def _running(self) -> dict[str, Any]:
        """The run's id and start, its current stage and each stage's items done of total
        (called under the reader's lock)."""
        run = self._reader.runs.last()
        if run is not None and run["status"] != "running":
            run = None   # the run is being opened: none recorded yet
        stages = self.progress.stages()
        started = run["started_at"] if run else None
        return {"pid": os.getpid(), "run_id": run["run_id"] if run else None,
                "kind": run["kind"] if run else None,
                "started_at": None if started is None else started.isoformat(timespec="seconds"),
                "seconds": round(time.monotonic() - self._started, 1),
                "stage": stages[-1]["name"] if stages else None, "stages": stages}


@contextmanager
def serve_reads(cfg: Config, manifest: Manifest, progress: Progress) -> Iterator[ReadService]:
    """Answer status and search for other processes while the caller writes the KB; the
    caller reports its progress to ``service.progress`` and uses ``service.store()``."""
    service = ReadService(cfg, manifest, progress)
    service.start()
    try:
        yield service
    finally:
        service.stop()


def _daemon(target: Any, name: str, *args: Any) -> threading.Thread:
    # daemon: a read stuck on its client must never keep a finished rebuild's process alive
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


def _read_request(conn: socket.socket) -> Any:
    data = b""
    while b"\n" not in data and len(data) <= _MAX_REQUEST:
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    try:
        return json.loads(data.split(b"\n", 1)[0] or b"null")
    except ValueError:
        return None
