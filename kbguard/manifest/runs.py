"""Runs: one row per command that changed or checked the KB (rebuild, verify, repair,
restore), with its status and its JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from kbguard.core.redact import scrub_data
from kbguard.manifest.connection import Connection, now

_RUN_KEYS = ("run_id", "kind", "started_at", "finished_at", "status", "corpus_rev", "summary")


class Runs:
    """The ``runs`` table (``Manifest.runs``)."""

    def __init__(self, db: Connection):
        self._db = db

    def start(self, kind: str) -> int:
        with self._db.transaction():
            return int(self._db.execute(
                "INSERT INTO runs (kind, started_at, status) VALUES (?, ?, 'running') "
                "RETURNING run_id",
                [kind, now()],
            ).fetchone()[0])

    def finish(self, run_id: int, status: str, summary: dict[str, Any],
               corpus_rev: str | None = None) -> None:
        with self._db.transaction():
            self._db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, summary = ?, corpus_rev = ? "
                "WHERE run_id = ?",
                # a failed run's error may quote the store URL: stored without credentials
                [now(), status, json.dumps(scrub_data(summary)), corpus_rev, run_id],
            )

    def record_finished(self, kind: str, started_at: datetime, status: str,
                        summary: dict[str, Any]) -> int:
        """Add a run that is over as it is recorded (a check, which writes only at its end);
        returns its id. No transaction."""
        return int(self._db.execute(
            "INSERT INTO runs (kind, started_at, finished_at, status, summary) "
            "VALUES (?, ?, ?, ?, ?) RETURNING run_id",
            [kind, started_at, now(), status, json.dumps(scrub_data(summary))]
        ).fetchone()[0])

    def last(self, kind: str | None = None, status: str | None = None) -> dict[str, Any] | None:
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
        out = dict(zip(_RUN_KEYS, row, strict=True))
        out["summary"] = json.loads(out["summary"]) if out["summary"] else None
        return out

    def recent(self, kinds: Sequence[str], limit: int = 20) -> list[dict[str, Any]]:
        """The newest successful runs of ``kinds``, newest first, with their summaries."""
        rows = self._db.execute(
            "SELECT run_id, kind, started_at, finished_at, summary FROM runs WHERE status = 'ok' "
            "AND kind IN (SELECT unnest(?::VARCHAR[])) ORDER BY run_id DESC LIMIT ?",
            [list(kinds), limit]).fetchall()
        return [{"run_id": r[0], "kind": r[1], "started_at": r[2], "finished_at": r[3],
                 "summary": json.loads(r[4]) if r[4] else {}} for r in rows]

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
