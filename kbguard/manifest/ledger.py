"""The ledger: what every embedding request cost, per run, space and provider.

The bill is data, not a guess: ``status`` shows the spend, the report sums it by month, a drill
reads what its commands cost, and the estimate takes each provider's measured throughput from it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kbguard.manifest.connection import Connection, now


class Ledger:
    """The ``ledger`` table (``Manifest.ledger``)."""

    def __init__(self, db: Connection):
        self._db = db

    def record(self, run_id: int | None, kind: str, space: Any, provider: str,
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

    def usage_since(self, since: datetime) -> dict[str, Any]:
        """Requests, texts, tokens and USD the ledger holds from ``since`` on, all runs and
        spaces together: what a stretch of commands (a drill's) cost in embedding."""
        row = self._db.execute(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(texts), 0), "
            "coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0) FROM ledger "
            "WHERE recorded_at >= ?", [since]).fetchone()
        return {"requests": int(row[0]), "texts": int(row[1]), "tokens": int(row[2]),
                "cost_usd": round(float(row[3]), 6)}

    def monthly_spend(self) -> list[dict[str, Any]]:
        """The ledger summed by calendar month (UTC, ``YYYY-MM``), space and provider."""
        rows = self._db.execute(
            "SELECT strftime(timezone('UTC', recorded_at), '%Y-%m') AS month, space, provider, "
            "sum(texts), sum(tokens), sum(requests), sum(cost_usd) FROM ledger "
            "GROUP BY ALL ORDER BY month, space, provider").fetchall()
        return [{"month": m, "space": s, "provider": p, "texts": int(t), "tokens": int(k),
                 "requests": int(r), "cost_usd": round(float(c), 6)}
                for m, s, p, t, k, r, c in rows]

    def recent_calls(self, limit: int = 2000) -> list[dict[str, Any]]:
        """The newest ledger rows (one per embedding call of a run), newest first: the measured
        throughput of each space's providers on this machine."""
        rows = self._db.execute(
            "SELECT run_id, kind, space_id, provider, texts, tokens, requests, seconds, "
            "cost_usd, recorded_at FROM ledger ORDER BY recorded_at DESC LIMIT ?",
            [limit]).fetchall()
        keys = ("run_id", "kind", "space_id", "provider", "texts", "tokens", "requests",
                "seconds", "cost_usd", "recorded_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]
