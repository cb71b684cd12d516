"""Drills: the outcome of every rehearsed failure (`kbguard drill`), with its measured times,
what it cost and its steps; the runbook, the report and the estimate read them back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kbguard.core.redact import scrub_data
from kbguard.manifest.connection import Connection

_DRILL_COLUMNS = ("scenario", "started_at", "finished_at", "status", "healthy", "detection_s",
                 "recovery_s", "objective_s", "requests", "texts", "tokens", "cost_usd",
                 "git_commit", "dvc_hash", "message", "steps")


class Drills:
    """The ``drills`` table (``Manifest.drills``)."""

    def __init__(self, db: Connection):
        self._db = db

    def record(self, drill: Mapping[str, Any]) -> int:
        """Add one drill's outcome (the keys are the ``drills`` columns but ``drill_id``)."""
        row = {**drill, "steps": json.dumps(scrub_data(drill.get("steps") or []))}
        cols = [c for c in _DRILL_COLUMNS if c in row]
        with self._db.transaction():
            return int(self._db.execute(
                f"INSERT INTO drills ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                "RETURNING drill_id", [row[c] for c in cols]).fetchone()[0])

    def history(self, scenario: str | None = None) -> list[dict[str, Any]]:
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
