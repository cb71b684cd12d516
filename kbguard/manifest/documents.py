"""Documents and their chunks: what the corpus holds, and what the KB should contain.

``documents`` is the last scan of each file (its stat cache: size, mtime, hash) and the version
whose chunks are indexed; ``chunks`` holds one row per point the KB wants, with its text. A
document's row and its chunks are written together (``Documents.record``); ``Chunks`` reads them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa

from kbguard.manifest.connection import Connection, now


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


class Documents:
    """The ``documents`` table (``Manifest.documents``); writing one replaces its chunks."""

    def __init__(self, db: Connection):
        self._db = db

    def by_path(self) -> dict[str, DocumentRow]:
        rows = self._db.execute(
            "SELECT path, file_hash, size, mtime_ns, indexed_hash, status, error, chunks, "
            "encoding FROM documents"
        ).fetchall()
        return {r[0]: DocumentRow(*r) for r in rows}

    def record(self, doc: DocumentRow, chunks: Sequence[ChunkRow] | None) -> None:
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
                self._db.insert_batch("INSERT INTO chunks BY NAME SELECT * FROM _batch", pa.table({
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

    def forget(self, path: str) -> None:
        """Drop a removed document and its chunks. No transaction."""
        self._db.execute("DELETE FROM chunks WHERE path = ?", [path])
        self._db.execute("DELETE FROM documents WHERE path = ?", [path])

    def failed(self) -> list[tuple[str, str | None]]:
        """(path, error) of every document that failed to parse, by path."""
        return [(p, e) for p, e in self._db.execute(
            "SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path").fetchall()]

    def count(self, status: str) -> int:
        """Documents whose last parse ended ``status`` (ok, failed)."""
        return self._db.count("SELECT count(*) FROM documents WHERE status = ?", [status])

    def encoding_counts(self) -> dict[str, int]:
        """Documents per text encoding they were read with, most used first (PDF and DOCX
        have none)."""
        return dict(self._db.execute(
            "SELECT encoding, count(*) FROM documents WHERE encoding IS NOT NULL "
            "GROUP BY encoding ORDER BY count(*) DESC, encoding").fetchall())


class Chunks:
    """The ``chunks`` table read (``Manifest.chunks``): the points the KB wants, with their
    texts. ``Documents.record`` writes it."""

    def __init__(self, db: Connection):
        self._db = db

    def count(self) -> int:
        return self._db.count("SELECT count(*) FROM chunks")

    def point_ids(self) -> list[str]:
        """The id of every point the chunks want."""
        return [r[0] for r in self._db.execute("SELECT point_id FROM chunks").fetchall()]

    def point_id_batches(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Every point id (column ``point_id``) in Arrow batches, on a cursor of its own."""
        return self._db.stream("SELECT point_id FROM chunks", [], batch_size)

    def points_by_path(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """``point_id`` and ``path`` of every chunk in document order, in Arrow batches, on a
        cursor of its own."""
        return self._db.stream("SELECT point_id, path FROM chunks ORDER BY path, seq", [],
                               batch_size)

    def known(self, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` some chunk wants."""
        return {r[0] for r in self._db.execute(
            "SELECT point_id FROM chunks WHERE point_id IN (SELECT unnest(?::VARCHAR[]))",
            [list(ids)]).fetchall()}

    def point_ids_with_hashes(self, hashes: Sequence[str]) -> list[str]:
        """The ids of the points whose text has one of ``hashes``."""
        return [r[0] for r in self._db.execute(
            "SELECT point_id FROM chunks WHERE content_hash IN (SELECT unnest(?::VARCHAR[]))",
            [list(hashes)]).fetchall()]

    def texts(self, hashes: Sequence[str]) -> dict[str, str]:
        """content_hash -> text, for those of ``hashes`` some chunk still has."""
        return dict(self._db.execute(
            "SELECT content_hash, min(text) FROM chunks WHERE content_hash IN "
            "(SELECT unnest(?::VARCHAR[])) GROUP BY 1", [list(hashes)]).fetchall())

    def first_paths(self, hashes: Sequence[str]) -> dict[str, str]:
        """content_hash -> the first path (by name) of a document with that text, for those of
        ``hashes`` some chunk has."""
        return dict(self._db.execute(
            "SELECT content_hash, min(path) FROM chunks WHERE content_hash IN "
            "(SELECT unnest(?::VARCHAR[])) GROUP BY 1", [list(hashes)]).fetchall())

    def of_points(self, ids: Sequence[str]) -> list[tuple[str, str, str, int, str, str]]:
        """(point_id, path, content_hash, occurrence, section, text) of the chunks behind
        ``ids``."""
        rows: list[tuple[str, str, str, int, str, str]] = self._db.execute(
            "SELECT point_id, path, content_hash, occurrence, section, text FROM chunks "
            "WHERE point_id IN (SELECT unnest(?::VARCHAR[]))", [list(ids)]).fetchall()
        return rows
