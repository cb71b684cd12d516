"""Whole tables in and out: a snapshot's Parquet copies of the manifest, and a restored
manifest taking over the history of the one it replaces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb

from kbguard.errors import KbguardError
from kbguard.manifest.connection import Connection, sql_identifier, sql_literal

# what a snapshot holds of the manifest
_TABLES = ("documents", "chunks", "embeddings", "store_state")
# what happened to the KB: kept across a restore
HISTORY_TABLES = ("runs", "findings", "ledger", "drills")


def _table(name: str) -> str:
    """``name``, checked to be a manifest table: table names cannot be bound as parameters."""
    if name not in _TABLES:
        raise ValueError(f"not a manifest table: {name!r}")
    return name


class Tables:
    """Export and import of whole tables (``Manifest.tables``)."""

    def __init__(self, db: Connection):
        self._db = db

    def row_counts(self, tables: Sequence[str]) -> dict[str, int]:
        """Rows in each of ``tables`` (documents, chunks, embeddings, store_state)."""
        return {t: self._db.count(f"SELECT count(*) FROM {_table(t)}") for t in tables}

    def export(self, table: str, path: Path) -> None:
        """Write ``table`` to the Parquet file ``path``, in key order: zstd, but snappy for the
        embedding cache, whose float32 vectors zstd barely shrinks at twice the time (100k
        384-d vectors: 1.0 s against 0.5 s)."""
        order = {"documents": "path", "chunks": "path, seq",
                 "embeddings": "space_id, content_hash"}[table]
        codec = "snappy" if table == "embeddings" else "zstd"
        self._db.execute(f"COPY (SELECT * FROM {_table(table)} ORDER BY {order}) TO "
                         f"{sql_literal(str(path))} (FORMAT parquet, COMPRESSION {codec})")

    def import_files(self, files: Mapping[str, Path]) -> None:
        """Load tables from Parquet files (table -> file, as ``export`` wrote them) in one
        transaction, on a connection of its own: safe to run in a thread while this one works."""
        con = self._db.cursor()
        try:
            con.execute("BEGIN TRANSACTION")
            for table, path in files.items():
                con.execute(f"INSERT INTO {_table(table)} BY NAME "
                            f"SELECT * FROM read_parquet({sql_literal(str(path))})")
            con.execute("COMMIT")
        finally:
            con.close()

    def import_history(self, other: Path) -> str | None:
        """Copy the history of the manifest at ``other`` (runs, verify findings, the ledger,
        drills) into this one, which must have none yet: a restored manifest keeps the record
        of what happened to the KB. Returns why nothing was copied, or None."""
        if not other.is_file():
            return "no live manifest to keep the history of"
        try:
            self._db.execute(f"ATTACH {sql_literal(str(other))} AS live (READ_ONLY)")
        except (duckdb.Error, KbguardError) as exc:
            return f"the live manifest could not be read ({exc})"
        try:
            with self._db.transaction():
                for table in HISTORY_TABLES:
                    cols = [r[0] for r in self._db.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE database_name = "
                        "current_database() AND table_name = ? ORDER BY column_index",
                        [table]).fetchall()]
                    have = {r[0] for r in self._db.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE database_name = 'live' "
                        "AND table_name = ?", [table]).fetchall()}
                    shared = ", ".join(sql_identifier(c) for c in cols if c in have)
                    if shared:
                        self._db.execute(f"INSERT INTO {table} ({shared}) "
                                         f"SELECT {shared} FROM live.{table}")
                # the sequences must continue after the ids just copied
                for seq, table, key in (("run_ids", "runs", "run_id"),
                                        ("drill_ids", "drills", "drill_id")):
                    top = self._db.count(f"SELECT coalesce(max({key}), 0) FROM {table}")
                    if top:
                        self._db.execute(f"SELECT max(nextval('{seq}')) FROM range(?)", [top])
        except (duckdb.Error, KbguardError) as exc:
            return f"the live manifest's history could not be copied ({exc})"
        finally:
            self._db.execute("DETACH live")
        return None
