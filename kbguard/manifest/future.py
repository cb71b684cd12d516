"""The chunks as a rebuild would leave them, for `kbguard rebuild --estimate`.

The estimate writes nothing: the future chunks are a temporary table, which lives in memory, so
a manifest opened read-only allows it. What a rebuild would embed and write is read from it
against this manifest's cache and store state, or against a snapshot's files (what a restore of
that snapshot would leave).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from kbguard.manifest.connection import Connection, sql_literal


class FutureChunks:
    """The temporary table ``future_chunks`` (``Manifest.future``)."""

    def __init__(self, db: Connection):
        self._db = db

    def stage(self, replaced: Sequence[str], new: Sequence[tuple[str, str, str]]) -> None:
        """The chunks as they will be after a rebuild that replaces the chunks of the documents
        ``replaced`` with ``new`` (point_id, content_hash, text)."""
        self._db.execute(
            "CREATE OR REPLACE TEMP TABLE future_chunks AS SELECT point_id, content_hash, text "
            "FROM chunks WHERE path NOT IN (SELECT unnest(?::VARCHAR[]))", [list(replaced)])
        if new:
            cols = list(zip(*new, strict=True))
            self._db.insert_batch("INSERT INTO future_chunks SELECT * FROM _batch", pa.table(
                {"point_id": cols[0], "content_hash": cols[1], "text": cols[2]}))

    def texts(self, space_id: str | None = None, cache: Path | None = None
              ) -> list[tuple[str, str]]:
        """(content_hash, text) of each distinct future text: all of them, or those the
        embedding cache lacks in ``space_id`` (``cache``: a snapshot's embeddings.parquet
        instead of this manifest's cache)."""
        if space_id is None:
            rows: list[tuple[str, str]] = self._db.execute(
                "SELECT content_hash, min(text) FROM future_chunks "
                "GROUP BY content_hash ORDER BY content_hash").fetchall()
            return rows
        source = f"read_parquet({sql_literal(str(cache))})" if cache else "embeddings"
        lacking: list[tuple[str, str]] = self._db.execute(
            "SELECT content_hash, min(text) FROM future_chunks WHERE content_hash NOT IN "
            f"(SELECT content_hash FROM {source} WHERE space_id = ?) "
            "GROUP BY content_hash ORDER BY content_hash", [space_id]).fetchall()
        return lacking

    def point_count(self) -> int:
        """Future points: what a store written from scratch holds."""
        return self._db.count("SELECT count(*) FROM future_chunks")

    def store_work(self, vectors: str, points: Path | None = None) -> tuple[int, int]:
        """(points to write, points to delete) for the store to hold the future chunks with the
        vectors ``vectors`` (comma-joined names), from this store state, or from a snapshot's
        ``points`` file (what a restore of it confirms)."""
        if points is None:
            held = ("SELECT point_id FROM store_state WHERE confirmed AND vectors = ?", [vectors])
            known = "SELECT point_id FROM store_state"
        else:
            known = f"SELECT id AS point_id FROM read_parquet({sql_literal(str(points))})"
            held = (known, [])
        write = self._db.count(
            f"SELECT count(*) FROM future_chunks WHERE point_id NOT IN ({held[0]})", held[1])
        delete = self._db.count(f"SELECT count(DISTINCT point_id) FROM ({known}) WHERE point_id "
                                "NOT IN (SELECT point_id FROM future_chunks)")
        return write, delete

    def indexed_hashes(self, documents: Path) -> dict[str, str | None]:
        """path -> indexed_hash of a snapshot's ``documents`` table (its documents.parquet):
        the version of each document a restore of it starts from."""
        return dict(self._db.execute(
            f"SELECT path, indexed_hash FROM read_parquet({sql_literal(str(documents))})"
        ).fetchall())
