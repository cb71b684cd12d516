"""The manifest: one DuckDB file per KB, the record of what the KB should contain.

Documents, chunks (with their text), the embedding cache and the store state live here. Every
pipeline batch is one transaction, so a run killed at any moment leaves a manifest that the next
run continues from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from kbguard.disk import disk_full, file_in_message, is_disk_full, is_read_only_error, not_writable
from kbguard.errors import KbguardError, ManifestError, ManifestReadOnly
from kbguard.migrations import MIGRATIONS
from kbguard.redact import scrub_data

SCHEMA_VERSION = MIGRATIONS[-1][0]


def now() -> datetime:
    return datetime.now(timezone.utc)


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_checksum(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def blob_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


@dataclass(frozen=True)
class DocumentRow:
    path: str
    file_hash: str | None
    size: int | None
    mtime_ns: int | None
    indexed_hash: str | None
    status: str
    error: str | None
    chunks: int
    encoding: str | None = None  # the text encoding the file was read with (text formats)


@dataclass(frozen=True)
class ChunkRow:
    point_id: str
    path: str
    seq: int
    content_hash: str
    occurrence: int
    section: str
    text: str
    tokens: int


class Manifest:
    """A KB's DuckDB manifest. Open with ``Manifest.open``; close when done."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, read_only: bool):
        self.path = path
        self.con: Any = _Connection(con, path)
        self.read_only = read_only

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
        empty = path.is_file() and path.stat().st_size == 0 and not _wal(path).exists()
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
                raise _translate(exc, path, writing=True) from exc
        try:
            con = duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            raise _translate(exc, path, writing=not read_only) from exc
        m = cls(path, con, read_only)
        try:
            if read_only:
                m._check_version()
            else:
                m._migrate()
                if kb is not None:
                    m._bind_kb(kb)
        except duckdb.Error as exc:
            con.close()
            raise _translate(exc, path, writing=not read_only) from exc
        except KbguardError:
            con.close()
            raise
        return m

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _applied(self) -> int:
        exists = self.con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migrations'"
        ).fetchone()[0]
        if not exists:
            return 0
        return self.con.execute("SELECT coalesce(max(version), 0) FROM migrations").fetchone()[0]

    def _check_version(self) -> None:
        applied = self._applied()
        if applied == 0:
            # migrations is created before the first migration runs: a file holding only that
            # (or nothing) is a first build killed before it wrote anything
            others = self.con.execute(
                "SELECT count(*) FROM information_schema.tables "
                "WHERE table_name <> 'migrations'").fetchone()[0]
            if others == 0:
                raise ManifestError(
                    f"{self.path} is an empty manifest: a first build was interrupted before it "
                    "wrote anything. Run `kbguard rebuild`.")
            raise ManifestError(f"{self.path} is not a kbguard manifest (no schema found). "
                                "Point manifest.path at the KB's manifest.")
        if applied > SCHEMA_VERSION:
            raise ManifestError(
                f"{self.path} has schema version {applied}, newer than this kbguard "
                f"understands ({SCHEMA_VERSION}). Upgrade kbguard."
            )
        if applied < SCHEMA_VERSION:
            raise ManifestError(
                f"{self.path} has schema version {applied}; run any writing command "
                "(e.g. `kbguard rebuild`) to migrate it."
            )

    def _migrate(self) -> None:
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, "
            "name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
        )
        applied = self._applied()
        if applied > SCHEMA_VERSION:
            raise ManifestError(
                f"{self.path} has schema version {applied}, newer than this kbguard "
                f"understands ({SCHEMA_VERSION}). Upgrade kbguard."
            )
        for version, name, sql in MIGRATIONS:
            if version <= applied:
                continue
            with self.transaction():
                self.con.execute(sql)
                self.con.execute("INSERT INTO migrations VALUES (?, ?, ?)", [version, name, now()])

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

    # -- primitives --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.con.execute(sql, list(params)).fetchone()[0]

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, kind: str) -> int:
        with self.transaction():
            return self.con.execute(
                "INSERT INTO runs (kind, started_at, status) VALUES (?, ?, 'running') "
                "RETURNING run_id",
                [kind, now()],
            ).fetchone()[0]

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any],
                   corpus_rev: str | None = None) -> None:
        with self.transaction():
            self.con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary = ?, corpus_rev = ? "
                "WHERE run_id = ?",
                # a failed run's error may quote the store URL: stored without credentials
                [now(), status, json.dumps(scrub_data(summary)), corpus_rev, run_id],
            )

    def last_run(self, kind: str | None = None, status: str | None = None) -> dict[str, Any] | None:
        """The newest run, optionally of a kind (a LIKE pattern) and status."""
        where, params = [], []
        if kind:
            where.append("kind LIKE ?")
            params.append(kind)
        if status:
            where.append("status = ?")
            params.append(status)
        sql = ("SELECT run_id, kind, started_at, finished_at, status, corpus_rev, summary FROM runs"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY run_id DESC LIMIT 1")
        row = self.con.execute(sql, params).fetchone()
        if row is None:
            return None
        keys = ("run_id", "kind", "started_at", "finished_at", "status", "corpus_rev", "summary")
        out = dict(zip(keys, row))
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    # -- documents -----------------------------------------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        rows = self.con.execute(
            "SELECT path, file_hash, size, mtime_ns, indexed_hash, status, error, chunks, "
            "encoding FROM documents"
        ).fetchall()
        return {r[0]: DocumentRow(*r) for r in rows}

    def record_document(self, doc: DocumentRow, chunks: Sequence[ChunkRow] | None) -> None:
        """Replace one document's row and, when ``chunks`` is given, its chunks. No transaction."""
        self.con.execute("DELETE FROM documents WHERE path = ?", [doc.path])
        self.con.execute(
            "INSERT INTO documents (path, file_hash, size, mtime_ns, indexed_hash, status, "
            "error, chunks, updated_at, encoding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [doc.path, doc.file_hash, doc.size, doc.mtime_ns, doc.indexed_hash, doc.status,
             doc.error, doc.chunks, now(), doc.encoding],
        )
        if chunks is not None:
            self.con.execute("DELETE FROM chunks WHERE path = ?", [doc.path])
            if chunks:
                self.con.executemany(
                    "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [[c.point_id, c.path, c.seq, c.content_hash, c.occurrence, c.section,
                      c.text, c.tokens] for c in chunks],
                )

    def forget_document(self, path: str) -> None:
        """Drop a removed document and its chunks. No transaction."""
        self.con.execute("DELETE FROM chunks WHERE path = ?", [path])
        self.con.execute("DELETE FROM documents WHERE path = ?", [path])

    # -- embedding cache ---------------------------------------------------------------------

    def cache_vectors(self, space_id: str, items: Sequence[tuple[str, np.ndarray]],
                      run_id: int | None, provider: str | None = None) -> None:
        """Add vectors to the cache (existing keys are replaced), made by ``provider``.
        No transaction."""
        if not items:
            return
        blobs = [vector_bytes(vec) for _, vec in items]
        # One Arrow batch, not executemany: DuckDB runs executemany row by row (~2.5 ms a row).
        batch = pa.table({
            "space_id": pa.array([space_id] * len(items), pa.string()),
            "content_hash": pa.array([h for h, _ in items], pa.string()),
            "vector": pa.array(blobs, pa.binary()),
            "checksum": pa.array([vector_checksum(b) for b in blobs], pa.string()),
            "created_at": pa.array([now()] * len(items), pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([run_id] * len(items), pa.int64()),
            "provider": pa.array([provider] * len(items), pa.string()),
        })
        self.con.register("_cache_batch", batch)
        try:
            self.con.execute("INSERT OR REPLACE INTO embeddings BY NAME SELECT * FROM _cache_batch")
        finally:
            self.con.unregister("_cache_batch")

    # -- counts for status -------------------------------------------------------------------

    def record_usage(self, run_id: int | None, kind: str, space: Any, provider: str,
                     usage: Any) -> None:
        """Add what one provider's calls for one space cost to the ledger. No transaction."""
        if not usage.texts and not usage.requests:
            return
        self.con.execute(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, kind, space.name, space.space_id, provider, usage.texts, usage.tokens,
             usage.requests, usage.seconds, usage.cost_usd, now()])

    def spend(self, since: datetime | None = None) -> dict[str, Any]:
        """Tokens and USD in the ledger (since ``since``), in total and by space."""
        where, args = ("WHERE recorded_at >= ?", [since]) if since else ("", [])
        rows = self.con.execute(
            f"SELECT space, sum(tokens), sum(cost_usd), sum(texts) FROM ledger {where} "
            "GROUP BY space ORDER BY space", args).fetchall()
        return {"tokens": int(sum(r[1] for r in rows)),
                "usd": round(float(sum(r[2] for r in rows)), 6),
                "by_space": {r[0]: {"tokens": int(r[1]), "usd": round(float(r[2]), 6),
                                    "texts": int(r[3])} for r in rows}}

    def chunks_lacking_vectors(self, space_id: str) -> int:
        """Chunks whose text has no cached vector in ``space_id``: the space's debt, which the
        next rebuild embeds (a space whose providers were down has some)."""
        return int(self.scalar(
            "SELECT count(*) FROM chunks WHERE content_hash NOT IN "
            "(SELECT content_hash FROM embeddings WHERE space_id = ?)", [space_id]))

    def counts(self) -> dict[str, int]:
        return {
            "documents": self.scalar("SELECT count(*) FROM documents WHERE status = 'ok'"),
            "failed_documents": self.scalar("SELECT count(*) FROM documents WHERE status = 'failed'"),
            "chunks": self.scalar("SELECT count(*) FROM chunks"),
            "cached_vectors": self.scalar("SELECT count(*) FROM embeddings"),
            "points_written": self.scalar("SELECT count(*) FROM store_state WHERE confirmed"),
            "points_pending": self.scalar("SELECT count(*) FROM store_state WHERE NOT confirmed"),
        }


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


class _Connection:
    """The manifest's DuckDB connection, with a full disk translated into DiskFullError.

    DuckDB reports a full disk from whichever statement happened to write (usually a COMMIT,
    which appends to the WAL, or a COPY into a snapshot), as an IO or transaction error. Every
    statement goes through here, so no caller has to recognise those. A COMMIT that failed has
    already rolled back: the ROLLBACK a caller's cleanup sends next is then a no-op, not a
    second error that would hide the first.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path):
        self._con = con
        self._path = path
        self._full = False

    def execute(self, query: str, parameters: Any = None) -> _Connection:
        try:
            if parameters is None:
                self._con.execute(query)
            else:
                self._con.execute(query, parameters)
        except duckdb.Error as exc:
            if self._full and query.strip().upper() == "ROLLBACK":
                return self
            full = self._disk_full(exc)
            if full is None:
                raise
            raise full from exc
        return self

    def executemany(self, query: str, parameters: Any = None) -> _Connection:
        try:
            self._con.executemany(query, parameters)
        except duckdb.Error as exc:
            full = self._disk_full(exc)
            if full is None:
                raise
            raise full from exc
        return self

    def cursor(self) -> _Connection:
        return _Connection(self._con.cursor(), self._path)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def _disk_full(self, exc: duckdb.Error) -> KbguardError | None:
        if not is_disk_full(exc):
            return None
        self._full = True
        target = file_in_message(exc) or self._path
        manifest = target.name.startswith(self._path.name) and target.parent == self._path.parent
        return disk_full(target, f"write the manifest {self._path}" if manifest
                         else f"write {target}")


def require_writable(path: Path) -> None:
    """Raise ManifestReadOnly if the manifest at ``path`` (or the folder for a new one) cannot
    be written; a command that will write it checks this before it starts its work."""
    reason = not_writable(path)
    if reason is not None:
        raise ManifestReadOnly(_read_only_message(path, reason))


def _read_only_message(path: Path, reason: str) -> str:
    return (f"The manifest {path} cannot be written: {reason}. What it holds is fine, and the "
            "commands that only read it still work: `kbguard status`, `kbguard search` and "
            "`kbguard verify` (which then cannot record its check). To rebuild, repair, take a "
            "snapshot or restore, make it writable again (remount the filesystem read-write, "
            "`chattr -i`, fix the permissions) and run the command again.")


def _translate(exc: Exception, path: Path, *, writing: bool) -> KbguardError:
    text = str(exc)
    if is_disk_full(exc):
        return disk_full(file_in_message(exc) or path, f"write the manifest {path}")
    if is_read_only_error(exc):
        reason = not_writable(path) if writing else None
        if reason is not None:
            return ManifestReadOnly(_read_only_message(path, reason))
        first = text.splitlines()[0] if text else repr(exc)
        return ManifestError(
            f"The manifest {path} cannot be opened: {first}. Nothing suggests it is damaged: "
            "check the permissions of the file and its folder, and run the command again.")
    if "lock" in text.lower():
        return ManifestError(
            f"The manifest {path} is in use by another process ({text.splitlines()[0]}). "
            "Wait for the running kbguard command to finish."
        )
    return ManifestError(
        f"The manifest {path} cannot be read: {text.splitlines()[0] if text else exc!r}. "
        "Restore it with `kbguard restore --latest`, or move it aside and run "
        "`kbguard rebuild` to build a new one."
    )
