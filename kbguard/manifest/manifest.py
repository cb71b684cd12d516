"""The Manifest: one KB's DuckDB file opened, checked and bound to its KB, and its parts.

Each part holds the queries of the tables of one thing the manifest records, over the
Manifest's one connection, so one transaction can span several parts (a batch that commits a
document's chunks with their vectors)::

    with Manifest.open(cfg.manifest, kb=cfg.kb) as m, m.transaction():
        m.documents.record(doc, chunks)
        m.cache.add(space_id, vectors, run_id)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import duckdb

from kbguard.errors import KbguardError, ManifestError
from kbguard.manifest.cache import EmbeddingCache
from kbguard.manifest.checks import Checks
from kbguard.manifest.connection import Connection, connect, now, require_writable, translate, wal
from kbguard.manifest.documents import Chunks, Documents
from kbguard.manifest.drills import Drills
from kbguard.manifest.future import FutureChunks
from kbguard.manifest.ledger import Ledger
from kbguard.manifest.migrations import check_version, migrate
from kbguard.manifest.points import Points
from kbguard.manifest.runs import Runs
from kbguard.manifest.tables import Tables


class Manifest:
    """A KB's DuckDB manifest. Open with ``Manifest.open``; close when done.

    ``documents`` and ``chunks``: what the corpus holds and the KB should contain; ``cache``:
    every vector computed; ``points``: what the store holds, and the protocol that writes it;
    ``runs``, ``checks``, ``drills`` and ``ledger``: what happened to the KB and what it cost;
    ``future``: the chunks as a rebuild would leave them (estimates); ``tables``: whole tables
    in and out (snapshots, restores).
    """

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, read_only: bool):
        self.path = path
        self.read_only = read_only
        # Until open() has checked the file, its errors stay DuckDB's: open() translates them
        # knowing whether it opened to read or to write.
        self._db = Connection(con, path, translate_all=False)
        self.documents = Documents(self._db)
        self.chunks = Chunks(self._db)
        self.cache = EmbeddingCache(self._db)
        self.points = Points(self._db)
        self.runs = Runs(self._db)
        self.checks = Checks(self._db, self.runs)
        self.drills = Drills(self._db)
        self.ledger = Ledger(self._db)
        self.future = FutureChunks(self._db)
        self.tables = Tables(self._db)

    # -- opening -----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False, kb: str | None = None) -> Manifest:
        """Open (creating and migrating unless read_only) the manifest at ``path``."""
        if read_only and not path.exists():
            raise ManifestError(
                f"No manifest at {path}: this KB has not been built yet. Run `kbguard rebuild`."
            )
        # DuckDB leaves a file of 0 bytes when it cannot write a new database's header (a full
        # disk, a kill at the wrong moment). It holds nothing, and DuckDB refuses to open it.
        empty = path.is_file() and path.stat().st_size == 0 and not wal(path).exists()
        if read_only and empty:
            raise ManifestError(
                f"{path} is an empty manifest: a first build was interrupted before it wrote "
                "anything. Run `kbguard rebuild`.")
        if not read_only:
            require_writable(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if empty:
                    path.unlink()
            except OSError as exc:
                raise translate(exc, path, writing=True) from exc
        try:
            con = connect(path, read_only)
        except duckdb.Error as exc:
            raise translate(exc, path, writing=not read_only) from exc
        m = cls(path, con, read_only)
        try:
            if read_only:
                check_version(m._db, path)
            else:
                migrate(m._db, path)
                if kb is not None:
                    m._bind_kb(kb)
        except duckdb.Error as exc:
            con.close()
            raise translate(exc, path, writing=not read_only) from exc
        except KbguardError:
            con.close()
            raise
        m._db.translate_all = True
        return m

    def close(self) -> None:
        self._db.close()

    def reader(self) -> Manifest:
        """This manifest on a connection of its own, for reads from another thread while this
        one writes: each statement sees what was committed, never half a transaction. Make it
        on the thread that opened this one, and close it before this one."""
        m = Manifest(self.path, self._db.cursor()._con, read_only=True)
        m._db.translate_all = True
        return m

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bind_kb(self, kb: str) -> None:
        have = self.get_meta("kb")
        if have is None:
            with self.transaction():
                self.set_meta("kb", kb)
                self.set_meta("created_at", now().isoformat())
        elif have != kb:
            raise ManifestError(
                f"{self.path} belongs to KB {have!r}, but the config names KB {kb!r}. "
                "Point manifest.path at this KB's own manifest."
            )

    # -- what spans the parts ----------------------------------------------------------------

    def transaction(self) -> AbstractContextManager[None]:
        """One transaction for whatever the parts write inside it."""
        return self._db.transaction()

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def checkpoint(self) -> None:
        """Move everything from the WAL into the database file itself."""
        self._db.execute("CHECKPOINT")

    def counts(self) -> dict[str, int]:
        """What `kbguard status` counts."""
        return {
            "documents": self.documents.count("ok"),
            "failed_documents": self.documents.count("failed"),
            "chunks": self.chunks.count(),
            "cached_vectors": self.cache.count(),
            "points_written": self.points.confirmed_count(),
            "points_pending": self.points.pending_count(),
        }
