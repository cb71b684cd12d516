"""Repair: heal what `kbguard verify` found, from the embedding cache, then check again.

The cache is the source of every vector written: damaged cache rows (and the rows that are gone)
are re-embedded first, then every damaged point is rewritten whole (vectors from the cache,
payload from the manifest), orphans are deleted, and a drifted collection is recreated and
refilled. Only texts the cache cannot supply are embedded. Points are written and deleted the
way a rebuild does it (``Manifest.points.write`` and ``delete``), so a killed repair
leaves nothing that the next check or rebuild would not see.

A store that cannot be opened, or a manifest that cannot be read, is not repaired: that is a
restore, and the repair refuses with a message that says so.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from kbguard.config import Config
from kbguard.core.outcome import Verdict
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import RestoreNeeded
from kbguard.ingest.plan import point_payload
from kbguard.integrity.verify import CheckOptions, RepairPlan, VerifyReport, check_kb, record_check
from kbguard.kb.preflight import Lock, Needs, preflight, unbuilt
from kbguard.manifest import Manifest
from kbguard.providers import chain_for, spent, spent_since
from kbguard.store import Point, Store, store_for, vector_specs


@dataclass
class RepairReport:
    before: VerifyReport
    after: VerifyReport
    actions: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> Verdict:
        """The verdict of the check after the repair."""
        return self.after.verdict

    def to_dict(self) -> dict[str, Any]:
        out = self.after.to_dict()
        out["repair"] = {"actions": self.actions, "seconds": self.seconds,
                         "before": {"counts": self.before.counts(),
                                    "total_findings": self.before.total,
                                    "run_id": self.before.run_id}}
        return out


def repair_kb(cfg: Config, *, sample: int = 0, deep: bool = False,
              progress: Progress = SILENT) -> RepairReport:
    """Check, repair what can be repaired from the cache, check again; all under the KB lock."""
    started = time.perf_counter()
    opts = CheckOptions(sample=sample, deep=deep)
    nothing = unbuilt("There is nothing to repair; run `kbguard rebuild`.")
    needs = Needs("verify --repair", manifest=nothing, lock=Lock.WRITE, writable=True)
    with preflight(cfg, needs):
        before, plan = check_kb(cfg, opts, progress)
        record_check(cfg, before, kind="verify")
        if plan.store_unreadable:
            raise RestoreNeeded(
                "The store cannot be opened, so there is nothing to repair: this is a restore. "
                "Run `kbguard restore --latest`, or `kbguard rebuild --full` to rebuild the "
                f"store from the embedding cache. ({before.findings['store_unreadable'].examples[0]['error']})")
        if plan.manifest_unreadable:
            raise RestoreNeeded(
                f"The manifest {cfg.manifest} cannot be read, and a repair works from it: this "
                "is a restore. Run `kbguard restore --latest` to bring back the manifest.")
        paid = spent(cfg.spaces)
        actions = _apply(cfg, plan, progress)
        cost = spent_since(paid)
        if cost:
            with Manifest.open(cfg.manifest) as m, m.transaction():
                for (space, provider), usage in cost.items():
                    m.ledger.record(before.run_id, "repair", space, provider, usage)
        # the re-check samples afresh: what was re-embedded is compared again
        after, _ = check_kb(cfg, opts, progress)
        record_check(cfg, after, kind="verify-after-repair")
    return RepairReport(before, after, actions, round(time.perf_counter() - started, 3))


def _apply(cfg: Config, plan: RepairPlan, progress: Progress) -> dict[str, Any]:
    embedded_before = {s: chain_for(s).texts_embedded for s in cfg.spaces}
    actions: dict[str, Any] = {"cache_rows_replaced": 0, "cache_rows_dropped": 0,
                               "points_rewritten": 0, "orphans_deleted": 0,
                               "collection_recreated": False, "texts_embedded": 0}
    with Manifest.open(cfg.manifest, kb=cfg.kb) as manifest:
        run_id = manifest.runs.start("repair")
        try:
            rewrite = set(plan.rewrite)
            _recache(cfg, manifest, plan, actions, rewrite, run_id)
            with store_for(cfg) as store:
                if plan.recreate:
                    store.drop()
                    actions["collection_recreated"] = True
                if plan.recreate or plan.create:
                    store.ensure(vector_specs(cfg))
                    manifest.points.unconfirm_all()
                    rewrite = set(manifest.chunks.point_ids())
                actions["points_rewritten"] = _rewrite(cfg, manifest, store, sorted(rewrite),
                                                       run_id, progress)
                orphans = sorted(plan.delete)
                manifest.points.delete(store, orphans, batch_size=cfg.upsert_batch)
                actions["orphans_deleted"] = len(orphans)
            actions["texts_embedded"] = sum(chain_for(s).texts_embedded - n
                                            for s, n in embedded_before.items())
            manifest.runs.finish(run_id, "ok", actions)
        except BaseException as exc:
            # the original error matters more than recording it
            with contextlib.suppress(Exception):
                manifest.runs.finish(run_id, "failed", {"error": str(exc) or type(exc).__name__,
                                                        **actions})
            raise
    return actions


def _recache(cfg: Config, manifest: Manifest, plan: RepairPlan, actions: dict[str, Any],
             rewrite: set[str], run_id: int) -> None:
    """Replace damaged, missing and drifted cache rows with fresh embeddings."""

    spaces = {s.space_id: s for s in cfg.spaces}
    by_space: dict[str, list[str]] = {}
    for space_id, h in sorted(plan.recache):
        by_space.setdefault(space_id, []).append(h)
    for space_id, hashes in by_space.items():
        texts = manifest.chunks.texts(hashes)
        unused = [h for h in hashes if h not in texts]
        space = spaces.get(space_id)
        if unused or space is None:
            # a damaged row nobody uses (or of a space no longer configured): drop it
            gone = hashes if space is None else unused
            manifest.cache.drop(space_id, gone)
            actions["cache_rows_dropped"] += len(gone)
        if space is None:
            continue
        todo = [h for h in hashes if h in texts]
        embedder = chain_for(space)
        for lo in range(0, len(todo), space.batch_size):
            batch = todo[lo:lo + space.batch_size]
            vectors = embedder.embed_batch([texts[h] for h in batch])
            with manifest.transaction():
                manifest.cache.add(space_id, list(zip(batch, vectors, strict=True)), run_id)
            actions["cache_rows_replaced"] += len(batch)
        if todo:
            rewrite.update(manifest.chunks.point_ids_with_hashes(todo))


def _rewrite(cfg: Config, manifest: Manifest, store: Store, ids: list[str], run_id: int,
             progress: Progress) -> int:
    """Write whole points from the manifest and the cache, embedding what the cache lacks."""

    names = ",".join(sorted(s.name for s in cfg.spaces))
    written = 0
    if ids:
        progress.stage("rewrite points", len(ids))
    for lo in range(0, len(ids), cfg.upsert_batch):
        batch = ids[lo:lo + cfg.upsert_batch]
        rows = manifest.chunks.of_points(batch)
        hashes = sorted({r[2] for r in rows})
        vectors: dict[str, dict[str, Any]] = {}
        for space in cfg.spaces:
            have = {h: v for h, v, _ in manifest.cache.vectors(space.space_id, hashes)}
            lacking = [h for h in hashes if h not in have]
            if lacking:
                text_of = {r[2]: r[5] for r in rows}
                fresh = chain_for(space).embed_batch([text_of[h] for h in lacking])
                with manifest.transaction():
                    manifest.cache.add(space.space_id,
                                       list(zip(lacking, fresh, strict=True)), run_id)
                have.update(zip(lacking, fresh, strict=True))
            for h, v in have.items():
                vectors.setdefault(h, {})[space.name] = v
        manifest.points.write(
            store, [(Point(pid, vectors[h], point_payload(cfg.kb, path, h, occ, section, text)),
                     path, h) for pid, path, h, occ, section, text in rows], names)
        written += len(rows)
        progress.advance(len(batch))
    return written
