"""The store state: which points were written to the store, with which vectors, and the one
protocol that writes and deletes them.

Every command that changes the store's points does it through ``Points.write`` and
``Points.delete``, so no point is ever in the store unrecorded: a state row is recorded pending,
the store writes and flushes, and only then is the row confirmed (a killed run leaves pending
rows, which the next run writes again).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from kbguard.core.faults import crash_point
from kbguard.manifest.connection import Connection, now, sql_identifier, sql_literal
from kbguard.store.base import Point, Store


class Points:
    """The ``store_state`` table (``Manifest.points``)."""

    def __init__(self, db: Connection):
        self._db = db

    # -- the write protocol ------------------------------------------------------------------

    def write(self, store: Store, points: Sequence[tuple[Point, str, str]], vectors: str) -> None:
        """Write one batch of points to ``store`` so that no point is ever there unrecorded.

        ``points`` holds (point, document path, content hash); ``vectors`` the comma-joined
        names of the vectors each carries. Each point's state row is recorded pending, the store
        writes and flushes the points, and only then are the rows confirmed: a process killed
        in between leaves pending rows, which the next rebuild writes again.
        """
        if not points:
            return
        ids = [p.id for p, _, _ in points]
        with self._db.transaction():
            self._db.execute("DELETE FROM store_state WHERE point_id IN "
                             "(SELECT unnest(?::VARCHAR[]))", [ids])
            self._db.insert_batch(
                "INSERT INTO store_state SELECT point_id, path, content_hash, ?, false, "
                "?::TIMESTAMPTZ FROM _batch",
                pa.table({"point_id": pa.array(ids, pa.string()),
                          "path": pa.array([path for _, path, _ in points], pa.string()),
                          "content_hash": pa.array([h for _, _, h in points], pa.string())}),
                [vectors, now()])
        store.upsert([p for p, _, _ in points])
        store.flush()
        crash_point("store-upsert")
        with self._db.transaction():
            self._db.execute("UPDATE store_state SET confirmed = true WHERE point_id IN "
                             "(SELECT unnest(?::VARCHAR[]))", [ids])

    def delete(self, store: Store, ids: Sequence[str], *, batch_size: int) -> None:
        """Delete points from ``store``, then forget their state rows, ``batch_size`` at a time:
        the store is flushed before a row goes, so a killed run leaves rows the next run deletes
        again, never a point nobody knows about."""
        for lo in range(0, len(ids), batch_size):
            batch = list(ids[lo:lo + batch_size])
            store.delete(batch)
            store.flush()
            crash_point("store-delete")
            with self._db.transaction():
                self._db.execute("DELETE FROM store_state WHERE point_id IN "
                                 "(SELECT unnest(?::VARCHAR[]))", [batch])

    def unconfirm_all(self) -> None:
        """Mark every point as not written, for a store that was dropped or is missing: the next
        ``fill_upsert_todo`` then lists every chunk."""
        with self._db.transaction():
            self._db.execute("UPDATE store_state SET confirmed = false")

    def record_restored(self, points_file: Path, vector_columns: Mapping[str, str]) -> None:
        """State rows, all written and confirmed, for the points of a snapshot's points file:
        ``vector_columns`` maps each vector name to its column there (null where a point lacks
        it). One statement in DuckDB instead of rows built in Python; own transaction."""
        present = ", ".join(f"CASE WHEN {sql_identifier(column)} IS NOT NULL THEN "
                            f"{sql_literal(name)} END"
                            for name, column in sorted(vector_columns.items()))
        with self._db.transaction():
            self._db.execute(
                "INSERT INTO store_state SELECT id, coalesce(payload::JSON->>'path', ''), "
                "coalesce(payload::JSON->>'content_hash', ''), "
                f"concat_ws(',', {present}), true, now() "
                f"FROM read_parquet({sql_literal(str(points_file))})")

    # -- what a rebuild has to write ---------------------------------------------------------

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
        return self._db.count("SELECT count(*) FROM upsert_todo")

    def upsert_todo_batches(self, size: int
                            ) -> Iterator[list[tuple[str, str, int, str, int, str, str]]]:
        """upsert_todo in batches of (point_id, path, seq, content_hash, occurrence, section,
        text); the table is dropped after the last."""
        yield from self._db.temp_table_batches(
            "SELECT point_id, path, seq, content_hash, occurrence, section, text "
            "FROM upsert_todo WHERE rn >= ? AND rn < ? ORDER BY rn", "upsert_todo", size)

    def unwanted_ids(self) -> list[str]:
        """Points the store state knows and no chunk wants any more."""
        return [r[0] for r in self._db.execute(
            "SELECT point_id FROM store_state WHERE point_id NOT IN (SELECT point_id FROM chunks)"
        ).fetchall()]

    # -- counts ------------------------------------------------------------------------------

    def confirmed_count(self) -> int:
        return self._db.count("SELECT count(*) FROM store_state WHERE confirmed")

    def pending_count(self) -> int:
        """State rows recorded before a write that was never confirmed."""
        return self._db.count("SELECT count(*) FROM store_state WHERE NOT confirmed")

    def unwritten_chunk_count(self) -> int:
        """Chunks whose point the store state does not confirm as written."""
        return self._db.count("SELECT count(*) FROM chunks WHERE point_id NOT IN "
                              "(SELECT point_id FROM store_state WHERE confirmed)")

    def lacking_vector(self, name: str) -> int:
        """Points recorded in the store (written, or being written) that carry no vector
        ``name``: what a space misses in the store as it is while a rebuild writes it."""
        return self._db.count("SELECT count(*) FROM store_state "
                              "WHERE NOT list_contains(string_split(vectors, ','), ?)", [name])

    # -- the store's points as the manifest records them (snapshots of an Edge store) --------

    def unrecorded(self, names: Sequence[str]) -> str | None:
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

    def recorded(self, kb: str, spaces: Sequence[tuple[str, str]], batch_size: int
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
        params: list[Any] = [kb, *args, *(sid for _, sid in spaces)]
        return self._db.stream(query, params, batch_size)
