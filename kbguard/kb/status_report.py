"""The status report of a KB, and the parts of it that its manifest and its store give.

`kbguard status` (kbguard.operations.status) adds the files around the KB and the corpus check; a running
rebuild fills the same parts for the status it serves (kbguard.kb.read_service).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kbguard.config import Config
from kbguard.core.redact import redact_url
from kbguard.errors import KbguardError
from kbguard.manifest import Manifest
from kbguard.store import Store, store_for


@dataclass
class StatusReport:
    """What `kbguard status` shows; every field is what its ``--json`` key holds."""

    kb: str
    config: str
    manifest: str
    spaces: list[dict[str, Any]]           # name, provider, model, dim, coverage, debt
    counts: dict[str, int]
    encodings: dict[str, int]              # documents per text encoding they were read with
    last_run: dict[str, Any] | None
    last_successful_rebuild: dict[str, Any] | None
    last_check: dict[str, Any] | None
    failed_documents: list[dict[str, str | None]]
    spend: dict[str, Any]                  # total and this_month: tokens, usd, by_space
    store: dict[str, Any] = field(default_factory=dict)
    latest_snapshot: dict[str, Any] | None = None
    restore_pending: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None  # corpus changes not yet indexed (None: not looked)
    rebuild: dict[str, Any] | None = None  # the progress of a rebuild running now

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("pending", "rebuild"):
            if out[key] is None:
                del out[key]
        return out


def status_from_manifest(cfg: Config, m: Manifest) -> StatusReport:
    """The parts of the status that the manifest holds (``store`` and the files around the KB
    are left for the caller to fill)."""
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    chunks = m.chunks.count()
    spaces = []
    for s in cfg.spaces:
        behind, debt = m.cache.debt(s.space_id)
        spaces.append({"name": s.name, "provider": s.provider, "model": s.model,
                       "dim": s.dim, "providers": [e.type for e in s.chain],
                       "coverage": round(1 - behind / chunks, 6) if chunks else 1.0,
                       "debt": debt})
    return StatusReport(
        kb=cfg.kb, config=str(cfg.path), manifest=str(cfg.manifest), spaces=spaces,
        counts=m.counts(), encodings=m.documents.encoding_counts(),
        last_run=_run(m.runs.last()),
        last_successful_rebuild=_run(m.runs.last(kind="rebuild%", status="ok")),
        last_check=m.checks.last(),
        failed_documents=[{"path": p, "error": e} for p, e in m.documents.failed()],
        spend={"total": m.ledger.spend(), "this_month": m.ledger.spend(since=month)},
    )


def _run(run: dict[str, Any] | None) -> dict[str, Any] | None:
    if run is None:
        return None
    out = {k: (v.isoformat(timespec="seconds") if hasattr(v, "isoformat") else v)
           for k, v in run.items() if k != "summary"}
    summary = run.get("summary") or {}
    for key in ("documents", "chunks", "seconds", "error"):
        if key in summary:
            out[key] = summary[key]
    return out


def store_summary(cfg: Config, store: Store | None = None) -> dict[str, Any]:
    """Where the store is and how many points it holds; ``store``: one already open (else the
    KB's store is opened for this)."""
    where = redact_url(cfg.store_url) if cfg.store_url else str(cfg.store_path)
    try:
        if store is not None:
            info = store.describe()
        else:
            with store_for(cfg) as own:
                info = own.describe()
        return {"backend": cfg.store_backend, "location": where, "exists": info.exists,
                "points": info.points if info.exists else 0}
    except KbguardError as exc:
        return {"backend": cfg.store_backend, "location": where, "error": str(exc)}
