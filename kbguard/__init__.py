"""kbguard: keep a RAG knowledge base recoverable.

The functions behind every command, for use from Python::

    import kbguard

    cfg = kbguard.init_config("docs/", "kb.toml", provider="fake")
    report = kbguard.rebuild_kb(cfg)
    check = kbguard.verify_kb(cfg)
    snap = kbguard.create_snapshot(cfg)
    kbguard.restore_snapshot(cfg, snap.id)

Errors are the ``KbguardError`` tree of ``kbguard.errors``. Importing kbguard changes no
global state (no environment variable, no patched library): that happens on first use of what
needs it, such as the parsers.
"""

from __future__ import annotations

from kbguard.config import Config, init_config, load_config
from kbguard.core.outcome import Verdict
from kbguard.errors import (
    ConfigError,
    CorpusError,
    EmbedError,
    KbguardError,
    LockedError,
    ManifestError,
    ParseError,
    ProviderUnavailable,
    RestoreNeeded,
    RestorePending,
    SnapshotDamaged,
    SnapshotError,
    StoreError,
    StoreUnavailable,
)
from kbguard.ingest.rebuild import RebuildReport
from kbguard.ingest.rebuild import rebuild as rebuild_kb
from kbguard.integrity.repair import RepairReport, repair_kb
from kbguard.integrity.verify import VerifyReport, verify_kb
from kbguard.operations.drill import DrillReport, DrillResult, DrillStep, drill_kb
from kbguard.operations.estimate import EstimateReport, Scenario
from kbguard.operations.estimate import estimate as estimate_rebuild
from kbguard.operations.report import ReportResult, write_report
from kbguard.operations.runbook import render_runbook
from kbguard.operations.search import SearchHit, SearchResult
from kbguard.operations.search import search as search_kb
from kbguard.operations.status import StatusReport, kb_status
from kbguard.recovery.restore import RestoreReport
from kbguard.recovery.restore import restore as restore_snapshot
from kbguard.recovery.snapshot import (
    CreateReport,
    PruneReport,
    SnapshotCheck,
    create_snapshot,
    list_snapshots,
    prune_snapshots,
    verify_snapshot,
)
from kbguard.snapshot_format import SnapshotEntry

# No public name is also a module's name (kbguard.ingest.rebuild, kbguard.integrity.verify, ...): a function
# bound over a submodule would break `import kbguard.integrity.verify as v` and monkeypatching.
__all__ = [
    "load_config", "init_config", "Config",
    "rebuild_kb", "RebuildReport", "kb_status", "StatusReport", "search_kb", "SearchResult", "SearchHit",
    "verify_kb", "VerifyReport", "Verdict", "repair_kb", "RepairReport",
    "create_snapshot", "list_snapshots", "verify_snapshot", "prune_snapshots",
    "CreateReport", "SnapshotEntry", "SnapshotCheck", "PruneReport",
    "restore_snapshot", "RestoreReport",
    "estimate_rebuild", "EstimateReport", "Scenario", "render_runbook",
    "write_report", "ReportResult",
    "drill_kb", "DrillReport", "DrillResult", "DrillStep",
    "KbguardError", "ConfigError", "CorpusError", "LockedError", "ManifestError", "ParseError",
    "EmbedError", "ProviderUnavailable", "StoreError", "StoreUnavailable", "SnapshotError",
    "SnapshotDamaged", "RestoreNeeded", "RestorePending",
]
