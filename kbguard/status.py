"""Status: what the KB holds, how the last run went, and what the corpus has that is not indexed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from kbguard.config import Config
from kbguard.errors import KbguardError
from kbguard.lock import check_unlocked, lock_holder
from kbguard.manifest import Manifest
from kbguard.kb import empty_corpus_message, plan_documents, store_for
from kbguard.lost_manifest import missing_manifest
from kbguard.redact import redact_url
from kbguard.scan import scan_corpus
from kbguard.restore import pending_restore
from kbguard.snapshot import list_snapshots
from kbguard.verify import last_check
from kbguard.dvc_corpus import dvc_view


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

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.pending is None:
            del out["pending"]
        return out


def kb_status(cfg: Config, *, check_corpus: bool = True) -> StatusReport:
    """A read-only report of the KB; never writes the manifest or the store."""
    check_unlocked(cfg.manifest)
    if not cfg.manifest.exists():
        raise missing_manifest(cfg)
    month = datetime.now(timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with Manifest.open(cfg.manifest, read_only=True) as m:
        chunks = m.chunk_count()
        spaces = []
        for s in cfg.spaces:
            behind, debt = m.space_debt(s.space_id)
            spaces.append({"name": s.name, "provider": s.provider, "model": s.model,
                           "dim": s.dim, "providers": [e.type for e in s.chain],
                           "coverage": round(1 - behind / chunks, 6) if chunks else 1.0,
                           "debt": debt})
        report = StatusReport(
            kb=cfg.kb, config=str(cfg.path), manifest=str(cfg.manifest), spaces=spaces,
            counts=m.counts(), encodings=m.encoding_counts(),
            last_run=_run(m.last_run()),
            last_successful_rebuild=_run(m.last_run(kind="rebuild%", status="ok")),
            last_check=last_check(m),
            failed_documents=[{"path": p, "error": e} for p, e in m.failed_documents()],
            spend={"total": m.spend(), "this_month": m.spend(since=month)},
        )
        known = m.documents()
    _mark_interrupted(cfg, report.last_run)
    report.store = _store(cfg)
    report.latest_snapshot = _latest_snapshot(cfg)
    try:
        report.restore_pending = pending_restore(cfg)
    except KbguardError as exc:
        report.restore_pending = {"error": str(exc)}
    if check_corpus:
        view = dvc_view(cfg.corpus)
        scan = scan_corpus(cfg.corpus, cfg.include, cfg.exclude, known,
                           dvc_hashes=view.hashes if view else None)
        plan = plan_documents(scan, known)
        report.pending = {
            "added": len(plan.added), "changed": len(plan.changed),
            "removed": len(plan.removed), "refused": len(plan.refused),
            "up_to_date": not (plan.added or plan.changed or plan.removed),
            "files": len(scan.files),
            "problem": None if scan.files else empty_corpus_message(cfg),
        }
    return report


_RESUME = {
    "rebuild": "the next `kbguard rebuild` resumes it",
    "rebuild-full": "the next `kbguard rebuild` resumes it",
    "repair": "`kbguard verify --repair` finishes it",
}


def _mark_interrupted(cfg: Config, run: dict[str, Any] | None) -> None:
    """A run recorded as running while no process holds the KB's lock was killed: its process
    never recorded how it ended. Say so, and what picks it up again."""
    if run is None or run["status"] != "running" or lock_holder(cfg.manifest) is not None:
        return
    run["status"] = "interrupted"
    resume = _RESUME.get(run["kind"], f"run `kbguard {run['kind']}` again")
    run["note"] = f"its process ended before the run finished; {resume}"


def _latest_snapshot(cfg: Config) -> dict[str, Any] | None:
    """The newest snapshot by its metadata (not re-hashed: `kbguard snapshot verify` does that)."""
    entries = [e for e in list_snapshots(cfg) if e.problem is None]
    if not entries:
        return None
    e = entries[-1]
    return {"id": e.id, "created_at": e.created_at, "points": e.points, "local": e.local,
            "dvc": e.dvc}


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


def _store(cfg: Config) -> dict[str, Any]:
    where = redact_url(cfg.store_url) if cfg.store_url else str(cfg.store_path)
    try:
        with store_for(cfg) as store:
            info = store.describe()
            return {"backend": cfg.store_backend, "location": where, "exists": info.exists,
                    "points": info.points if info.exists else 0}
    except KbguardError as exc:
        return {"backend": cfg.store_backend, "location": where, "error": str(exc)}
