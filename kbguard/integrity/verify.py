"""Verify: compare store, manifest and corpus, and name every difference by class.

The check reads only. It opens the manifest read-only, walks the chunks it wants in batches,
each chunk joined to its cached vectors (memory bounded by the batch, and DuckDB's join by
JOIN_BYTES), fetches those points from the store by id as matrices and compares them with what
the manifest says they should be: payload, content hash, and the vector bit for bit against the
embedding cache (cached vectors are normalised float32, which both stores keep exactly). Points
the store holds beyond the manifest's are found from the count, and listed by an id-only scroll
only when the counts disagree. At the end one short write transaction records the check in the
manifest's history (``runs`` + ``findings``); nothing else is ever written.

``check_kb`` runs one function per check (the cache's checksums, the corpus, then with the store
open: the points, orphans, the sampled re-embedding, the canaries); each returns a
``CheckResult`` of its findings and the repair-plan items they call for, and ``check_kb`` adds
them up into the report and the plan.

Each point gets at most one vector class, in this order: invalid (NaN, inf, zero, wrong
dimension, missing) > stale (the payload's content hash is another text's: its vector is that
text's too) > wrong space (the vector equals a cached vector of another model) > corruption.
Payload damage is judged on its own. The sampled re-embedding looks only at points that passed
every other check, so one injected fault is reported by exactly one class.

``kbguard.integrity.repair`` heals what this finds.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from kbguard.config import Config, SpaceConfig
from kbguard.core.disk import not_writable
from kbguard.core.outcome import Verdict
from kbguard.core.progress import SILENT, Progress
from kbguard.core.redact import redact_url
from kbguard.errors import DiskFullError, KbguardError, ManifestError, ManifestReadOnly, StoreError
from kbguard.ingest.dvc_corpus import dvc_view
from kbguard.ingest.plan import point_payload
from kbguard.ingest.scan import scan_corpus
from kbguard.kb.preflight import Lock, Needs, preflight, unbuilt
from kbguard.manifest import Manifest, now, vector_checksum
from kbguard.providers import chain_for, spent, spent_since
from kbguard.providers.base import normalize
from kbguard.store import PointArrays, Store, VectorSpec, store_for, vector_specs

BATCH = 1024                  # chunks per comparison batch: the memory bound of a check
JOIN_BYTES = 64 << 20         # cached vectors DuckDB holds at once to join them to the chunks
MAX_EXAMPLES = 5
DRIFT_MIN_COSINE = 0.999      # fresh vs stored embedding of the same text by the same model
RENORM_ATOL = 1e-6            # stored vs cached, where the store had to normalise the vector

# name -> the fix to apply. The order is the report's order.
FINDINGS: dict[str, str] = {
    "store_unreadable": "The store cannot be opened: this needs a restore, not a repair. Run "
                        "`kbguard restore --latest`, or `kbguard rebuild --full` to rebuild it "
                        "from the embedding cache.",
    "manifest_damage": "Cache rows that fail their checksum (or are gone) are re-embedded by "
                       "`kbguard verify --repair`; an unreadable manifest file needs "
                       "`kbguard restore --latest`.",
    "config_drift": "The collection's vectors differ from the config: `kbguard verify --repair` "
                    "recreates it and refills it from the embedding cache.",
    "missing_points": "`kbguard verify --repair` writes them from the embedding cache.",
    "orphan_points": "`kbguard verify --repair` deletes them.",
    "stale_points": "`kbguard verify --repair` rewrites them from the manifest and the cache.",
    "vector_corruption": "`kbguard verify --repair` rewrites the cached vectors.",
    "invalid_vectors": "`kbguard verify --repair` rewrites the cached vectors.",
    "wrong_space": "These points hold another model's vectors: `kbguard verify --repair` "
                   "rewrites them from this space's cache (embedding what it lacks).",
    "payload_damage": "`kbguard verify --repair` rewrites the payloads from the manifest.",
    "corpus_changed": "The corpus changed since the last build: run `kbguard rebuild`.",
    "embedding_drift": "Fresh embeddings differ from the stored and cached ones: the cache holds "
                       "another model's vectors. `kbguard verify --repair --deep` re-embeds the "
                       "texts found; if many drift, re-embed the whole space.",
    "canary_failures": "A canary query missed its expected documents: check that those "
                       "documents are indexed (`kbguard status`) and that the canary is right.",
}
STORE_CLASSES = ("config_drift", "missing_points", "orphan_points", "stale_points",
                 "vector_corruption", "invalid_vectors", "wrong_space", "payload_damage")


@dataclass
class Finding:
    name: str
    count: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    checked: bool = True

    def add(self, example: dict[str, Any], n: int = 1) -> None:
        self.count += n
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    def absorb(self, other: Finding) -> None:
        """Add ``other``'s count, and its examples after these (up to MAX_EXAMPLES in all)."""
        self.count += other.count
        self.examples.extend(other.examples[:MAX_EXAMPLES - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "checked": self.checked, "fix": FINDINGS[self.name],
                "examples": self.examples}


@dataclass
class VerifyReport:
    kb: str
    checked_at: str
    findings: dict[str, Finding]
    seconds: float = 0.0
    points_checked: int = 0
    store_points: int | None = None
    manifest_points: int | None = None
    sampled: int = 0
    errors: list[str] = field(default_factory=list)   # parts that could not be checked
    notes: list[str] = field(default_factory=list)
    run_id: int | None = None
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)   # coverage and debt
    # what the check's embedding cost, by (space, provider): recorded in the ledger
    usage: dict[tuple[Any, str], Any] = field(default_factory=dict, repr=False)
    # DuckDB could not read the manifest: the check cannot be recorded in it either
    manifest_unreadable: bool = False

    @property
    def total(self) -> int:
        return sum(f.count for f in self.findings.values())

    @property
    def healthy(self) -> bool:
        return self.total == 0 and not self.errors

    @property
    def verdict(self) -> Verdict:
        """Findings win over a part that could not be checked; nothing wrong is healthy."""
        if self.total:
            return Verdict.FINDINGS
        return Verdict.COULD_NOT_CHECK if self.errors else Verdict.HEALTHY

    def counts(self) -> dict[str, int]:
        return {name: f.count for name, f in self.findings.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kb": self.kb, "healthy": self.healthy, "verdict": self.verdict.name.lower(),
            "exit_code": int(self.verdict),
            "checked_at": self.checked_at, "seconds": self.seconds,
            "points_checked": self.points_checked, "store_points": self.store_points,
            "manifest_points": self.manifest_points, "sampled": self.sampled,
            "total_findings": self.total, "run_id": self.run_id,
            "findings": {name: f.to_dict() for name, f in self.findings.items()},
            "errors": self.errors, "notes": self.notes, "spaces": self.spaces,
            "cost": {"tokens": sum(u.tokens for u in self.usage.values()),
                     "usd": round(sum(u.cost_usd for u in self.usage.values()), 6)},
        }


@dataclass
class RepairPlan:
    """Everything a repair must touch, by id (bounded by the damage, not the KB)."""

    rewrite: set[str] = field(default_factory=set)               # point ids
    delete: set[str] = field(default_factory=set)                # orphan point ids
    recache: set[tuple[str, str]] = field(default_factory=set)   # (space_id, content_hash)
    recreate: bool = False                                       # config drift
    create: bool = False                                         # collection missing
    store_unreadable: bool = False
    manifest_unreadable: bool = False

    def merge(self, other: RepairPlan) -> None:
        self.rewrite |= other.rewrite
        self.delete |= other.delete
        self.recache |= other.recache
        self.recreate |= other.recreate
        self.create |= other.create
        self.store_unreadable |= other.store_unreadable
        self.manifest_unreadable |= other.manifest_unreadable


@dataclass(frozen=True)
class CheckOptions:
    sample: int = 0          # re-embed this many random points and compare
    deep: bool = False       # re-embed every point and compare
    canaries: bool = True
    corpus: bool = True
    seed: int | None = None


@dataclass
class CheckResult:
    """What one check (or one batch of a streamed check) found, and what a repair must do.

    Every check returns one; ``check_kb`` adds them up, in order, into the report and the plan.
    """

    findings: dict[str, Finding] = field(default_factory=dict)   # only the classes it found
    plan: RepairPlan = field(default_factory=RepairPlan)
    unchecked: list[str] = field(default_factory=list)           # classes it could not judge
    points_checked: int = 0
    sampled: int = 0
    store_points: int | None = None
    manifest_points: int | None = None
    errors: list[str] = field(default_factory=list)              # parts that could not be checked
    notes: list[str] = field(default_factory=list)
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)  # coverage and debt

    def add(self, name: str, example: dict[str, Any]) -> None:
        finding = self.findings.get(name)
        if finding is None:
            finding = self.findings[name] = Finding(name)
        finding.add(example)

    def merge(self, other: CheckResult) -> None:
        """Take in ``other``, found after this: its examples come after this one's."""
        for name, finding in other.findings.items():
            self.findings.setdefault(name, Finding(name)).absorb(finding)
        self.plan.merge(other.plan)
        self.unchecked += other.unchecked
        self.points_checked += other.points_checked
        self.sampled += other.sampled
        if other.store_points is not None:
            self.store_points = other.store_points
        if other.manifest_points is not None:
            self.manifest_points = other.manifest_points
        self.errors += other.errors
        self.notes += other.notes


class ReembedPoint(NamedTuple):
    """A point whose stored vector is compared with a fresh embedding of its text."""

    point_id: str
    path: str
    content_hash: str
    space: SpaceConfig
    text: str
    stored: np.ndarray


def verify_kb(cfg: Config, *, sample: int = 0, deep: bool = False,
              progress: Progress = SILENT, record: bool = True) -> VerifyReport:
    """Check the KB of ``cfg`` and record the check in its manifest; never changes the KB.

    Holds the KB lock for the check, so a rebuild cannot change the KB halfway through it (and a
    check never waits: a busy KB raises LockedError at once). A check that cannot run raises a
    KbguardError; one that runs returns its report, whatever it found.
    """
    if sample < 0:
        raise KbguardError(f"--sample must be 0 or more, got {sample}.")
    nothing = unbuilt("There is nothing to check against; run `kbguard rebuild`.")
    with preflight(cfg, Needs("verify", manifest=nothing, lock=Lock.READ)):
        report, _ = check_kb(cfg, CheckOptions(sample=sample, deep=deep), progress)
        if record:
            record_check(cfg, report, kind="verify")
    return report


# -- the check -----------------------------------------------------------------------------

def check_kb(cfg: Config, opts: CheckOptions = CheckOptions(),
             progress: Progress = SILENT) -> tuple[VerifyReport, RepairPlan]:
    """One read-only check: the report and the repair plan. The caller holds the KB lock."""
    t0 = time.perf_counter()
    checked_at = now().isoformat(timespec="seconds")
    before = spent(cfg.spaces)  # sampled re-embedding and canary queries are billed too
    try:
        found = _run_checks(cfg, opts, progress)
    finally:
        progress.close()
    if not opts.deep and not opts.sample:
        found.unchecked.append("embedding_drift")
    findings = _empty_findings()
    for name, finding in found.findings.items():
        findings[name].absorb(finding)
    for name in found.unchecked:
        findings[name].checked = False
    report = VerifyReport(cfg.kb, checked_at, findings,
                          seconds=round(time.perf_counter() - t0, 3),
                          points_checked=found.points_checked, store_points=found.store_points,
                          manifest_points=found.manifest_points, sampled=found.sampled,
                          errors=found.errors, notes=found.notes, spaces=found.spaces,
                          usage=spent_since(before),
                          manifest_unreadable=found.plan.manifest_unreadable)
    return report, found.plan


def _empty_findings() -> dict[str, Finding]:
    return {name: Finding(name) for name in FINDINGS}


def _run_checks(cfg: Config, opts: CheckOptions, progress: Progress) -> CheckResult:
    """The manifest's cache, the corpus, then the store: each check's result, in that order."""
    path = cfg.manifest
    try:
        manifest = Manifest.open(path, read_only=True)
    except ManifestError as exc:
        if exc.engine_error is None:
            raise  # empty, another KB's, a schema this kbguard cannot read: could not check
        found = manifest_unreadable(cfg, exc.engine_error)
        found.unchecked += [name for name in FINDINGS if name != "manifest_damage"]
        return found
    with manifest:
        have = manifest.get_meta("kb")
        if have != cfg.kb:
            raise ManifestError(f"{path} belongs to KB {have!r}, but the config names KB "
                                f"{cfg.kb!r}. Point manifest.path at this KB's manifest.")
        found = CheckResult()
        try:
            damaged = damaged_cache_rows(cfg, manifest)
            found.merge(cache_findings(manifest, damaged))
            if opts.corpus:
                found.merge(check_corpus(cfg, manifest))
            else:
                found.unchecked.append("corpus_changed")
            found.merge(check_store(cfg, manifest, opts, damaged, progress))
            found.spaces = space_coverage(cfg, manifest)
        except ManifestError as exc:
            if exc.engine_error is None:
                raise
            found.merge(manifest_unreadable(cfg, exc.engine_error))
    return found


def space_coverage(cfg: Config, manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Each space's share of chunks with a vector, and its debt in texts: a space whose
    providers were down is incomplete, which is not damage (the next rebuild fills it)."""
    chunks = manifest.chunks.count()
    out = {}
    for space in cfg.spaces:
        behind, debt = manifest.cache.debt(space.space_id)
        out[space.name] = {"coverage": round(1 - behind / chunks, 6) if chunks else 1.0,
                           "debt": debt}
    return out


# -- manifest --------------------------------------------------------------------------------

def manifest_unreadable(cfg: Config, engine_error: str) -> CheckResult:
    """The manifest file cannot be read (``engine_error``: what DuckDB said): a finding, and a
    restore rather than a repair."""
    found = CheckResult(plan=RepairPlan(manifest_unreadable=True))
    found.add("manifest_damage", {"manifest": str(cfg.manifest),
                                  "error": f"the DuckDB file cannot be read: {engine_error}"})
    return found


def damaged_cache_rows(cfg: Config, manifest: Manifest) -> dict[tuple[str, str], str]:
    """Every cache row against its checksum (and configured spaces' rows against dim).

    Returns (space_id, content_hash) -> what is wrong, for the rows that fail.
    """
    dims = {s.space_id: s.dim for s in cfg.spaces}
    damaged: dict[tuple[str, str], str] = {}
    for batch in manifest.cache.rows(8192):
        cols = batch.to_pydict()
        for space_id, h, blob, checksum in zip(cols["space_id"], cols["content_hash"],
                                               cols["vector"], cols["checksum"], strict=True):
            if vector_checksum(blob) != checksum:
                damaged[(space_id, h)] = "checksum fails"
            elif space_id in dims and len(blob) != 4 * dims[space_id]:
                damaged[(space_id, h)] = (
                    f"{len(blob) // 4} values, the space has {dims[space_id]}")
    return damaged


def cache_findings(manifest: Manifest, damaged: dict[tuple[str, str], str]) -> CheckResult:
    """The damaged cache rows as findings, each with a document that uses it; all re-embedded."""
    found = CheckResult()
    if not damaged:
        return found
    keys = sorted(damaged)
    paths = manifest.chunks.first_paths([h for _, h in keys[:50]])
    for space_id, h in keys:
        found.add("manifest_damage", {"space": space_id, "content_hash": h,
                                      "path": paths.get(h),
                                      "error": f"cached vector {damaged[(space_id, h)]}"})
        found.plan.recache.add((space_id, h))
    return found


# -- corpus ----------------------------------------------------------------------------------

def check_corpus(cfg: Config, manifest: Manifest) -> CheckResult:
    """Documents added, removed or changed since the last build."""

    known = manifest.documents.by_path()
    try:
        view = dvc_view(cfg.corpus)
        scan = scan_corpus(cfg.corpus, cfg.include, cfg.exclude, known,
                           dvc_hashes=view.hashes if view else None)
    except KbguardError as exc:
        return CheckResult(unchecked=["corpus_changed"], errors=[f"corpus not checked: {exc}"])
    found = CheckResult()
    for path in sorted(set(scan.files) | set(known)):
        now_f, was = scan.files.get(path), known.get(path)
        if was is None:
            found.add("corpus_changed", {"path": path, "change": "added"})
        elif now_f is None:
            found.add("corpus_changed", {"path": path, "change": "removed"})
        elif now_f.file_hash is None:
            continue  # refused (unreadable, symlink out): a rebuild would refuse it too
        elif was.status == "ok" and was.indexed_hash != now_f.file_hash:
            found.add("corpus_changed", {"path": path, "change": "changed"})
        elif was.status != "ok" and was.file_hash != now_f.file_hash:
            found.add("corpus_changed", {"path": path,
                                         "change": "changed since it failed to parse"})
    return found


# -- store -----------------------------------------------------------------------------------

def check_store(cfg: Config, manifest: Manifest, opts: CheckOptions,
                damaged: dict[tuple[str, str], str], progress: Progress) -> CheckResult:
    """Everything that needs the store: the points against manifest and cache, orphans, the
    sampled re-embedding and the canaries.

    The streamed checks are taken in batch by batch, so what was found before the manifest
    fails to read halfway is kept. A store that fails to read makes all of it unjudged.
    """

    wanted = manifest.chunks.count()
    found = CheckResult(manifest_points=wanted)
    store = store_for(cfg)
    try:
        try:
            info = store.describe()
            if not info.exists:
                found.store_points = 0
                found.notes.append("the collection does not exist")
                found.plan.create = True
                for part in all_missing(manifest):
                    found.merge(part)
                if cfg.canaries:
                    found.unchecked.append("canary_failures")
                    found.notes.append("canaries not run: the collection does not exist")
                return found
            found.store_points = info.points
            found.merge(config_drift(cfg, info.vectors))
            spaces = comparable_spaces(cfg, info.vectors)
            to_reembed: list[ReembedPoint] = []
            for part, reembed in compare_points(cfg, manifest, store, spaces, damaged, opts,
                                                progress, wanted):
                found.merge(part)
                to_reembed += reembed
                if len(to_reembed) >= BATCH:
                    found.merge(check_drift(to_reembed))
                    to_reembed = []
            if found.points_checked < info.points:
                for part in find_orphans(manifest, store):
                    found.merge(part)
            found.merge(check_drift(to_reembed))
            found.merge(check_canaries(cfg, store))
        except StoreError as exc:
            return _store_unreadable(cfg, exc, found)
        except ManifestError as exc:
            if exc.engine_error is None:
                raise
            found.merge(manifest_unreadable(cfg, exc.engine_error))
    finally:
        with contextlib.suppress(StoreError):
            store.close()
    return found


def _store_unreadable(cfg: Config, exc: StoreError, before: CheckResult) -> CheckResult:
    """The store failed to read: none of its classes is judged, and only the cache rows that
    need re-embedding stay in the plan."""
    unjudged = (*STORE_CLASSES, "canary_failures", "embedding_drift")
    found = CheckResult(
        findings={n: f for n, f in before.findings.items() if n not in unjudged},
        plan=RepairPlan(recache=before.plan.recache, store_unreadable=True),
        unchecked=list(unjudged), sampled=before.sampled, store_points=before.store_points,
        manifest_points=before.manifest_points, errors=before.errors, notes=before.notes)
    where = redact_url(cfg.store_url) if cfg.store_url else str(cfg.store_path)
    found.add("store_unreadable", {"store": where, "error": str(exc)})
    return found


def all_missing(manifest: Manifest) -> Iterator[CheckResult]:
    """Every chunk as a missing point (the collection is gone), a batch at a time."""
    for batch in manifest.chunks.points_by_path(BATCH):
        found = CheckResult()
        cols = batch.to_pydict()
        for pid, path in zip(cols["point_id"], cols["path"], strict=True):
            found.add("missing_points", {"point_id": pid, "path": path})
            found.plan.rewrite.add(pid)
        yield found


def config_drift(cfg: Config, have: tuple[VectorSpec, ...]) -> CheckResult:
    """The collection's vectors against the config's, per vector name."""

    want = {s.name: s for s in vector_specs(cfg)}
    got = {s.name: s for s in have}
    found = CheckResult()
    for name in sorted(set(want) | set(got)):
        w, g = want.get(name), got.get(name)
        if w == g:
            continue
        if g is None:
            found.add("config_drift", {"vector": name, "config": _spec(w), "store": "absent"})
        elif w is None:
            found.add("config_drift", {"vector": name or "(unnamed)", "config": "absent",
                                       "store": _spec(g)})
        else:
            found.add("config_drift", {"vector": name, "config": _spec(w), "store": _spec(g)})
    if found.findings:
        found.plan.recreate = True
    return found


def comparable_spaces(cfg: Config, have: tuple[VectorSpec, ...]) -> list[SpaceConfig]:
    """The configured spaces whose vectors the collection holds with the right dimension."""
    got = {s.name: s for s in have}
    return [s for s in cfg.spaces if s.name in got and got[s.name].dim == s.dim]


def compare_points(cfg: Config, manifest: Manifest, store: Store, spaces: list[SpaceConfig],
                   damaged: dict[tuple[str, str], str], opts: CheckOptions, progress: Progress,
                   wanted: int) -> Iterator[tuple[CheckResult, list[ReembedPoint]]]:
    """Compare every wanted point with the store, a batch at a time.

    Yields each batch's findings (``points_checked``: the points the store holds) and the points
    of it to re-embed, the ones sampled (or all, with ``deep``) that passed every other check.
    """

    progress.stage("verify points", wanted)
    sample_ids = sample_points(manifest, opts)
    dims = {s.name: s.dim for s in spaces}
    store.will_read_all()
    missing_cache: set[tuple[str, str]] = set()   # reported once, however many points use it
    for batch in _chunks_with_cache(manifest, spaces):
        found = CheckResult()
        cols = batch.to_pydict()
        ids = cols["point_id"]
        got = store.retrieve_arrays(ids, dims)
        where = {pid: row for row, pid in enumerate(got.ids)}
        rows = list(zip(ids, cols["path"], cols["content_hash"], cols["occurrence"],
                        cols["section"], cols["text"], strict=True))
        at = np.full(len(rows), -1, dtype=np.intp)   # the store row to compare vectors
        skip: set[str] = set()          # missing or stale: no vector check
        for i, (pid, path, h, occ, section, text) in enumerate(rows):
            j = where.get(pid)
            if j is None:
                found.add("missing_points", {"point_id": pid, "path": path})
                found.plan.rewrite.add(pid)
                skip.add(pid)
                continue
            payload = got.payloads[j]
            stored_hash = payload.get("content_hash")
            if isinstance(stored_hash, str) and stored_hash != h:
                found.add("stale_points", {"point_id": pid, "path": path,
                                           "store": stored_hash, "manifest": h})
                found.plan.rewrite.add(pid)
                skip.add(pid)
                continue
            if payload != point_payload(cfg.kb, path, h, occ, section, text):
                found.add("payload_damage", {"point_id": pid, "path": path,
                                             "keys": _payload_diff(payload, path, h, occ,
                                                                   section, text, cfg.kb)})
                found.plan.rewrite.add(pid)
            at[i] = j
        if skip:  # a point id the manifest lists twice is skipped as a whole
            for i, row in enumerate(rows):
                if row[0] in skip:
                    at[i] = -1
        for k, space in enumerate(spaces):
            vectors = compare_vectors(manifest, space, rows, at, got, cols[f"cached{k}"], damaged,
                                      missing_cache)
            missing_cache |= vectors.plan.recache
            found.merge(vectors)
        reembed: list[ReembedPoint] = []
        if opts.deep or sample_ids:
            flagged = found.plan.rewrite   # a point with any finding is not re-embedded
            for pid, path, h, *_rest, text in rows:
                j = where.get(pid)
                if pid in flagged or j is None:
                    continue
                if opts.deep or pid in sample_ids:
                    for space in spaces:
                        vec = got.vector(space.name, j)
                        if vec is not None:
                            reembed.append(ReembedPoint(pid, path, h, space, text, np.array(vec)))
        found.points_checked = len(where)
        progress.advance(len(rows))
        yield found, reembed


def _chunks_with_cache(manifest: Manifest, spaces: list[SpaceConfig]) -> Iterator[Any]:
    """Every chunk in Arrow batches of BATCH rows, each row with its cached vector of every
    space (``cached0``, ``cached1``, ...; null where the cache has none).

    One hash join per pass, instead of a lookup per batch that would scan the whole cache
    each time. The join holds its cached vectors in DuckDB's memory, so the cache is split
    into passes of about JOIN_BYTES of vectors each by a hash of the content hash.
    """
    ids = [s.space_id for s in spaces]
    cache_bytes = sum(4 * s.dim * manifest.cache.count(s.space_id) for s in spaces)
    passes = max(1, -(-cache_bytes // JOIN_BYTES))
    for p in range(passes):
        yield from manifest.cache.chunks_with_vectors(ids, passes=passes, part=p,
                                                      batch_size=BATCH)


def compare_vectors(manifest: Manifest, space: SpaceConfig, rows: list[tuple[Any, ...]],
                    at: np.ndarray,
                    got: PointArrays, blobs: list[bytes | None],
                    damaged: dict[tuple[str, str], str],
                    missing_cache: set[tuple[str, str]]) -> CheckResult:
    """Check the ``space`` vector of every row with a store row in ``at`` (-1: none).

    The rows whose stored vector is finite, non-zero and bit for bit their cached vector
    pass as whole matrices; only the others are looked at one by one, to name what is wrong.
    A cache row in ``missing_cache`` was already reported missing by an earlier batch.
    """
    found = CheckResult()
    dim, name = space.dim, space.name
    size = 4 * dim
    check = np.flatnonzero(at >= 0).tolist()
    fast: list[int] = []
    fast_blobs: list[bytes] = []
    for i in check:
        blob = blobs[i]
        if blob is not None and len(blob) == size and not (
                damaged and (space.space_id, rows[i][2]) in damaged):
            fast.append(i)
            fast_blobs.append(blob)
    passed = np.zeros(len(rows), dtype=bool)
    if fast:
        idx = np.asarray(fast, dtype=np.intp)
        where = at[idx]
        stored = got.vectors[name][where]
        expected = np.frombuffer(b"".join(fast_blobs), dtype="<f4").reshape(len(fast), dim)
        good = (got.present[name][where] & (stored == expected).all(axis=1)
                & np.isfinite(stored).all(axis=1) & stored.any(axis=1))
        passed[idx[good]] = True
    # (pid, path, h, stored, cached) for points whose vector can be compared
    todo: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
    for i in check:
        if passed[i]:
            continue
        pid, path, h, *_ = rows[i]
        vec = got.vector(name, int(at[i]))
        if vec is None and blobs[i] is None and (space.space_id, h) not in damaged:
            continue  # never embedded in this space: its debt (coverage), not damage
        problem = None
        if vec is None:
            problem = f"no {name!r} vector"
        elif vec.shape != (dim,):
            problem = f"{vec.size} values, the space has {dim}"
        elif not np.isfinite(vec).all():
            problem = "NaN or infinite values"
        elif not vec.any():
            problem = "zero vector"
        if problem or vec is None:  # None always has a problem: said again for mypy
            found.add("invalid_vectors", {"point_id": pid, "path": path,
                                          "vector": name, "problem": problem})
            found.plan.rewrite.add(pid)
            continue
        if (space.space_id, h) in damaged:
            found.plan.rewrite.add(pid)  # its cached vector is re-embedded, then rewritten
            continue
        blob = blobs[i]
        if blob is None:
            key = (space.space_id, h)
            if key not in missing_cache and key not in found.plan.recache:
                found.plan.recache.add(key)
                found.add("manifest_damage", {"space": space.space_id, "content_hash": h,
                                              "path": path, "error": "cached vector missing"})
            found.plan.rewrite.add(pid)
            continue
        todo.append((pid, path, h, vec, np.frombuffer(blob, dtype="<f4")))
    if not todo:
        return found
    stored = np.stack([t[3] for t in todo])
    expected = np.stack([t[4] for t in todo])
    same = (stored == expected).all(axis=1)
    # A cached vector that is not unit length is normalised by a cosine store: compare
    # with the normalised vector, within float32 round-off.
    norms = np.linalg.norm(expected.astype(np.float64), axis=1)
    renorm = ~same & (np.abs(norms - 1.0) > 1e-6)
    if renorm.any():
        unit = (expected[renorm] / norms[renorm, None]).astype(np.float32)
        close = (np.abs(stored[renorm] - unit) <= RENORM_ATOL).all(axis=1)
        same[np.flatnonzero(renorm)[close]] = True
    for k in np.flatnonzero(~same):
        pid, path, h, vec, _ = todo[k]
        other = _other_space(manifest, space, h, vec)
        if other:
            found.add("wrong_space", {"point_id": pid, "path": path,
                                      "vector": name, "holds": other,
                                      "config": space.space_id})
        else:
            diff = np.abs(vec.astype(np.float64) - expected[k])
            found.add("vector_corruption", {
                "point_id": pid, "path": path, "vector": name,
                "components_differing": int((diff > 0).sum()),
                "max_abs_diff": float(diff.max())})
        found.plan.rewrite.add(pid)
    return found


def _other_space(manifest: Manifest, space: SpaceConfig, h: str, vec: np.ndarray) -> str | None:
    """The other embedding space whose cached vector of this text the store holds."""
    for space_id, blob in manifest.cache.other_spaces(h, space.space_id):
        other = np.frombuffer(blob, dtype="<f4")
        if other.shape == vec.shape and (other == vec).all():
            return space_id
    return None


def find_orphans(manifest: Manifest, store: Store) -> Iterator[CheckResult]:
    """The points the store holds and the manifest does not, a page at a time."""
    for page in store.scroll(batch_size=BATCH, with_vectors=False):
        found = CheckResult()
        ids = [p.id for p in page]
        known = manifest.chunks.known(ids)
        for p in page:
            if p.id not in known:
                found.add("orphan_points", {"point_id": p.id, "path": p.payload.get("path")})
                found.plan.delete.add(p.id)
        yield found


# -- sampled re-embedding ------------------------------------------------------------------

def sample_points(manifest: Manifest, opts: CheckOptions) -> set[str]:
    """The ids of ``opts.sample`` random points to re-embed (none with ``deep``: it takes all)."""
    n = opts.sample
    if opts.deep or not n:
        return set()
    if n >= manifest.chunks.count():
        return set(manifest.chunks.point_ids())
    # reservoir over the ids, so memory stays at n ids
    rng = random.Random(opts.seed)
    chosen: list[str] = []
    seen = 0
    for batch in manifest.chunks.point_id_batches(8192):
        for pid in batch.column(0).to_pylist():
            seen += 1
            if len(chosen) < n:
                chosen.append(pid)
            else:
                j = rng.randrange(seen)
                if j < n:
                    chosen[j] = pid
    return set(chosen)


def reembed_cosines(points: list[ReembedPoint]
                    ) -> Iterator[tuple[SpaceConfig, list[ReembedPoint], np.ndarray]]:
    """Re-embed the texts of ``points`` with their spaces' chains: per space, its points and
    the cosine of each one's stored vector with the fresh one."""
    by_space: dict[SpaceConfig, list[ReembedPoint]] = {}
    for point in points:
        by_space.setdefault(point.space, []).append(point)
    for space, items in by_space.items():
        fresh = chain_for(space).embed_batch([p.text for p in items])
        fresh = normalize(np.asarray(fresh, dtype=np.float32))
        stored = normalize(np.stack([p.stored for p in items]))
        yield space, items, (fresh.astype(np.float64) * stored).sum(axis=1)


def check_drift(points: list[ReembedPoint]) -> CheckResult:
    """Re-embed the texts of ``points`` and compare with their stored vectors."""

    found = CheckResult()
    for space, items, cos in reembed_cosines(points):
        found.sampled += len(items)
        for i in np.flatnonzero(cos < DRIFT_MIN_COSINE):
            p = items[i]
            found.add("embedding_drift", {"point_id": p.point_id, "path": p.path,
                                          "vector": space.name,
                                          "cosine": round(float(cos[i]), 4)})
            found.plan.rewrite.add(p.point_id)
            found.plan.recache.add((space.space_id, p.content_hash))
    return found


# -- canaries --------------------------------------------------------------------------------

def check_canaries(cfg: Config, store: Store) -> CheckResult:
    """Each canary query must find its expected documents in its top k."""

    found = CheckResult()
    for c in cfg.canaries:
        space = cfg.space(c.space) if c.space else cfg.spaces[0]
        vec = chain_for(space).embed_batch([c.query])[0]
        hits = store.query(space.name, vec, c.k)
        top_k = [str(h.payload.get("path")) for h in hits]
        missing = [p for p in c.expect if p not in top_k]
        if missing:
            found.add("canary_failures", {"query": c.query, "expected": list(c.expect),
                                          "missing": missing, "top_k": top_k})
    return found


def _spec(s: Any) -> str:
    return f"{s.dim}-d {s.distance}"


def _payload_diff(payload: dict[str, Any], path: str, h: str, occ: int, section: str,
                  text: str, kb: str) -> list[str]:

    want = point_payload(kb, path, h, occ, section, text)
    return sorted(k for k in set(want) | set(payload) if payload.get(k, object()) != want.get(k))


# -- history -------------------------------------------------------------------------------

def record_check(cfg: Config, report: VerifyReport, *, kind: str) -> None:
    """Write the check into the manifest's history in one short transaction.

    Nothing is recorded when the manifest itself is unreadable; a note says so.
    """
    if report.manifest_unreadable:
        report.notes.append("the check is not recorded: the manifest cannot be read")
        return
    status = "ok" if report.healthy else ("findings" if report.total else "failed")
    summary = {"counts": report.counts(), "total_findings": report.total,
               "points_checked": report.points_checked, "seconds": report.seconds,
               "sampled": report.sampled, "errors": report.errors, "verdict": report.verdict.name.lower()}
    started = datetime.fromisoformat(report.checked_at)
    last_exc: Exception | None = None
    for _ in range(20):
        try:
            with Manifest.open(cfg.manifest) as m, m.transaction():
                run_id = m.checks.record(
                    kind, started, status, summary,
                    [(name, f.count, f.examples) for name, f in report.findings.items()])
                for (space, provider), usage in report.usage.items():
                    m.ledger.record(run_id, kind, space, provider, usage)
            report.run_id = run_id
            return
        except ManifestReadOnly:
            # waiting does not help here, and the check itself stands
            report.notes.append("the check is not recorded: the manifest cannot be written ("
                                f"{not_writable(cfg.manifest) or 'read-only'})")
            return
        except DiskFullError as exc:
            report.notes.append(f"the check is not recorded: {exc}")
            return
        except ManifestError as exc:
            # a reader that opened the manifest before this check took the lock: wait for it
            last_exc = exc
            time.sleep(0.25)
    report.notes.append(f"the check is not recorded: {last_exc}")

