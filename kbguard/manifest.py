"""The manifest: one DuckDB file per KB, the record of what the KB should contain.

Documents, chunks (with their text), the embedding cache and the store state live here. Every
pipeline batch is one transaction, so a run killed at any moment leaves a manifest that the next
run continues from.

Callers use methods named for what they do, not SQL. The store's write protocol lives here too
(``write_points``, ``delete_points``), so every command writes points the same way. A DuckDB
error from a method is a ``ManifestError`` that names the file and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from kbguard.core.disk import disk_full, file_in_message, is_disk_full, is_read_only_error, not_writable
from kbguard.errors import KbguardError, LockedError, ManifestError, ManifestReadOnly
from kbguard.core.faults import crash_point
from kbguard.core.lock import lock_holder, locked_error
from kbguard.migrations import MIGRATIONS
from kbguard.core.redact import scrub_data
from kbguard.store.base import Point, Store

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
        self.read_only = read_only
        # Every method goes through _db. Until open() has checked the file, its errors stay
        # DuckDB's: open() translates them knowing whether it opened to read or to write.
        self._db = _Connection(con, path, translate_all=False)
        # Raw SQL for kbguard.integrity.verify until its queries move behind methods here: it tells a
        # manifest it cannot read from one it can by catching duckdb.Error itself.
        self.con: Any = _Connection(con, path, translate_all=False)

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
            con = _connect(path, read_only)
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

    def _applied(self) -> int:
        exists = self._db.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migrations'"
        ).fetchone()[0]
        if not exists:
            return 0
        return self._db.execute("SELECT coalesce(max(version), 0) FROM migrations").fetchone()[0]

    def _check_version(self) -> None:
        applied = self._applied()
        if applied == 0:
            # migrations is created before the first migration runs: a file holding only that
            # (or nothing) is a first build killed before it wrote anything
            others = self._db.execute(
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
        self._db.execute(
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
                self._db.execute(sql)
                self._db.execute("INSERT INTO migrations VALUES (?, ?, ?)", [version, name, now()])

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
        self._db.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """The first value of raw ``sql``; raises DuckDB's own errors, as ``con`` does (for
        kbguard.integrity.verify, see ``__init__``)."""
        return self.con.execute(sql, list(params)).fetchone()[0]

    def checkpoint(self) -> None:
        """Move everything from the WAL into the database file itself."""
        self._db.execute("CHECKPOINT")

    def _count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._db.execute(sql, list(params)).fetchone()[0])

    def _insert_batch(self, sql: str, batch: pa.Table, params: Sequence[Any] = ()) -> None:
        """Run ``sql``, which reads ``batch`` as the table ``_batch``: one statement for the
        whole batch, where executemany would run row by row (~0.5 ms a row)."""
        self._db.register("_batch", batch)
        # Not in a finally: a failed statement aborts the transaction, which then refuses even
        # the unregister, and that error would hide the real one. The next register replaces
        # a view left behind.
        self._db.execute(sql, list(params))
        self._db.unregister("_batch")

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, kind: str) -> int:
        with self.transaction():
            return self._db.execute(
                "INSERT INTO runs (kind, started_at, status) VALUES (?, ?, 'running') "
                "RETURNING run_id",
                [kind, now()],
            ).fetchone()[0]

    def finish_run(self, run_id: int, status: str, summary: dict[str, Any],
                   corpus_rev: str | None = None) -> None:
        with self.transaction():
            self._db.execute(
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
        row = self._db.execute(sql, params).fetchone()
        if row is None:
            return None
        keys = ("run_id", "kind", "started_at", "finished_at", "status", "corpus_rev", "summary")
        out = dict(zip(keys, row, strict=True))
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    # -- documents and chunks ------------------------------------------------------------------

    def documents(self) -> dict[str, DocumentRow]:
        rows = self._db.execute(
            "SELECT path, file_hash, size, mtime_ns, indexed_hash, status, error, chunks, "
            "encoding FROM documents"
        ).fetchall()
        return {r[0]: DocumentRow(*r) for r in rows}

    def record_document(self, doc: DocumentRow, chunks: Sequence[ChunkRow] | None) -> None:
        """Replace one document's row and, when ``chunks`` is given, its chunks. No transaction."""
        self._db.execute("DELETE FROM documents WHERE path = ?", [doc.path])
        self._db.execute(
            "INSERT INTO documents (path, file_hash, size, mtime_ns, indexed_hash, status, "
            "error, chunks, updated_at, encoding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [doc.path, doc.file_hash, doc.size, doc.mtime_ns, doc.indexed_hash, doc.status,
             doc.error, doc.chunks, now(), doc.encoding],
        )
        if chunks is not None:
            self._db.execute("DELETE FROM chunks WHERE path = ?", [doc.path])
            if chunks:
                self._insert_batch("INSERT INTO chunks BY NAME SELECT * FROM _batch", pa.table({
                    "point_id": pa.array([c.point_id for c in chunks], pa.string()),
                    "path": pa.array([c.path for c in chunks], pa.string()),
                    "seq": pa.array([c.seq for c in chunks], pa.int32()),
                    "content_hash": pa.array([c.content_hash for c in chunks], pa.string()),
                    "occurrence": pa.array([c.occurrence for c in chunks], pa.int32()),
                    "section": pa.array([c.section for c in chunks], pa.string()),
                    "text": pa.array([c.text for c in chunks], pa.string()),
                    "tokens": pa.array([c.tokens for c in chunks], pa.int32()),
                }))

    def refresh_stats(self, files: Sequence[tuple[str, int | None, int | None, str | None]]
                      ) -> None:
        """Record a new (size, mtime_ns, file_hash) for documents whose content is unchanged:
        ``files`` holds (path, size, mtime_ns, file_hash). No transaction."""
        if files:
            self._db.executemany(
                "UPDATE documents SET size = ?, mtime_ns = ?, file_hash = ? WHERE path = ?",
                [[size, mtime_ns, file_hash, path] for path, size, mtime_ns, file_hash in files])

    def forget_document(self, path: str) -> None:
        """Drop a removed document and its chunks. No transaction."""
        self._db.execute("DELETE FROM chunks WHERE path = ?", [path])
        self._db.execute("DELETE FROM documents WHERE path = ?", [path])

    def failed_documents(self) -> list[tuple[str, str | None]]:
        """(path, error) of every document that failed to parse, by path."""
        return [(p, e) for p, e in self._db.execute(
            "SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path").fetchall()]

    def encoding_counts(self) -> dict[str, int]:
        """Documents per text encoding they were read with, most used first (PDF and DOCX
        have none)."""
        return dict(self._db.execute(
            "SELECT encoding, count(*) FROM documents WHERE encoding IS NOT NULL "
            "GROUP BY encoding ORDER BY count(*) DESC, encoding").fetchall())

    def chunk_count(self) -> int:
        return self._count("SELECT count(*) FROM chunks")

    def point_ids(self) -> list[str]:
        """The id of every point the chunks want."""
        return [r[0] for r in self._db.execute("SELECT point_id FROM chunks").fetchall()]

    def point_ids_with_hashes(self, hashes: Sequence[str]) -> list[str]:
        """The ids of the points whose text has one of ``hashes``."""
        return [r[0] for r in self._db.execute(
            "SELECT point_id FROM chunks WHERE content_hash IN (SELECT unnest(?::VARCHAR[]))",
            [list(hashes)]).fetchall()]

    def chunk_texts(self, hashes: Sequence[str]) -> dict[str, str]:
        """content_hash -> text, for those of ``hashes`` some chunk still has."""
        return dict(self._db.execute(
            "SELECT content_hash, min(text) FROM chunks WHERE content_hash IN "
            "(SELECT unnest(?::VARCHAR[])) GROUP BY 1", [list(hashes)]).fetchall())

    def chunks_of_points(self, ids: Sequence[str]
                         ) -> list[tuple[str, str, str, int, str, str]]:
        """(point_id, path, content_hash, occurrence, section, text) of the chunks behind
        ``ids``."""
        return self._db.execute(
            "SELECT point_id, path, content_hash, occurrence, section, text FROM chunks "
            "WHERE point_id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]).fetchall()

    # -- embedding cache ---------------------------------------------------------------------

    def cache_vectors(self, space_id: str, items: Sequence[tuple[str, np.ndarray]],
                      run_id: int | None, provider: str | None = None) -> None:
        """Add vectors to the cache (existing keys are replaced), made by ``provider``.
        No transaction."""
        if not items:
            return
        blobs = [vector_bytes(vec) for _, vec in items]
        self._insert_batch("INSERT OR REPLACE INTO embeddings BY NAME SELECT * FROM _batch", pa.table({
            "space_id": pa.array([space_id] * len(items), pa.string()),
            "content_hash": pa.array([h for h, _ in items], pa.string()),
            "vector": pa.array(blobs, pa.binary()),
            "checksum": pa.array([vector_checksum(b) for b in blobs], pa.string()),
            "created_at": pa.array([now()] * len(items), pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([run_id] * len(items), pa.int64()),
            "provider": pa.array([provider] * len(items), pa.string()),
        }))

    def cached_vectors(self, space_id: str, hashes: Sequence[str]
                       ) -> list[tuple[str, np.ndarray, int | None]]:
        """(content_hash, vector, run that embedded it) of those of ``hashes`` the cache holds
        in ``space_id``."""
        return [(h, blob_vector(blob), run_id) for h, blob, run_id in self._db.execute(
            "SELECT content_hash, vector, run_id FROM embeddings "
            "WHERE space_id = ? AND content_hash IN (SELECT unnest(?::VARCHAR[]))",
            [space_id, list(hashes)]).fetchall()]

    def drop_cached_vectors(self, space_id: str, hashes: Sequence[str]) -> None:
        """Delete cache rows of ``space_id``; one statement, so no transaction is needed."""
        self._db.execute("DELETE FROM embeddings WHERE space_id = ? AND content_hash IN "
                         "(SELECT unnest(?::VARCHAR[]))", [space_id, list(hashes)])

    def cached_hashes_in_use(self, space_id: str) -> list[str]:
        """The content hashes cached in ``space_id`` that some chunk uses, sorted."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT e.content_hash FROM embeddings e JOIN chunks c USING (content_hash) "
            "WHERE e.space_id = ? ORDER BY 1", [space_id]).fetchall()]

    def cached_bytes(self, space_id: str, content_hash: str) -> bytes | None:
        """The raw float32 bytes of one cached vector, as stored."""
        row = self._db.execute(
            "SELECT vector FROM embeddings WHERE space_id = ? AND content_hash = ?",
            [space_id, content_hash]).fetchone()
        return bytes(row[0]) if row else None

    def overwrite_cached_bytes(self, space_id: str, content_hash: str, blob: bytes) -> None:
        """Replace one cached vector's bytes and keep its checksum, which then fails: damage on
        purpose, for `kbguard chaos`. No transaction."""
        self._db.execute("UPDATE embeddings SET vector = ? WHERE space_id = ? AND "
                         "content_hash = ?", [blob, space_id, content_hash])

    def export_cache_since(self, since: datetime, path: Path, *,
                           except_paths: Sequence[str] = ()) -> int:
        """Write the cache rows made from ``since`` on that chunks of documents other than
        ``except_paths`` use to the Parquet file ``path`` (no file when there are none); returns
        how many. What a drill carries from one scratch copy of a KB to the next, so that no
        drill of a run embeds a text another one embedded."""
        where = (f"created_at >= {_literal(since.isoformat())}::TIMESTAMPTZ AND content_hash IN "
                 "(SELECT content_hash FROM chunks WHERE path NOT IN "
                 f"(SELECT unnest([{', '.join(map(_literal, except_paths))}]::VARCHAR[])))")
        n = self._count(f"SELECT count(*) FROM embeddings WHERE {where}")
        if n:
            self._db.execute(f"COPY (SELECT * FROM embeddings WHERE {where}) TO "
                             f"{_literal(str(path))} (FORMAT parquet, COMPRESSION snappy)")
        return n

    def import_cache(self, files: Sequence[Path]) -> int:
        """Add the rows of the Parquet files ``export_cache_since`` wrote that this cache lacks
        (its own rows win); no run of this manifest made them. Returns how many were added."""
        if not files:
            return 0
        sources = "[" + ", ".join(_literal(str(f)) for f in files) + "]"
        with self.transaction():
            before = self._count("SELECT count(*) FROM embeddings")
            self._db.execute(
                "INSERT OR IGNORE INTO embeddings BY NAME SELECT DISTINCT ON (space_id, "
                f"content_hash) * REPLACE (NULL::BIGINT AS run_id) FROM read_parquet({sources})")
            return self._count("SELECT count(*) FROM embeddings") - before

    # -- what a rebuild has to do -------------------------------------------------------------

    def fill_embed_todo(self, space_id: str) -> int:
        """List in the temporary table embed_todo every text whose vector in ``space_id`` the
        cache lacks, shortest first; return how many. ``embed_todo_batches`` reads them."""
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE embed_todo AS "
            # by length: a batch of similar lengths pads little (MiniLM, 640 Django chunks:
            # 26.7 texts/s against 17.6-20.7 in hash order)
            "SELECT row_number() OVER (ORDER BY length(text), content_hash) AS rn, "
            "content_hash, text FROM ("
            "  SELECT content_hash, min(text) AS text FROM chunks "
            "  WHERE content_hash NOT IN "
            "    (SELECT content_hash FROM embeddings WHERE space_id = ?) "
            "  GROUP BY content_hash)",
            [space_id],
        )
        return self._count("SELECT count(*) FROM embed_todo")

    def embed_todo_batches(self, size: int) -> Iterator[list[tuple[str, str]]]:
        """embed_todo in batches of (content_hash, text); the table is dropped after the last."""
        yield from self._todo_batches(
            "SELECT content_hash, text FROM embed_todo WHERE rn >= ? AND rn < ? ORDER BY rn",
            "embed_todo", size)

    def fill_upsert_todo(self, vectors: str) -> int:
        """List in the temporary table upsert_todo every chunk whose point the store state does
        not confirm as written with ``vectors`` (comma-joined names), in document order; return
        how many. ``upsert_todo_batches`` reads them."""
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE upsert_todo AS "
            "SELECT row_number() OVER (ORDER BY c.path, c.seq) AS rn, c.* FROM chunks c "
            "WHERE c.point_id NOT IN "
            "  (SELECT point_id FROM store_state WHERE confirmed AND vectors = ?)",
            [vectors],
        )
        return self._count("SELECT count(*) FROM upsert_todo")

    def upsert_todo_batches(self, size: int
                            ) -> Iterator[list[tuple[str, str, int, str, int, str, str]]]:
        """upsert_todo in batches of (point_id, path, seq, content_hash, occurrence, section,
        text); the table is dropped after the last."""
        yield from self._todo_batches(
            "SELECT point_id, path, seq, content_hash, occurrence, section, text "
            "FROM upsert_todo WHERE rn >= ? AND rn < ? ORDER BY rn", "upsert_todo", size)

    def _todo_batches(self, sql: str, table: str, size: int) -> Iterator[list[Any]]:
        n = self._count(f"SELECT count(*) FROM {table}")
        for lo in range(1, n + 1, size):
            yield self._db.execute(sql, [lo, lo + size]).fetchall()
        # not in a finally: a batch loop left by an error keeps the table, which the next
        # fill replaces, rather than dropping it whenever the generator is collected
        self._db.execute(f"DROP TABLE {table}")

    # -- the store state ---------------------------------------------------------------------

    def write_points(self, store: Store, points: Sequence[tuple[Point, str, str]],
                     vectors: str) -> None:
        """Write one batch of points to ``store`` so that no point is ever there unrecorded.

        ``points`` holds (point, document path, content hash); ``vectors`` the comma-joined
        names of the vectors each carries. Each point's state row is recorded pending, the store
        writes and flushes the points, and only then are the rows confirmed: a process killed
        in between leaves pending rows, which the next rebuild writes again.
        """
        if not points:
            return
        ids = [p.id for p, _, _ in points]
        with self.transaction():
            self._db.execute("DELETE FROM store_state WHERE point_id IN "
                             "(SELECT unnest(?::VARCHAR[]))", [ids])
            self._insert_batch(
                "INSERT INTO store_state SELECT point_id, path, content_hash, ?, false, "
                "?::TIMESTAMPTZ FROM _batch",
                pa.table({"point_id": pa.array(ids, pa.string()),
                          "path": pa.array([path for _, path, _ in points], pa.string()),
                          "content_hash": pa.array([h for _, _, h in points], pa.string())}),
                [vectors, now()])
        store.upsert([p for p, _, _ in points])
        store.flush()
        crash_point("store-upsert")
        with self.transaction():
            self._db.execute("UPDATE store_state SET confirmed = true WHERE point_id IN "
                             "(SELECT unnest(?::VARCHAR[]))", [ids])

    def delete_points(self, store: Store, ids: Sequence[str], *, batch_size: int) -> None:
        """Delete points from ``store``, then forget their state rows, ``batch_size`` at a time:
        the store is flushed before a row goes, so a killed run leaves rows the next run deletes
        again, never a point nobody knows about."""
        for lo in range(0, len(ids), batch_size):
            batch = list(ids[lo:lo + batch_size])
            store.delete(batch)
            store.flush()
            crash_point("store-delete")
            with self.transaction():
                self._db.execute("DELETE FROM store_state WHERE point_id IN "
                                 "(SELECT unnest(?::VARCHAR[]))", [batch])

    def unconfirm_all_points(self) -> None:
        """Mark every point as not written, for a store that was dropped or is missing: the next
        ``fill_upsert_todo`` then lists every chunk."""
        with self.transaction():
            self._db.execute("UPDATE store_state SET confirmed = false")

    def confirmed_point_count(self) -> int:
        return self._count("SELECT count(*) FROM store_state WHERE confirmed")

    def pending_point_count(self) -> int:
        """State rows recorded before a write that was never confirmed."""
        return self._count("SELECT count(*) FROM store_state WHERE NOT confirmed")

    def unwritten_chunk_count(self) -> int:
        """Chunks whose point the store state does not confirm as written."""
        return self._count("SELECT count(*) FROM chunks WHERE point_id NOT IN "
                           "(SELECT point_id FROM store_state WHERE confirmed)")

    def unwanted_point_ids(self) -> list[str]:
        """Points the store state knows and no chunk wants any more."""
        return [r[0] for r in self._db.execute(
            "SELECT point_id FROM store_state WHERE point_id NOT IN (SELECT point_id FROM chunks)"
        ).fetchall()]

    # -- snapshots and restores --------------------------------------------------------------

    def row_counts(self, tables: Sequence[str]) -> dict[str, int]:
        """Rows in each of ``tables`` (documents, chunks, embeddings, store_state)."""
        return {t: self._count(f"SELECT count(*) FROM {_table(t)}") for t in tables}

    def export_table(self, table: str, path: Path) -> None:
        """Write ``table`` to the Parquet file ``path``, in key order: zstd, but snappy for the
        embedding cache, whose float32 vectors zstd barely shrinks at twice the time (100k
        384-d vectors: 1.0 s against 0.5 s)."""
        order = {"documents": "path", "chunks": "path, seq",
                 "embeddings": "space_id, content_hash"}[table]
        codec = "snappy" if table == "embeddings" else "zstd"
        self._db.execute(f"COPY (SELECT * FROM {_table(table)} ORDER BY {order}) TO "
                         f"{_literal(str(path))} (FORMAT parquet, COMPRESSION {codec})")

    def import_tables(self, files: Mapping[str, Path]) -> None:
        """Load tables from Parquet files (table -> file, as ``export_table`` wrote them) in one
        transaction, on a connection of its own: safe to run in a thread while this one works."""
        con = self._db.cursor()
        try:
            con.execute("BEGIN TRANSACTION")
            for table, path in files.items():
                con.execute(f"INSERT INTO {_table(table)} BY NAME "
                            f"SELECT * FROM read_parquet({_literal(str(path))})")
            con.execute("COMMIT")
        finally:
            con.close()

    def record_restored_points(self, points_file: Path, vector_columns: Mapping[str, str]
                               ) -> None:
        """State rows, all written and confirmed, for the points of a snapshot's points file:
        ``vector_columns`` maps each vector name to its column there (null where a point lacks
        it). One statement in DuckDB instead of rows built in Python; own transaction."""
        present = ", ".join(f"CASE WHEN {_identifier(column)} IS NOT NULL THEN {_literal(name)} "
                            "END" for name, column in sorted(vector_columns.items()))
        with self.transaction():
            self._db.execute(
                "INSERT INTO store_state SELECT id, coalesce(payload::JSON->>'path', ''), "
                "coalesce(payload::JSON->>'content_hash', ''), "
                f"concat_ws(',', {present}), true, now() "
                f"FROM read_parquet({_literal(str(points_file))})")

    # -- counts for status -------------------------------------------------------------------

    def record_usage(self, run_id: int | None, kind: str, space: Any, provider: str,
                     usage: Any) -> None:
        """Add what one provider's calls for one space cost to the ledger. No transaction."""
        if not usage.texts and not usage.requests:
            return
        self._db.execute(
            "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, kind, space.name, space.space_id, provider, usage.texts, usage.tokens,
             usage.requests, usage.seconds, usage.cost_usd, now()])

    def spend(self, since: datetime | None = None) -> dict[str, Any]:
        """Tokens and USD in the ledger (since ``since``), in total and by space."""
        where, args = ("WHERE recorded_at >= ?", [since]) if since else ("", [])
        rows = self._db.execute(
            f"SELECT space, sum(tokens), sum(cost_usd), sum(texts) FROM ledger {where} "
            "GROUP BY space ORDER BY space", args).fetchall()
        return {"tokens": int(sum(r[1] for r in rows)),
                "usd": round(float(sum(r[2] for r in rows)), 6),
                "by_space": {r[0]: {"tokens": int(r[1]), "usd": round(float(r[2]), 6),
                                    "texts": int(r[3])} for r in rows}}

    # -- estimates: what a rebuild would do, read without writing (temporary tables only) ----

    def stage_future_chunks(self, replaced: Sequence[str],
                            new: Sequence[tuple[str, str, str]]) -> None:
        """The temporary table future_chunks: the chunks as they will be after a rebuild that
        replaces the chunks of the documents ``replaced`` with ``new`` (point_id, content_hash,
        text). A read-only manifest allows this: temporary tables live in memory."""
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE future_chunks AS SELECT point_id, content_hash, text "
            "FROM chunks WHERE path NOT IN (SELECT unnest(?::VARCHAR[]))", [list(replaced)])
        if new:
            cols = list(zip(*new, strict=True))
            self._insert_batch("INSERT INTO future_chunks SELECT * FROM _batch", pa.table(
                {"point_id": cols[0], "content_hash": cols[1], "text": cols[2]}))

    def future_texts(self, space_id: str | None = None, cache: Path | None = None
                     ) -> list[tuple[str, str]]:
        """(content_hash, text) of each distinct text of future_chunks: all of them, or those
        the embedding cache lacks in ``space_id`` (``cache``: a snapshot's embeddings.parquet
        instead of this manifest's cache)."""
        if space_id is None:
            return self._db.execute("SELECT content_hash, min(text) FROM future_chunks "
                                    "GROUP BY content_hash ORDER BY content_hash").fetchall()
        source = f"read_parquet({_literal(str(cache))})" if cache else "embeddings"
        return self._db.execute(
            "SELECT content_hash, min(text) FROM future_chunks WHERE content_hash NOT IN "
            f"(SELECT content_hash FROM {source} WHERE space_id = ?) "
            "GROUP BY content_hash ORDER BY content_hash", [space_id]).fetchall()

    def future_point_count(self) -> int:
        """Points in future_chunks: what a store written from scratch holds."""
        return self._count("SELECT count(*) FROM future_chunks")

    def future_store_work(self, vectors: str, points: Path | None = None) -> tuple[int, int]:
        """(points to write, points to delete) for the store to hold future_chunks with the
        vectors ``vectors`` (comma-joined names), from this store state, or from a snapshot's
        ``points`` file (what a restore of it confirms)."""
        if points is None:
            held = ("SELECT point_id FROM store_state WHERE confirmed AND vectors = ?", [vectors])
            known = "SELECT point_id FROM store_state"
        else:
            known = f"SELECT id AS point_id FROM read_parquet({_literal(str(points))})"
            held = (known, [])
        write = self._count(
            f"SELECT count(*) FROM future_chunks WHERE point_id NOT IN ({held[0]})", held[1])
        delete = self._count(f"SELECT count(DISTINCT point_id) FROM ({known}) WHERE point_id "
                             "NOT IN (SELECT point_id FROM future_chunks)")
        return write, delete

    def recent_runs(self, kinds: Sequence[str], limit: int = 20) -> list[dict[str, Any]]:
        """The newest successful runs of ``kinds``, newest first, with their summaries."""
        rows = self._db.execute(
            "SELECT run_id, kind, started_at, finished_at, summary FROM runs WHERE status = 'ok' "
            "AND kind IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id DESC LIMIT ?",
            [list(kinds), limit]).fetchall()
        return [{"run_id": r[0], "kind": r[1], "started_at": r[2], "finished_at": r[3],
                 "summary": json.loads(r[4]) if r[4] else {}} for r in rows]

    def embed_history(self, limit: int = 2000) -> list[dict[str, Any]]:
        """The newest ledger rows (one per embedding call of a run), newest first: the measured
        throughput of each space's providers on this machine."""
        rows = self._db.execute(
            "SELECT run_id, kind, space_id, provider, texts, tokens, requests, seconds, "
            "cost_usd, recorded_at FROM ledger ORDER BY recorded_at DESC LIMIT ?",
            [limit]).fetchall()
        keys = ("run_id", "kind", "space_id", "provider", "texts", "tokens", "requests",
                "seconds", "cost_usd", "recorded_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # -- history -----------------------------------------------------------------------------

    def import_history(self, other: Path) -> str | None:
        """Copy the history of the manifest at ``other`` (runs, verify findings, the ledger,
        drills) into this one, which must have none yet: a restored manifest keeps the record
        of what happened to the KB. Returns why nothing was copied, or None."""
        if not other.is_file():
            return "no live manifest to keep the history of"
        try:
            self._db.execute(f"ATTACH {_literal(str(other))} AS live (READ_ONLY)")
        except (duckdb.Error, KbguardError) as exc:
            return f"the live manifest could not be read ({exc})"
        try:
            with self.transaction():
                for table in HISTORY_TABLES:
                    cols = [r[0] for r in self._db.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE database_name = "
                        "current_database() AND table_name = ? ORDER BY column_index",
                        [table]).fetchall()]
                    have = {r[0] for r in self._db.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE database_name = 'live' "
                        "AND table_name = ?", [table]).fetchall()}
                    shared = ", ".join(_identifier(c) for c in cols if c in have)
                    if shared:
                        self._db.execute(f"INSERT INTO {table} ({shared}) "
                                         f"SELECT {shared} FROM live.{table}")
                # the sequences must continue after the ids just copied
                for seq, table, key in (("run_ids", "runs", "run_id"),
                                        ("drill_ids", "drills", "drill_id")):
                    top = self._count(f"SELECT coalesce(max({key}), 0) FROM {table}")
                    if top:
                        self._db.execute(f"SELECT max(nextval('{seq}')) FROM range(?)", [top])
        except (duckdb.Error, KbguardError) as exc:
            return f"the live manifest's history could not be copied ({exc})"
        finally:
            self._db.execute("DETACH live")
        return None

    def usage_since(self, since: datetime) -> dict[str, Any]:
        """Requests, texts, tokens and USD the ledger holds from ``since`` on, all runs and
        spaces together: what a stretch of commands (a drill's) cost in embedding."""
        row = self._db.execute(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(texts), 0), "
            "coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0) FROM ledger "
            "WHERE recorded_at >= ?", [since]).fetchone()
        return {"requests": int(row[0]), "texts": int(row[1]), "tokens": int(row[2]),
                "cost_usd": round(float(row[3]), 6)}

    # -- drills ------------------------------------------------------------------------------

    def record_drill(self, drill: Mapping[str, Any]) -> int:
        """Add one drill's outcome (the keys are the ``drills`` columns but ``drill_id``)."""
        row = {**drill, "steps": json.dumps(scrub_data(drill.get("steps") or []))}
        cols = [c for c in _DRILL_COLUMNS if c in row]
        with self.transaction():
            return int(self._db.execute(
                f"INSERT INTO drills ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                "RETURNING drill_id", [row[c] for c in cols]).fetchone()[0])

    def drill_history(self, scenario: str | None = None) -> list[dict[str, Any]]:
        """Every recorded drill, oldest first (of one scenario, if given)."""
        where, args = ("WHERE scenario = ?", [scenario]) if scenario else ("", [])
        cur = self._db.execute(
            f"SELECT drill_id, {', '.join(_DRILL_COLUMNS)} FROM drills {where} "
            "ORDER BY started_at, drill_id", args)
        keys = ["drill_id", *_DRILL_COLUMNS]
        out = []
        for values in cur.fetchall():
            row = dict(zip(keys, values, strict=True))
            row["steps"] = json.loads(row["steps"]) if row["steps"] else []
            out.append(row)
        return out

    def chunks_lacking_vectors(self, space_id: str) -> int:
        """Chunks whose text has no cached vector in ``space_id`` (a space whose providers
        were down has some): what its coverage misses."""
        return self.space_debt(space_id)[0]

    def space_debt(self, space_id: str) -> tuple[int, int]:
        """(chunks, distinct texts) with no cached vector in ``space_id``. The texts are the
        space's debt: exactly what the next rebuild embeds for it. Derived from the tables,
        so it can never disagree with them."""
        row = self._db.execute(
            "SELECT count(*), count(DISTINCT content_hash) FROM chunks WHERE content_hash NOT IN "
            "(SELECT content_hash FROM embeddings WHERE space_id = ?)", [space_id]).fetchone()
        return int(row[0]), int(row[1])

    def points_lacking_vector(self, name: str) -> int:
        """Points recorded in the store (written, or being written) that carry no vector
        ``name``: what a space misses in the store as it is while a rebuild writes it."""
        return self._count("SELECT count(*) FROM store_state "
                           "WHERE NOT list_contains(string_split(vectors, ','), ?)", [name])

    def counts(self) -> dict[str, int]:
        return {
            "documents": self._count("SELECT count(*) FROM documents WHERE status = 'ok'"),
            "failed_documents": self._count(
                "SELECT count(*) FROM documents WHERE status = 'failed'"),
            "chunks": self.chunk_count(),
            "cached_vectors": self._count("SELECT count(*) FROM embeddings"),
            "points_written": self.confirmed_point_count(),
            "points_pending": self.pending_point_count(),
        }

    # -- history for the report -------------------------------------------------------------

    # -- the store's points as the manifest records them (snapshots of an Edge store) --------

    def unrecorded_points(self, names: Sequence[str]) -> str | None:
        """Why the store state cannot say exactly which points the store holds and what each
        carries (pending writes, a point no chunk describes, a vector of another space, a
        point recorded twice); None when it can. ``names`` are the store's vector names."""
        con = self._db.cursor()  # the snapshot's tables are exported on this one meanwhile
        try:
            row = con.execute(
                "SELECT (SELECT count(*) FROM store_state WHERE NOT confirmed), "
                "(SELECT count(*) FROM store_state s WHERE NOT EXISTS "
                "  (SELECT 1 FROM chunks c WHERE c.point_id = s.point_id)), "
                "(SELECT count(*) - count(DISTINCT point_id) FROM store_state), "
                "(SELECT count(*) - count(DISTINCT point_id) FROM chunks), "
                "(SELECT count(*) FROM store_state, unnest(string_split(vectors, ',')) t(name) "
                "  WHERE NOT list_contains(?::VARCHAR[], name))", [list(names)]).fetchone()
        finally:
            con.close()
        pending, undescribed, twice, chunk_twice, foreign = (int(v) for v in row)
        if pending:
            return f"{pending} point writes are not confirmed"
        if undescribed:
            return f"{undescribed} points in the store state have no chunk"
        if twice or chunk_twice:
            return "a point is recorded twice"
        if foreign:
            return f"{foreign} recorded vectors are of no space the store has"
        return None

    def recorded_points(self, kb: str, spaces: Sequence[tuple[str, str]], batch_size: int
                        ) -> Iterator[pa.RecordBatch]:
        """Every confirmed point, as its payload and cached vectors make it, on a connection of
        its own: ``id``, ``payload`` (JSON) and, for the i-th (vector name, space id) of
        ``spaces``, ``named{i}`` (the point was written with it), ``vector{i}`` and
        ``checksum{i}`` (its cache row's, null where there is none)."""
        cols, joins, args = [], [], []
        for i, (name, _) in enumerate(spaces):
            cols.append(f"list_contains(string_split(s.vectors, ','), ?) AS named{i}, "
                        f"e{i}.vector AS vector{i}, e{i}.checksum AS checksum{i}")
            args.append(name)
            joins.append(f"LEFT JOIN embeddings e{i} ON e{i}.space_id = ? "
                         f"AND e{i}.content_hash = c.content_hash")
        query = ("SELECT c.point_id AS id, json_object('content_hash', c.content_hash, "
                 "'kb', ?, 'occurrence', c.occurrence, 'path', c.path, 'section', c.section, "
                 f"'text', c.text) AS payload, {', '.join(cols)} FROM store_state s "
                 f"JOIN chunks c ON c.point_id = s.point_id {' '.join(joins)} "
                 "WHERE s.confirmed")
        con = self._db.cursor()
        try:
            # a relation streams to Arrow without the extra copy a DB-API result makes
            yield from con.sql(query, params=[kb, *args, *(sid for _, sid in spaces)]
                               ).to_arrow_reader(batch_size)
        except duckdb.Error as exc:
            raise _statement_error(exc, self.path, query) from exc
        finally:
            con.close()


    def check_history(self) -> list[dict[str, Any]]:
        """Every finished check (runs of kind verify*), oldest first: run_id, kind, started_at,
        status, points_checked and ``findings``, the count of every finding class recorded."""
        rows = self._db.execute(
            "SELECT r.run_id, r.kind, r.started_at, r.status, r.summary->>'points_checked', "
            "f.finding, f.count FROM runs r LEFT JOIN findings f USING (run_id) "
            "WHERE r.kind LIKE 'verify%' AND r.status <> 'running' "
            "ORDER BY r.started_at, r.run_id, f.finding").fetchall()
        out: dict[int, dict[str, Any]] = {}
        for run_id, kind, started_at, status, points, finding, count in rows:
            check = out.setdefault(run_id, {
                "run_id": run_id, "kind": kind, "started_at": started_at, "status": status,
                "points_checked": int(points) if points is not None else None, "findings": {}})
            if finding is not None:
                check["findings"][finding] = int(count)
        return list(out.values())

    def monthly_spend(self) -> list[dict[str, Any]]:
        """The ledger summed by calendar month (UTC, ``YYYY-MM``), space and provider."""
        rows = self._db.execute(
            "SELECT strftime(timezone('UTC', recorded_at), '%Y-%m') AS month, space, provider, "
            "sum(texts), sum(tokens), sum(requests), sum(cost_usd) FROM ledger "
            "GROUP BY ALL ORDER BY month, space, provider").fetchall()
        return [{"month": m, "space": s, "provider": p, "texts": int(t), "tokens": int(k),
                 "requests": int(r), "cost_usd": round(float(c), 6)}
                for m, s, p, t, k, r, c in rows]

    def size_history(self) -> list[dict[str, Any]]:
        """What the KB held after each successful rebuild, oldest first: run_id, kind,
        finished_at, ``documents`` (indexed: added, changed or unchanged) and ``chunks``."""
        rows = self._db.execute(
            "SELECT run_id, kind, finished_at, summary->'documents', summary->'chunks' "
            "FROM runs WHERE kind IN ('rebuild', 'rebuild-full') AND status = 'ok' "
            "ORDER BY finished_at, run_id").fetchall()
        out = []
        for run_id, kind, finished_at, documents, chunks in rows:
            docs = json.loads(documents) if documents else {}
            total = (json.loads(chunks) if chunks else {}).get("total")
            out.append({"run_id": run_id, "kind": kind, "finished_at": finished_at,
                        "documents": sum(int(docs.get(k, 0))
                                         for k in ("added", "changed", "unchanged")),
                        "chunks": int(total) if total is not None else None})
        return out


HISTORY_TABLES = ("runs", "findings", "ledger", "drills")
_DRILL_COLUMNS = ("scenario", "started_at", "finished_at", "status", "healthy", "detection_s",
                  "recovery_s", "objective_s", "requests", "texts", "tokens", "cost_usd",
                  "git_commit", "dvc_hash", "message", "steps")

_TABLES = ("documents", "chunks", "embeddings", "store_state")


def _table(name: str) -> str:
    """``name``, checked to be a manifest table: table names cannot be bound as parameters."""
    if name not in _TABLES:
        raise ValueError(f"not a manifest table: {name!r}")
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


WRITER_WAITS_S = 10.0   # how long a writer waits for readers that hold the file to let it go


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file. DuckDB lets no process open a file another process has open to
    read, even for a moment: a `status` or `search` that opened it just before a writer took
    the KB's lock holds it for a second at most, and a writer waits that out instead of
    failing. (Once the lock is taken, no new reader opens the file: they ask the writer.)"""
    deadline = time.monotonic() + (0.0 if read_only else WRITER_WAITS_S)
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _held_elsewhere(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def _held_elsewhere(exc: Exception) -> bool:
    return "could not set lock" in str(exc).lower()


class _Connection:
    """The manifest's DuckDB connection, with its errors translated into kbguard's.

    A full disk is a DiskFullError: DuckDB reports it from whichever statement happened to write
    (usually a COMMIT, which appends to the WAL, or a COPY into a snapshot), as an IO or
    transaction error, and every statement goes through here, so no caller has to recognise
    those. A COMMIT that failed has already rolled back: the ROLLBACK a caller's cleanup sends
    next is then a no-op, not a second error that would hide the first. With ``translate_all``
    any other DuckDB error is a ManifestError (or ManifestReadOnly) too.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, *, translate_all: bool):
        self._con = con
        self._path = path
        self._full = False
        self.translate_all = translate_all

    def execute(self, query: str, parameters: Any = None) -> _Connection:
        try:
            if parameters is None:
                self._con.execute(query)
            else:
                self._con.execute(query, parameters)
        except duckdb.Error as exc:
            if self._full and query.strip().upper() == "ROLLBACK":
                return self
            error = self._error(exc, query)
            if error is None:
                raise
            raise error from exc
        return self

    def executemany(self, query: str, parameters: Any = None) -> _Connection:
        try:
            self._con.executemany(query, parameters)
        except duckdb.Error as exc:
            error = self._error(exc, query)
            if error is None:
                raise
            raise error from exc
        return self

    def cursor(self) -> _Connection:
        return _Connection(self._con.cursor(), self._path, translate_all=self.translate_all)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def _error(self, exc: duckdb.Error, query: str) -> KbguardError | None:
        if is_disk_full(exc):
            self._full = True
            target = file_in_message(exc) or self._path
            manifest = (target.name.startswith(self._path.name)
                        and target.parent == self._path.parent)
            return disk_full(target, f"write the manifest {self._path}" if manifest
                             else f"write {target}")
        if not self.translate_all:
            return None
        return _statement_error(exc, self._path, query)


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
    if _held_elsewhere(exc):
        # DuckDB lets no other process open a file one process writes: the KB is busy
        holder = lock_holder(path)
        if holder is not None and holder.get("pid") != os.getpid():
            return locked_error(path)
        return LockedError(
            f"The manifest {path} is open in another process ({text.splitlines()[0]}). Wait "
            "for that process to finish and run again.")
    return ManifestError(
        f"The manifest {path} cannot be read: {text.splitlines()[0] if text else exc!r}. "
        "Restore it with `kbguard restore --latest`, or move it aside and run "
        "`kbguard rebuild` to build a new one."
    )


# statements that leave the manifest file as it was (a temporary table lives in memory)
_READS = re.compile(r"\s*(SELECT|WITH|COPY|CREATE OR REPLACE TEMP )", re.IGNORECASE)


def _statement_error(exc: duckdb.Error, path: Path, query: str) -> KbguardError:
    """The error for a statement on an open manifest that DuckDB refused."""
    if is_read_only_error(exc):
        reason = not_writable(path)
        if reason is not None:
            return ManifestReadOnly(_read_only_message(path, reason))
    text = str(exc)
    first = text.splitlines()[0] if text else repr(exc)
    reading = _READS.match(query) is not None
    return ManifestError(
        f"{'Reading' if reading else 'Writing'} the manifest {path} failed: {first}. What was "
        "committed before is kept. Run `kbguard verify`: if it reports manifest damage, or the "
        "manifest's tables were changed outside kbguard, bring it back with `kbguard restore "
        "--latest` (or move it aside and run `kbguard rebuild --full`); otherwise run the "
        "command again.")
