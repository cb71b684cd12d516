"""Checks: what each `kbguard verify` found, kept so a trend can be read back.

A check is a run (kind ``verify`` or ``verify-after-repair``) recorded once it is over, plus one
``findings`` row per finding class, zero counts too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from kbguard.core.redact import scrub_data
from kbguard.manifest.connection import Connection
from kbguard.manifest.runs import Runs


class Checks:
    """The checks among the runs, and the ``findings`` table (``Manifest.checks``)."""

    def __init__(self, db: Connection, runs: Runs):
        self._db = db
        self._runs = runs

    def record(self, kind: str, started_at: datetime, status: str, summary: dict[str, Any],
               findings: Iterable[tuple[str, int, list[dict[str, Any]]]]) -> int:
        """Add a finished check: its run and its ``findings`` (class, count, examples); returns
        the run's id. No transaction: the caller's holds the check with what it cost."""
        run_id = self._runs.record_finished(kind, started_at, status, summary)
        self._db.executemany(
            "INSERT INTO findings VALUES (?, ?, ?, ?)",
            [[run_id, name, count, json.dumps(scrub_data(examples), default=str)]
             for name, count, examples in findings])
        return run_id

    def last(self) -> dict[str, Any] | None:
        """The newest recorded check: when, its status, and its non-zero findings."""
        run = self._runs.last(kind="verify%")
        if run is None:
            return None
        counts = dict(self._db.execute(
            "SELECT finding, count FROM findings WHERE run_id = ? AND count > 0 ORDER BY finding",
            [run["run_id"]]).fetchall())
        summary = run.get("summary") or {}
        return {"run_id": run["run_id"], "kind": run["kind"],
                "checked_at": run["started_at"].isoformat(timespec="seconds"),
                "status": run["status"], "findings": counts,
                "points_checked": summary.get("points_checked"),
                "seconds": summary.get("seconds")}

    def history(self) -> list[dict[str, Any]]:
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
