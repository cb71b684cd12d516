"""The embedding cache: every vector ever computed, keyed by (space, content hash).

A vector is stored as float32 little-endian bytes with a checksum of them, so damage to a cached
vector is found without a second copy. A space's debt (the texts it has no vector for) and the
rebuild's list of texts to embed are derived from the cache and the chunks, so they can never
disagree with the tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from kbguard.manifest.connection import Connection, now, sql_literal


def vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_checksum(blob: bytes) -> str:
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def blob_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


class EmbeddingCache:
    """The ``embeddings`` table (``Manifest.cache``)."""

    def __init__(self, db: Connection):
        self._db = db

    # -- vectors -------------------------------------------------------------------------------

    def add(self, space_id: str, items: Sequence[tuple[str, np.ndarray]],
            run_id: int | None, provider: str | None = None) -> None:
        """Add vectors to the cache (existing keys are replaced), made by ``provider``.
        No transaction."""
        if not items:
            return
        blobs = [vector_bytes(vec) for _, vec in items]
        self._db.insert_batch("INSERT OR REPLACE INTO embeddings BY NAME SELECT * FROM _batch", pa.table({
            "space_id": pa.array([space_id] * len(items), pa.string()),
            "content_hash": pa.array([h for h, _ in items], pa.string()),
            "vector": pa.array(blobs, pa.binary()),
            "checksum": pa.array([vector_checksum(b) for b in blobs], pa.string()),
            "created_at": pa.array([now()] * len(items), pa.timestamp("us", tz="UTC")),
            "run_id": pa.array([run_id] * len(items), pa.int64()),
            "provider": pa.array([provider] * len(items), pa.string()),
        }))

    def vectors(self, space_id: str, hashes: Sequence[str]
                ) -> list[tuple[str, np.ndarray, int | None]]:
        """(content_hash, vector, run that embedded it) of those of ``hashes`` the cache holds
        in ``space_id``."""
        return [(h, blob_vector(blob), run_id) for h, blob, run_id in self._db.execute(
            "SELECT content_hash, vector, run_id FROM embeddings "
            "WHERE space_id = ? AND content_hash IN (SELECT unnest(?::VARCHAR[]))",
            [space_id, list(hashes)]).fetchall()]

    def drop(self, space_id: str, hashes: Sequence[str]) -> None:
        """Delete cache rows of ``space_id``; one statement, so no transaction is needed."""
        self._db.execute("DELETE FROM embeddings WHERE space_id = ? AND content_hash IN "
                         "(SELECT unnest(?::VARCHAR[]))", [space_id, list(hashes)])

    def count(self, space_id: str | None = None) -> int:
        """Cached vectors, of every space or of ``space_id``."""
        if space_id is None:
            return self._db.count("SELECT count(*) FROM embeddings")
        return self._db.count("SELECT count(*) FROM embeddings WHERE space_id = ?", [space_id])

    def hashes_in_use(self, space_id: str) -> list[str]:
        """The content hashes cached in ``space_id`` that some chunk uses, sorted."""
        return [r[0] for r in self._db.execute(
            "SELECT DISTINCT e.content_hash FROM embeddings e JOIN chunks c USING (content_hash) "
            "WHERE e.space_id = ? ORDER BY 1", [space_id]).fetchall()]

    def raw_bytes(self, space_id: str, content_hash: str) -> bytes | None:
        """The raw float32 bytes of one cached vector, as stored."""
        row = self._db.execute(
            "SELECT vector FROM embeddings WHERE space_id = ? AND content_hash = ?",
            [space_id, content_hash]).fetchone()
        return bytes(row[0]) if row else None

    def overwrite_bytes(self, space_id: str, content_hash: str, blob: bytes) -> None:
        """Replace one cached vector's bytes and keep its checksum, which then fails: damage on
        purpose, for `kbguard chaos`. No transaction."""
        self._db.execute("UPDATE embeddings SET vector = ? WHERE space_id = ? AND "
                         "content_hash = ?", [blob, space_id, content_hash])

    # -- what verify reads -------------------------------------------------------------------

    def rows(self, batch_size: int) -> Iterator[pa.RecordBatch]:
        """Every cache row (``space_id``, ``content_hash``, ``vector``, ``checksum``) in Arrow
        batches, on a cursor of its own."""
        return self._db.stream("SELECT space_id, content_hash, vector, checksum FROM embeddings",
                               [], batch_size)

    def other_spaces(self, content_hash: str, space_id: str) -> list[tuple[str, bytes]]:
        """(space_id, vector bytes) of the text ``content_hash`` in every space but
        ``space_id``."""
        rows: list[tuple[str, bytes]] = self._db.execute(
            "SELECT space_id, vector FROM embeddings WHERE content_hash = ? AND space_id <> ?",
            [content_hash, space_id]).fetchall()
        return rows

    def chunks_with_vectors(self, space_ids: Sequence[str], *, passes: int, part: int,
                            batch_size: int) -> Iterator[pa.RecordBatch]:
        """The chunks whose content hash falls in ``part`` of ``passes`` (by its hash), in Arrow
        batches on a cursor of its own: ``point_id``, ``path``, ``content_hash``,
        ``occurrence``, ``section``, ``text``, and for the k-th of ``space_ids`` ``cached{k}``,
        its cached vector (null where the cache has none).

        One hash join per pass, instead of a lookup per batch that would scan the whole cache
        each time; the join holds the pass's cached vectors in DuckDB's memory, which
        ``passes`` bounds."""
        cached = "".join(f", e{k}.vector AS cached{k}" for k in range(len(space_ids)))
        joins = "".join(
            f" LEFT JOIN (SELECT content_hash, vector FROM embeddings WHERE space_id = ? AND "
            f"hash(content_hash) % {passes} = ?) e{k} ON e{k}.content_hash = c.content_hash"
            for k in range(len(space_ids)))
        sql = ("SELECT c.point_id, c.path, c.content_hash, c.occurrence, c.section, c.text"
               f"{cached} FROM chunks c{joins} WHERE hash(c.content_hash) % {passes} = ?")
        params = [x for space_id in space_ids for x in (space_id, part)] + [part]
        return self._db.stream(sql, params, batch_size)

    # -- what a space lacks ------------------------------------------------------------------

    def debt(self, space_id: str) -> tuple[int, int]:
        """(chunks, distinct texts) with no cached vector in ``space_id``. The texts are the
        space's debt: exactly what the next rebuild embeds for it. Derived from the tables,
        so it can never disagree with them."""
        row = self._db.execute(
            "SELECT count(*), count(DISTINCT content_hash) FROM chunks WHERE content_hash NOT IN "
            "(SELECT content_hash FROM embeddings WHERE space_id = ?)", [space_id]).fetchone()
        return int(row[0]), int(row[1])

    def chunks_lacking(self, space_id: str) -> int:
        """Chunks whose text has no cached vector in ``space_id`` (a space whose providers
        were down has some): what its coverage misses."""
        return self.debt(space_id)[0]

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
        return self._db.count("SELECT count(*) FROM embed_todo")

    def embed_todo_batches(self, size: int) -> Iterator[list[tuple[str, str]]]:
        """embed_todo in batches of (content_hash, text); the table is dropped after the last."""
        yield from self._db.temp_table_batches(
            "SELECT content_hash, text FROM embed_todo WHERE rn >= ? AND rn < ? ORDER BY rn",
            "embed_todo", size)

    # -- carried between manifests (drills) --------------------------------------------------

    def export_since(self, since: datetime, path: Path, *,
                     except_paths: Sequence[str] = ()) -> int:
        """Write the cache rows made from ``since`` on that chunks of documents other than
        ``except_paths`` use to the Parquet file ``path`` (no file when there are none); returns
        how many. What a drill carries from one scratch copy of a KB to the next, so that no
        drill of a run embeds a text another one embedded."""
        where = (f"created_at >= {sql_literal(since.isoformat())}::TIMESTAMPTZ AND content_hash IN "
                 "(SELECT content_hash FROM chunks WHERE path NOT IN "
                 f"(SELECT unnest([{', '.join(map(sql_literal, except_paths))}]::VARCHAR[])))")
        n = self._db.count(f"SELECT count(*) FROM embeddings WHERE {where}")
        if n:
            self._db.execute(f"COPY (SELECT * FROM embeddings WHERE {where}) TO "
                             f"{sql_literal(str(path))} (FORMAT parquet, COMPRESSION snappy)")
        return n

    def import_files(self, files: Sequence[Path]) -> int:
        """Add the rows of the Parquet files ``export_since`` wrote that this cache lacks (its
        own rows win); no run of this manifest made them. Returns how many were added."""
        if not files:
            return 0
        sources = "[" + ", ".join(sql_literal(str(f)) for f in files) + "]"
        with self._db.transaction():
            before = self._db.count("SELECT count(*) FROM embeddings")
            self._db.execute(
                "INSERT OR IGNORE INTO embeddings BY NAME SELECT DISTINCT ON (space_id, "
                f"content_hash) * REPLACE (NULL::BIGINT AS run_id) FROM read_parquet({sources})")
            return self._db.count("SELECT count(*) FROM embeddings") - before
