"""Status: what the KB holds, how the last run went, and what the corpus has that is not indexed."""

from __future__ import annotations

from typing import Any

from kbguard.config import Config
from kbguard.core.lock import lock_holder
from kbguard.errors import KbguardError
from kbguard.ingest.dvc_corpus import dvc_view
from kbguard.ingest.plan import empty_corpus_message, plan_documents
from kbguard.ingest.scan import scan_corpus
from kbguard.kb.lost_manifest import missing_manifest
from kbguard.kb.preflight import Needs, preflight_checks
from kbguard.kb.read_socket import ask_writer
from kbguard.kb.status_report import StatusReport, status_from_manifest, store_summary
from kbguard.manifest import Manifest
from kbguard.recovery.restore import pending_restore
from kbguard.recovery.snapshot import list_snapshots

__all__ = ["StatusReport", "kb_status"]


def kb_status(cfg: Config, *, check_corpus: bool = True) -> StatusReport:
    """A read-only report of the KB; never writes the manifest or the store.

    While a rebuild holds the KB, the rebuild itself answers (no other process can open the
    manifest meanwhile): with its progress under ``rebuild``, and without the corpus check,
    since the corpus is what it is indexing."""
    served = ask_writer(cfg.manifest, {"op": "status"})
    if served is not None:
        report = StatusReport(**served)
        _add_files(cfg, report)
        return report
    preflight_checks(cfg, Needs("status", manifest=missing_manifest))
    with Manifest.open(cfg.manifest, read_only=True) as m:
        report = status_from_manifest(cfg, m)
        known = m.documents.by_path()
    _mark_interrupted(cfg, report.last_run)
    report.store = store_summary(cfg)
    _add_files(cfg, report)
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


def _add_files(cfg: Config, report: StatusReport) -> None:
    """The newest snapshot and an interrupted restore: files beside the KB, which any process
    can read."""
    report.latest_snapshot = _latest_snapshot(cfg)
    try:
        report.restore_pending = pending_restore(cfg)
    except KbguardError as exc:
        report.restore_pending = {"error": str(exc)}


INTERRUPTED = "interrupted"   # the status of a run whose process died before it ended
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
    run["status"] = INTERRUPTED
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
