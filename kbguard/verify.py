"""Verify: compare store, manifest and corpus, and name every difference by class.

The check reads only. It opens the manifest read-only, walks the chunks it wants in batches,
each chunk joined to its cached vectors (memory bounded by the batch, and DuckDB's join by
JOIN_BYTES), fetches those points from the store by id as matrices and compares them with what
the manifest says they should be: payload, content hash, and the vector bit for bit against the
embedding cache (cached vectors are normalised float32, which both stores keep exactly). Points
the store holds beyond the manifest's are found from the count, and listed by an id-only scroll
only when the counts disagree. At the end one short write transaction records the check in the
manifest's history (``runs`` + ``findings``); nothing else is ever written.

Each point gets at most one vector class, in this order: invalid (NaN, inf, zero, wrong
dimension, missing) > stale (the payload's content hash is another text's: its vector is that
text's too) > wrong space (the vector equals a cached vector of another model) > corruption.
Payload damage is judged on its own. The sampled re-embedding looks only at points that passed
every other check, so one injected fault is reported by exactly one class.

``kbguard.repair`` heals what this finds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import numpy as np

from kbguard.config import Config, SpaceConfig
from kbguard.errors import KbguardError, ManifestError, StoreError, StoreUnavailable
from kbguard.lock import kb_lock
from kbguard.manifest import Manifest, now, vector_checksum
from kbguard.recovery import missing_manifest
from kbguard.progress import SILENT, Progress
from kbguard.store import PointArrays

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

    @property
    def total(self) -> int:
        return sum(f.count for f in self.findings.values())

    @property
    def healthy(self) -> bool:
        return self.total == 0 and not self.errors

    @property
    def exit_code(self) -> int:
        """0 healthy, 1 findings, 2 could not check (some part, with no finding elsewhere)."""
        if self.total:
            return 1
        return 2 if self.errors else 0

    def counts(self) -> dict[str, int]:
        return {name: f.count for name, f in self.findings.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kb": self.kb, "healthy": self.healthy, "exit_code": self.exit_code,
            "checked_at": self.checked_at, "seconds": self.seconds,
            "points_checked": self.points_checked, "store_points": self.store_points,
            "manifest_points": self.manifest_points, "sampled": self.sampled,
            "total_findings": self.total, "run_id": self.run_id,
            "findings": {name: f.to_dict() for name, f in self.findings.items()},
            "errors": self.errors, "notes": self.notes,
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


@dataclass(frozen=True)
class CheckOptions:
    sample: int = 0          # re-embed this many random points and compare
    deep: bool = False       # re-embed every point and compare
    canaries: bool = True
    corpus: bool = True
    seed: int | None = None


def verify_kb(cfg: Config, *, sample: int = 0, deep: bool = False,
              progress: Progress = SILENT, record: bool = True) -> VerifyReport:
    """Check the KB of ``cfg`` and record the check in its manifest; never changes the KB.

    Holds the KB lock for the check, so a rebuild cannot change the KB halfway through it (and a
    check never waits: a busy KB raises LockedError at once). A check that cannot run raises a
    KbguardError; one that runs returns its report, whatever it found.
    """
    if sample < 0:
        raise KbguardError(f"--sample must be 0 or more, got {sample}.")
    if not cfg.manifest.exists():  # before the lock: checking an unbuilt KB writes nothing
        raise missing_manifest(cfg, never_built="There is nothing to check against; "
                               "run `kbguard rebuild`.")
    with kb_lock(cfg.manifest, "verify"):
        report, _ = check_kb(cfg, CheckOptions(sample=sample, deep=deep), progress)
        if record:
            record_check(cfg, report, kind="verify")
    return report


# -- the check -----------------------------------------------------------------------------

def check_kb(cfg: Config, opts: CheckOptions = CheckOptions(),
             progress: Progress = SILENT) -> tuple[VerifyReport, RepairPlan]:
    """One read-only check: the report and the repair plan. The caller holds the KB lock."""
    return _Check(cfg, opts, progress).run()


def _empty_findings() -> dict[str, Finding]:
    return {name: Finding(name) for name in FINDINGS}


class _Check:
    def __init__(self, cfg: Config, opts: CheckOptions, progress: Progress):
        self.cfg, self.opts, self.progress = cfg, opts, progress
        self.f = _empty_findings()
        self.plan = RepairPlan()
        self.report = VerifyReport(cfg.kb, now().isoformat(timespec="seconds"), self.f)
        self.rng = random.Random(opts.seed)
        self.damaged_cache: dict[tuple[str, str], str] = {}   # key -> reason
        self.drift_todo: list[tuple[str, str, str, SpaceConfig, str, np.ndarray]] = []

    def run(self) -> tuple[VerifyReport, RepairPlan]:
        t0 = time.perf_counter()
        try:
            m = self._open_manifest()
            if m is None:
                for name in FINDINGS:
                    if name != "manifest_damage":
                        self.f[name].checked = False
                return self._done(t0)
            with m:
                try:
                    self._check_manifest(m)
                    if self.opts.corpus:
                        self._check_corpus(m)
                    else:
                        self.f["corpus_changed"].checked = False
                    self._check_store(m)
                except duckdb.Error as exc:
                    self._manifest_unreadable(exc)
        finally:
            self.progress.close()
        return self._done(t0)

    def _done(self, t0: float) -> tuple[VerifyReport, RepairPlan]:
        if not self.opts.deep and not self.opts.sample:
            self.f["embedding_drift"].checked = False
        self.report.seconds = round(time.perf_counter() - t0, 3)
        return self.report, self.plan

    # -- manifest --------------------------------------------------------------------------

    def _open_manifest(self) -> Manifest | None:
        path = self.cfg.manifest
        if not path.exists():
            raise missing_manifest(self.cfg, never_built="There is nothing to check against; "
                                   "run `kbguard rebuild`.")
        try:
            m = Manifest.open(path, read_only=True)
        except ManifestError as exc:
            cause = exc.__cause__
            if isinstance(cause, duckdb.Error) and "lock" not in str(cause).lower():
                self._manifest_unreadable(cause)
                return None
            raise  # in use, or a schema version this kbguard cannot read: could not check
        have = m.get_meta("kb")
        if have != self.cfg.kb:
            m.close()
            raise ManifestError(f"{path} belongs to KB {have!r}, but the config names KB "
                                f"{self.cfg.kb!r}. Point manifest.path at this KB's manifest.")
        return m

    def _manifest_unreadable(self, exc: BaseException) -> None:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        self.f["manifest_damage"].add({"manifest": str(self.cfg.manifest),
                                       "error": f"the DuckDB file cannot be read: {first}"})
        self.plan.manifest_unreadable = True

    def _check_manifest(self, m: Manifest) -> None:
        """Every cache row against its checksum (and configured spaces' rows against dim)."""
        dims = {s.space_id: s.dim for s in self.cfg.spaces}
        cur = m.con.cursor()
        try:
            reader = cur.sql(
                "SELECT space_id, content_hash, vector, checksum FROM embeddings"
            ).to_arrow_reader(8192)
            for batch in reader:
                cols = batch.to_pydict()
                for space_id, h, blob, checksum in zip(cols["space_id"], cols["content_hash"],
                                                       cols["vector"], cols["checksum"]):
                    if vector_checksum(blob) != checksum:
                        self.damaged_cache[(space_id, h)] = "checksum fails"
                    elif space_id in dims and len(blob) != 4 * dims[space_id]:
                        self.damaged_cache[(space_id, h)] = (
                            f"{len(blob) // 4} values, the space has {dims[space_id]}")
        finally:
            cur.close()
        if not self.damaged_cache:
            return
        keys = sorted(self.damaged_cache)
        paths = dict(m.con.execute(
            "SELECT content_hash, min(path) FROM chunks WHERE content_hash IN "
            "(SELECT unnest(?::VARCHAR[])) GROUP BY 1", [[h for _, h in keys[:50]]]).fetchall())
        for space_id, h in keys:
            self.f["manifest_damage"].add({"space": space_id, "content_hash": h,
                                           "path": paths.get(h),
                                           "error": f"cached vector {self.damaged_cache[(space_id, h)]}"})
            self.plan.recache.add((space_id, h))

    # -- corpus ----------------------------------------------------------------------------

    def _check_corpus(self, m: Manifest) -> None:
        from kbguard.scan import scan_corpus
        from kbguard.versioning import dvc_view

        known = m.documents()
        try:
            view = dvc_view(self.cfg.corpus)
            scan = scan_corpus(self.cfg.corpus, self.cfg.include, self.cfg.exclude, known,
                               dvc_hashes=view.hashes if view else None)
        except KbguardError as exc:
            self.f["corpus_changed"].checked = False
            self.report.errors.append(f"corpus not checked: {exc}")
            return
        f = self.f["corpus_changed"]
        for path in sorted(set(scan.files) | set(known)):
            now_f, was = scan.files.get(path), known.get(path)
            if was is None:
                f.add({"path": path, "change": "added"})
            elif now_f is None:
                f.add({"path": path, "change": "removed"})
            elif now_f.file_hash is None:
                continue  # refused (unreadable, symlink out): a rebuild would refuse it too
            elif was.status == "ok" and was.indexed_hash != now_f.file_hash:
                f.add({"path": path, "change": "changed"})
            elif was.status != "ok" and was.file_hash != now_f.file_hash:
                f.add({"path": path, "change": "changed since it failed to parse"})

    # -- store -----------------------------------------------------------------------------

    def _check_store(self, m: Manifest) -> None:
        from kbguard.rebuild import store_for

        wanted = m.scalar("SELECT count(*) FROM chunks")
        self.report.manifest_points = wanted
        store = store_for(self.cfg)
        try:
            try:
                info = store.describe()
            except StoreError as exc:
                self._store_unreadable(exc)
                return
            if not info.exists:
                self.report.store_points = 0
                self.report.notes.append("the collection does not exist")
                self.plan.create = True
                self._all_missing(m)
                self._skip_canaries("the collection does not exist")
                return
            self.report.store_points = info.points
            try:
                compare = self._check_config(info.vectors)
                matched = self._compare_points(m, store, compare, wanted)
                if matched < info.points:
                    self._find_orphans(m, store)
                self._check_drift()
                self._check_canaries(store)
            except StoreUnavailable as exc:
                self._store_unreadable(exc)
            except StoreError as exc:
                self._store_unreadable(exc)
        finally:
            try:
                store.close()
            except StoreError:
                pass

    def _store_unreadable(self, exc: StoreError) -> None:
        self.f["store_unreadable"] = Finding("store_unreadable")
        self.f["store_unreadable"].add({"store": str(self.cfg.store_url or self.cfg.store_path),
                                        "error": str(exc)})
        for name in STORE_CLASSES + ("canary_failures", "embedding_drift"):
            self.f[name] = Finding(name, checked=False)
        self.plan = RepairPlan(recache=self.plan.recache, store_unreadable=True,
                               manifest_unreadable=self.plan.manifest_unreadable)
        self.report.points_checked = 0

    def _skip_canaries(self, why: str) -> None:
        if self.cfg.canaries:
            self.f["canary_failures"].checked = False
            self.report.notes.append(f"canaries not run: {why}")

    def _all_missing(self, m: Manifest) -> None:
        f = self.f["missing_points"]
        cur = m.con.cursor()
        try:
            reader = cur.sql("SELECT point_id, path FROM chunks ORDER BY path, seq"
                             ).to_arrow_reader(BATCH)
            for batch in reader:
                cols = batch.to_pydict()
                for pid, path in zip(cols["point_id"], cols["path"]):
                    f.add({"point_id": pid, "path": path})
                    self.plan.rewrite.add(pid)
        finally:
            cur.close()

    def _check_config(self, have: tuple) -> list[SpaceConfig]:
        """Config drift per vector name; returns the spaces whose vectors can be compared."""
        from kbguard.rebuild import vector_specs

        want = {s.name: s for s in vector_specs(self.cfg)}
        got = {s.name: s for s in have}
        f = self.f["config_drift"]
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name), got.get(name)
            if w == g:
                continue
            if g is None:
                f.add({"vector": name, "config": _spec(w), "store": "absent"})
            elif w is None:
                f.add({"vector": name or "(unnamed)", "config": "absent", "store": _spec(g)})
            else:
                f.add({"vector": name, "config": _spec(w), "store": _spec(g)})
        if f.count:
            self.plan.recreate = True
        return [s for s in self.cfg.spaces if s.name in got and got[s.name].dim == s.dim]

    def _compare_points(self, m: Manifest, store: Any, spaces: list[SpaceConfig],
                        wanted: int) -> int:
        """Compare every wanted point with the store; returns how many the store holds."""
        from kbguard.rebuild import point_payload

        self.progress.stage("verify points", wanted)
        sample_ids = self._sample_ids(m)
        dims = {s.name: s.dim for s in spaces}
        store.will_read_all()
        matched = 0
        for batch in self._chunks_with_cache(m, spaces):
            cols = batch.to_pydict()
            ids = cols["point_id"]
            got = store.retrieve_arrays(ids, dims)
            where = {pid: row for row, pid in enumerate(got.ids)}
            matched += len(where)
            rows = list(zip(ids, cols["path"], cols["content_hash"], cols["occurrence"],
                            cols["section"], cols["text"]))
            at = np.full(len(rows), -1, dtype=np.intp)   # the store row to compare vectors
            flagged: set[str] = set()       # any finding: no drift check
            skip: set[str] = set()          # missing or stale: no vector check
            for i, (pid, path, h, occ, section, text) in enumerate(rows):
                j = where.get(pid)
                if j is None:
                    self.f["missing_points"].add({"point_id": pid, "path": path})
                    self.plan.rewrite.add(pid)
                    flagged.add(pid)
                    skip.add(pid)
                    continue
                payload = got.payloads[j]
                stored_hash = payload.get("content_hash")
                if isinstance(stored_hash, str) and stored_hash != h:
                    self.f["stale_points"].add({"point_id": pid, "path": path,
                                                "store": stored_hash, "manifest": h})
                    self.plan.rewrite.add(pid)
                    flagged.add(pid)
                    skip.add(pid)
                    continue
                if payload != point_payload(self.cfg.kb, path, h, occ, section, text):
                    self.f["payload_damage"].add({"point_id": pid, "path": path,
                                                  "keys": _payload_diff(payload, path, h,
                                                                        occ, section, text,
                                                                        self.cfg.kb)})
                    self.plan.rewrite.add(pid)
                    flagged.add(pid)
                at[i] = j
            if skip:  # a point id the manifest lists twice is skipped as a whole
                for i, row in enumerate(rows):
                    if row[0] in skip:
                        at[i] = -1
            for k, space in enumerate(spaces):
                self._compare_vectors(m, space, rows, at, got, cols[f"cached{k}"], flagged)
            if self.opts.deep or sample_ids:
                for pid, path, h, *_rest, text in rows:
                    j = where.get(pid)
                    if pid in flagged or j is None:
                        continue
                    if self.opts.deep or pid in sample_ids:
                        for space in spaces:
                            vec = got.vector(space.name, j)
                            if vec is not None:
                                self.drift_todo.append((pid, path, h, space, text,
                                                        np.array(vec)))
                if len(self.drift_todo) >= BATCH:
                    self._check_drift()
            self.report.points_checked += len(where)
            self.progress.advance(len(rows))
        return matched

    def _chunks_with_cache(self, m: Manifest, spaces: list[SpaceConfig]) -> Iterator[Any]:
        """Every chunk in Arrow batches of BATCH rows, each row with its cached vector of every
        space (``cached0``, ``cached1``, ...; null where the cache has none).

        One hash join per pass, instead of a lookup per batch that would scan the whole cache
        each time. The join holds its cached vectors in DuckDB's memory, so the cache is split
        into passes of about JOIN_BYTES of vectors each by a hash of the content hash.
        """
        ids = [s.space_id for s in spaces]
        cache_bytes = sum(4 * s.dim * m.scalar(
            "SELECT count(*) FROM embeddings WHERE space_id = ?", [s.space_id]) for s in spaces)
        passes = max(1, -(-cache_bytes // JOIN_BYTES))
        cached = "".join(f", e{k}.vector AS cached{k}" for k in range(len(spaces)))
        joins = "".join(
            f" LEFT JOIN (SELECT content_hash, vector FROM embeddings WHERE space_id = ? AND "
            f"hash(content_hash) % {passes} = ?) e{k} ON e{k}.content_hash = c.content_hash"
            for k in range(len(spaces)))
        sql = ("SELECT c.point_id, c.path, c.content_hash, c.occurrence, c.section, c.text"
               f"{cached} FROM chunks c{joins} WHERE hash(c.content_hash) % {passes} = ?")
        for p in range(passes):
            cur = m.con.cursor()
            try:
                params = [x for space_id in ids for x in (space_id, p)] + [p]
                yield from cur.sql(sql, params=params).to_arrow_reader(BATCH)
            finally:
                cur.close()

    def _compare_vectors(self, m: Manifest, space: SpaceConfig, rows: list[tuple],
                         at: np.ndarray, got: PointArrays, blobs: list[bytes | None],
                         flagged: set[str]) -> None:
        """Check the ``space`` vector of every row with a store row in ``at`` (-1: none).

        The rows whose stored vector is finite, non-zero and bit for bit their cached vector
        pass as whole matrices; only the others are looked at one by one, to name what is wrong.
        """
        dim, name = space.dim, space.name
        size = 4 * dim
        damaged = self.damaged_cache
        check = np.flatnonzero(at >= 0).tolist()
        fast = [i for i in check if blobs[i] is not None and len(blobs[i]) == size
                and not (damaged and (space.space_id, rows[i][2]) in damaged)]
        passed = np.zeros(len(rows), dtype=bool)
        if fast:
            idx = np.asarray(fast, dtype=np.intp)
            where = at[idx]
            stored = got.vectors[name][where]
            expected = np.frombuffer(b"".join([blobs[i] for i in fast]),
                                     dtype="<f4").reshape(len(fast), dim)
            good = (got.present[name][where] & (stored == expected).all(axis=1)
                    & np.isfinite(stored).all(axis=1) & stored.any(axis=1))
            passed[idx[good]] = True
        todo = []  # (pid, path, h, stored, cached) for points whose vector can be compared
        for i in check:
            if passed[i]:
                continue
            pid, path, h, *_ = rows[i]
            vec = got.vector(name, int(at[i]))
            problem = None
            if vec is None:
                problem = f"no {name!r} vector"
            elif vec.shape != (dim,):
                problem = f"{vec.size} values, the space has {dim}"
            elif not np.isfinite(vec).all():
                problem = "NaN or infinite values"
            elif not vec.any():
                problem = "zero vector"
            if problem:
                self.f["invalid_vectors"].add({"point_id": pid, "path": path,
                                               "vector": name, "problem": problem})
                self.plan.rewrite.add(pid)
                flagged.add(pid)
                continue
            if (space.space_id, h) in damaged:
                self.plan.rewrite.add(pid)  # its cached vector is re-embedded, then rewritten
                flagged.add(pid)
                continue
            if blobs[i] is None:
                key = (space.space_id, h)
                if key not in self.plan.recache:
                    self.plan.recache.add(key)
                    self.f["manifest_damage"].add({"space": space.space_id, "content_hash": h,
                                                   "path": path,
                                                   "error": "cached vector missing"})
                self.plan.rewrite.add(pid)
                flagged.add(pid)
                continue
            todo.append((pid, path, h, vec, np.frombuffer(blobs[i], dtype="<f4")))
        if not todo:
            return
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
        for i in np.flatnonzero(~same):
            pid, path, h, vec, _ = todo[i]
            other = self._other_space(m, space, h, vec)
            if other:
                self.f["wrong_space"].add({"point_id": pid, "path": path,
                                           "vector": name, "holds": other,
                                           "config": space.space_id})
            else:
                diff = np.abs(vec.astype(np.float64) - expected[i])
                self.f["vector_corruption"].add({
                    "point_id": pid, "path": path, "vector": name,
                    "components_differing": int((diff > 0).sum()),
                    "max_abs_diff": float(diff.max())})
            self.plan.rewrite.add(pid)
            flagged.add(pid)

    def _other_space(self, m: Manifest, space: SpaceConfig, h: str, vec: np.ndarray
                     ) -> str | None:
        """The other embedding space whose cached vector of this text the store holds."""
        for space_id, blob in m.con.execute(
                "SELECT space_id, vector FROM embeddings WHERE content_hash = ? AND space_id <> ?",
                [h, space.space_id]).fetchall():
            other = np.frombuffer(blob, dtype="<f4")
            if other.shape == vec.shape and (other == vec).all():
                return space_id
        return None

    def _find_orphans(self, m: Manifest, store: Any) -> None:
        f = self.f["orphan_points"]
        for page in store.scroll(batch_size=BATCH, with_vectors=False):
            ids = [p.id for p in page]
            known = {r[0] for r in m.con.execute(
                "SELECT point_id FROM chunks WHERE point_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids]).fetchall()}
            for p in page:
                if p.id not in known:
                    f.add({"point_id": p.id, "path": p.payload.get("path")})
                    self.plan.delete.add(p.id)

    # -- sampled re-embedding ----------------------------------------------------------------

    def _sample_ids(self, m: Manifest) -> set[str]:
        n = self.opts.sample
        if self.opts.deep or not n:
            return set()
        total = m.scalar("SELECT count(*) FROM chunks")
        if n >= total:
            return {r[0] for r in m.con.execute("SELECT point_id FROM chunks").fetchall()}
        # reservoir over the ids, so memory stays at n ids
        chosen: list[str] = []
        cur = m.con.cursor()
        try:
            seen = 0
            for batch in cur.sql("SELECT point_id FROM chunks").to_arrow_reader(8192):
                for pid in batch.column(0).to_pylist():
                    seen += 1
                    if len(chosen) < n:
                        chosen.append(pid)
                    else:
                        j = self.rng.randrange(seen)
                        if j < n:
                            chosen[j] = pid
        finally:
            cur.close()
        return set(chosen)

    def _check_drift(self) -> None:
        from kbguard.embed import get_embedder, normalize

        todo, self.drift_todo = self.drift_todo, []
        by_space: dict[SpaceConfig, list[tuple[str, str, str, str, np.ndarray]]] = {}
        for pid, path, h, space, text, vec in todo:
            by_space.setdefault(space, []).append((pid, path, h, text, vec))
        f = self.f["embedding_drift"]
        for space, items in by_space.items():
            fresh = get_embedder(space).embed_batch([t for *_, t, _ in items])
            fresh = normalize(np.asarray(fresh, dtype=np.float32))
            stored = normalize(np.stack([v for *_, v in items]))
            cos = (fresh.astype(np.float64) * stored).sum(axis=1)
            self.report.sampled += len(items)
            for i in np.flatnonzero(cos < DRIFT_MIN_COSINE):
                pid, path, h, _, _ = items[i]
                f.add({"point_id": pid, "path": path, "vector": space.name,
                       "cosine": round(float(cos[i]), 4)})
                self.plan.rewrite.add(pid)
                self.plan.recache.add((space.space_id, h))

    # -- canaries ----------------------------------------------------------------------------

    def _check_canaries(self, store: Any) -> None:
        from kbguard.embed import get_embedder

        f = self.f["canary_failures"]
        for c in self.cfg.canaries:
            space = self.cfg.space(c.space) if c.space else self.cfg.spaces[0]
            vec = get_embedder(space).embed_batch([c.query])[0]
            hits = store.query(space.name, vec, c.k)
            found = [str(h.payload.get("path")) for h in hits]
            missing = [p for p in c.expect if p not in found]
            if missing:
                f.add({"query": c.query, "expected": list(c.expect), "missing": missing,
                       "top_k": found})


def _spec(s: Any) -> str:
    return f"{s.dim}-d {s.distance}"


def _payload_diff(payload: dict[str, Any], path: str, h: str, occ: int, section: str,
                  text: str, kb: str) -> list[str]:
    from kbguard.rebuild import point_payload

    want = point_payload(kb, path, h, occ, section, text)
    return sorted(k for k in set(want) | set(payload) if payload.get(k, object()) != want.get(k))


# -- history -------------------------------------------------------------------------------

def record_check(cfg: Config, report: VerifyReport, *, kind: str) -> None:
    """Write the check into the manifest's history in one short transaction.

    Nothing is recorded when the manifest itself is unreadable; a note says so.
    """
    if any(e.get("error", "").startswith("the DuckDB file") for e in
           report.findings["manifest_damage"].examples):
        report.notes.append("the check is not recorded: the manifest cannot be read")
        return
    status = "ok" if report.healthy else ("findings" if report.total else "failed")
    summary = {"counts": report.counts(), "total_findings": report.total,
               "points_checked": report.points_checked, "seconds": report.seconds,
               "sampled": report.sampled, "errors": report.errors, "exit_code": report.exit_code}
    started = datetime.fromisoformat(report.checked_at)
    last_exc: Exception | None = None
    for _ in range(20):
        try:
            with Manifest.open(cfg.manifest) as m, m.transaction():
                run_id = m.con.execute(
                    "INSERT INTO runs (kind, started_at, finished_at, status, summary) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING run_id",
                    [kind, started, now(), status, json.dumps(summary)]).fetchone()[0]
                m.con.executemany(
                    "INSERT INTO findings VALUES (?, ?, ?, ?)",
                    [[run_id, name, f.count, json.dumps(f.examples, default=str)]
                     for name, f in report.findings.items()])
            report.run_id = run_id
            return
        except ManifestError as exc:
            # a reader that opened the manifest before this check took the lock: wait for it
            last_exc = exc
            time.sleep(0.25)
    report.notes.append(f"the check is not recorded: {last_exc}")


def last_check(m: Manifest) -> dict[str, Any] | None:
    """The newest recorded check: when, its status, and its non-zero findings."""
    run = m.last_run(kind="verify%")
    if run is None:
        return None
    counts = dict(m.con.execute(
        "SELECT finding, count FROM findings WHERE run_id = ? AND count > 0 ORDER BY finding",
        [run["run_id"]]).fetchall())
    summary = run.get("summary") or {}
    return {"run_id": run["run_id"], "kind": run["kind"],
            "checked_at": run["started_at"].isoformat(timespec="seconds"),
            "status": run["status"], "findings": counts,
            "points_checked": summary.get("points_checked"),
            "seconds": summary.get("seconds")}

