"""`kbguard rebuild --estimate`: the time and the bill of each kind of rebuild, before it runs.

Texts and tokens are exact, not sampled: the documents the next rebuild would parse are parsed
and chunked here, in memory, and the texts each space's cache lacks are counted with each
provider's own tokenizer, the count the ledger records when they are embedded. Seconds come from
this KB's own history on this machine: the stage times of its rebuilds (``runs``) and each
provider's calls (``ledger``); where there is none, ``calibrate`` embeds a small sample now and
says so. Nothing is written: the manifest is opened read-only (the future chunks are a
temporary table in memory), the store is not opened, and no lock is taken.

Scenarios:

    incremental     what the next plain ``kbguard rebuild`` embeds and writes
    store_lost      the store gone: every point written again from the embedding cache
    full_reembed    the embedding cache gone too: every document parsed and every text embedded,
                    per space and per provider of each chain
    restore_latest  ``kbguard restore --latest`` from the newest snapshot, then the catch-up
                    rebuild of what changed since it
    primary_down    the primary space's providers down: the standby spaces embed their share,
                    the primary's texts become its debt

A scenario whose command kbguard would refuse says why in ``refused``, and the report's
``recommended`` names the scenario to act on: ``incremental`` normally; with the manifest lost
while a snapshot survives, a plain rebuild is refused and ``restore_latest`` is the way back
(``full_reembed``, i.e. ``rebuild --full``, when only the store survives).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kbguard.config import Config, SpaceConfig
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import KbguardError
from kbguard.ingest.plan import point_payload
from kbguard.ingest.rebuild import parse_all, parse_jobs, plan_rebuild
from kbguard.kb.preflight import Lost, Needs, preflight_checks
from kbguard.manifest import Manifest
from kbguard.providers import Provider, chain_for
from kbguard.recovery.snapshot import list_snapshots
from kbguard.snapshot_format import POINTS_FILE, read_meta, table_file
from kbguard.store import Point, store_for, vector_specs

SCENARIOS = ("incremental", "store_lost", "full_reembed", "restore_latest", "primary_down")
HISTORY_RUNS = 5            # the newest runs a stage's or a provider's rate is taken from
HISTORY_CALLS = 10_000      # ledger rows (one per call) read to find those runs' calls
CALIBRATION_TEXTS = 64      # texts a calibration embeds per provider
CALIBRATION_POINTS = 512    # points a calibration writes into a scratch store


@dataclass
class Scenario:
    texts: int                    # texts to embed, summed over the spaces
    tokens: int                   # their tokens, each space's with its provider's tokenizer
    cost_usd: float
    seconds: float | None         # None: nothing measured to base it on (see basis)
    basis: str                    # which measurements the seconds come from
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, float | None] = field(default_factory=dict)   # predicted seconds
    points: dict[str, int] = field(default_factory=dict)            # to write, to delete
    notes: list[str] = field(default_factory=list)
    # why kbguard refuses this scenario's command and what to run instead (its figures are
    # what it would cost if forced); None: it runs
    refused: str | None = None


@dataclass
class EstimateReport:
    kb: str
    scenarios: dict[str, Scenario]
    documents: dict[str, int]     # what the next rebuild parses: added, changed, removed, ...
    calibration: dict[str, Any]   # what --calibrate measured now (empty without it)
    seconds: float                # how long the estimate itself took
    notes: list[str] = field(default_factory=list)
    recommended: str = "incremental"   # the scenario to act on (see the module docstring)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(cfg: Config, *, calibrate: bool = False, progress: Progress = SILENT
             ) -> EstimateReport:
    """Estimate every scenario for the KB of ``cfg``; writes nothing, takes no lock."""
    started = time.perf_counter()
    lost = preflight_checks(cfg, Needs("estimate", corpus=True, unlocked=True,
                                       lost=Lost.REPORT)).lost
    with tempfile.TemporaryDirectory(prefix="kbguard-estimate-") as tmp:
        if cfg.manifest.exists():
            manifest = Manifest.open(cfg.manifest, read_only=True)
        else:  # never built, or lost: an empty manifest stands in, so a first build is costed
            manifest = Manifest.open(Path(tmp) / "empty.duckdb", kb=cfg.kb)
        with manifest:
            report = _Estimate(cfg, manifest, progress).run(calibrate, Path(tmp))
    if lost is not None:
        # `kbguard rebuild` refuses this KB (it would embed the whole corpus again): say so,
        # and point at the way back
        report.scenarios["incremental"].refused = str(lost)
        report.recommended = "restore_latest" if lost.snapshot else "full_reembed"
    report.seconds = round(time.perf_counter() - started, 3)
    progress.close()
    return report


@dataclass
class _Rate:
    """Seconds = fixed + per_unit x units, and the measurements it came from."""

    per_unit: float
    fixed: float
    basis: str

    def seconds(self, units: int) -> float:
        return self.fixed + self.per_unit * units if units else 0.0


class _Estimate:
    def __init__(self, cfg: Config, manifest: Manifest, progress: Progress):
        self.cfg, self.manifest, self.progress = cfg, manifest, progress
        self.notes: list[str] = []
        self.tokens: dict[tuple[str, str], int] = {}     # (provider, content_hash) -> tokens
        self.calibration: dict[str, Any] = {}
        self.runs = manifest.runs.recent(["rebuild", "rebuild-full"], limit=50)
        self.embed_rates: dict[tuple[str, str], _Rate] = self._embed_rates()

    # -- the scenarios ------------------------------------------------------------------------

    def run(self, calibrate: bool, tmp: Path) -> EstimateReport:
        cfg, m = self.cfg, self.manifest
        self.progress.stage("scan")
        t = time.perf_counter()
        known = m.documents.by_path()
        planned = plan_rebuild(cfg, known, m.get_meta("parse_settings"))
        scan_s = time.perf_counter() - t
        plan = planned.plan
        todo = plan.added + plan.changed
        t = time.perf_counter()
        self.progress.stage("parse what changed", len(todo))
        new: list[tuple[str, str, str]] = []
        replaced = list(plan.removed)
        failed = 0
        for path, chunks, _error, _, _ in parse_all(parse_jobs(cfg, todo), cfg.parse_workers):
            self.progress.advance()
            if chunks is None:
                failed += 1   # a document that fails keeps its last good chunks
                continue
            replaced.append(path)
            new.extend((c.point_id, c.content_hash, c.text) for c in chunks)
        parse_s = time.perf_counter() - t
        m.future.stage(replaced, new)
        self.notes.extend(planned.notes)
        documents = {"added": len(plan.added), "changed": len(plan.changed),
                     "removed": len(plan.removed), "unchanged": len(plan.unchanged),
                     "failing": failed + len(plan.refused) + len(plan.still_failed),
                     "total": len(planned.scan.files)}
        if calibrate:
            self.progress.stage("calibrate")
            self._calibrate(tmp)

        names = ",".join(sorted(s.name for s in cfg.spaces))
        points_now, deletes_now = m.future.store_work(names)
        all_points = m.future.point_count()
        measured = f"scan {scan_s:.2f} s and parse of {len(todo)} documents {parse_s:.2f} s " \
                   "measured now"
        scenarios: dict[str, Scenario] = {}

        todo_by_space = {s.name: m.future.texts(s.space_id) for s in cfg.spaces}
        scenarios["incremental"] = self._scenario(
            todo_by_space, scan_s, parse_s, points_now, deletes_now, measured)
        scenarios["store_lost"] = self._scenario(
            todo_by_space, scan_s, parse_s, all_points, 0,
            measured + "; every point written again from the cache")
        every = m.future.texts()
        per_doc = parse_s / len(todo) if todo else None
        parse_all_s, parse_basis = self._parse_estimate(documents["total"], per_doc)
        scenarios["full_reembed"] = self._scenario(
            {s.name: every for s in cfg.spaces}, scan_s, parse_all_s, all_points, 0,
            f"scan measured now; {parse_basis}", every_provider=True)
        files = {path: f.file_hash for path, f in planned.scan.files.items()}
        scenarios["restore_latest"] = self._restore_latest(scan_s, files, per_doc)
        scenarios["primary_down"] = self._primary_down(todo_by_space, scan_s, parse_s,
                                                       points_now, deletes_now, measured)
        return EstimateReport(cfg.kb, scenarios, documents, self.calibration, 0.0, self.notes)

    def _scenario(self, todo_by_space: dict[str, list[tuple[str, str]]], scan_s: float,
                  parse_s: float | None, writes: int, deletes: int, basis: str, *,
                  spaces: Sequence[SpaceConfig] | None = None,
                  every_provider: bool = False) -> Scenario:
        """Cost and time of embedding ``todo_by_space`` with each space's first provider (and,
        with ``every_provider``, the same for every provider of each chain) and writing
        ``writes`` points."""
        out = Scenario(0, 0, 0.0, None, basis, points={"write": writes, "delete": deletes})
        embed_s: float | None = 0.0
        bases = [basis]
        for space in spaces if spaces is not None else self.cfg.spaces:
            rows = todo_by_space.get(space.name, [])
            providers = chain_for(space).providers
            per = {p.name: self._cost(space, p, rows) for p in
                   (providers if every_provider else providers[:1])}
            first = per[providers[0].name]
            out.spaces[space.name] = {"texts": len(rows), "tokens": first["tokens"],
                                      "cost_usd": first["cost_usd"],
                                      "seconds": first["seconds"],
                                      "provider": providers[0].name, "providers": per}
            out.texts += len(rows)
            out.tokens += first["tokens"]
            out.cost_usd += first["cost_usd"]
            if rows:
                if first["seconds"] is None or embed_s is None:
                    embed_s = None
                else:
                    embed_s += first["seconds"]
                if first["basis"] not in bases:
                    bases.append(first["basis"])
        out.cost_usd = round(out.cost_usd, 6)
        store = self._store_rate()
        store_s = store.seconds(writes + deletes) if store else (0.0 if not writes + deletes
                                                                  else None)
        if store and writes + deletes:
            bases.append(store.basis)
        elif store is None and writes + deletes:
            bases.append("no measured store write yet: run a rebuild, or --calibrate")
        overhead = self._overhead()
        # a stage costs something even with nothing to do (its manifest queries): the median of
        # that stage in runs where it had no work
        if parse_s is not None:
            parse_s += self._idle("parse", lambda d: d.get("documents", {}).get("added", 0)
                                  + d.get("documents", {}).get("changed", 0))
        if embed_s is not None:
            embed_s += self._idle("embed", lambda d: d.get("chunks", {}).get("embedded", 0))
        out.stages = {"scan": round(scan_s, 3),
                      "parse": None if parse_s is None else round(parse_s, 3),
                      "embed": None if embed_s is None else round(embed_s, 3),
                      "store": None if store_s is None else round(store_s, 3),
                      "other": round(overhead, 3)}
        if None not in out.stages.values():
            out.seconds = round(sum(v for v in out.stages.values() if v is not None), 3)
        out.basis = "; ".join(bases)
        return out

    def _restore_latest(self, scan_s: float, files: dict[str, str | None],
                        per_doc: float | None) -> Scenario:
        snaps = [s for s in list_snapshots(self.cfg) if s.local and s.problem is None]
        if not snaps:
            dvc_only = [s for s in list_snapshots(self.cfg) if s.dvc and not s.local]
            hint = (f"{len(dvc_only)} snapshot(s) are only on the DVC remote: `kbguard restore "
                    "--latest` pulls them first" if dvc_only else
                    "no snapshot: take one with `kbguard snapshot create`")
            return Scenario(0, 0, 0.0, None, hint)
        snap = snaps[-1]
        body = read_meta(snap.path)
        points = int(body.get("counts", {}).get("points") or 0)
        cache = snap.path / table_file("embeddings")
        state = snap.path / POINTS_FILE
        if not (cache.is_file() and state.is_file()):
            return Scenario(0, 0, 0.0, None, f"snapshot {snap.id} lacks its tables")
        todo = {s.name: self.manifest.future.texts(s.space_id, cache=cache)
                for s in self.cfg.spaces}
        names = ",".join(sorted(s.name for s in self.cfg.spaces))
        writes, deletes = self.manifest.future.store_work(names, points=state)
        changed = self._changed_since(snap.path / table_file("documents"), files)
        if per_doc is not None:   # documents parsed just now: their measured pace
            parse_s: float | None = round(per_doc * changed, 3)
            parse_basis = f"parse at the pace measured now ({1 / per_doc:.1f} documents/s)"
        else:
            parse_s, parse_basis = self._parse_estimate(changed)
        out = self._scenario(todo, scan_s, parse_s, writes, deletes,
                             f"catch-up after snapshot {snap.id} ({snap.created_at}): "
                             f"{changed} documents changed since; {parse_basis}")
        restore = self._restore_rate()
        out.stages = {"restore": None if restore is None else round(restore.seconds(points), 3),
                      **out.stages}
        out.points["restore"] = points
        if restore is None:
            out.seconds = None
            out.basis += "; no restore measured yet (`kbguard drill manifest-lost` measures one)"
        else:
            out.basis += f"; {restore.basis}"
            if out.seconds is not None and out.stages["restore"] is not None:
                out.seconds = round(out.seconds + out.stages["restore"], 3)
        out.notes.append(f"snapshot {snap.id} is taken as intact (not re-checked here: "
                         "`kbguard snapshot verify` checks it)")
        return out

    def _primary_down(self, todo_by_space: dict[str, list[tuple[str, str]]], scan_s: float,
                      parse_s: float, writes: int, deletes: int, basis: str) -> Scenario:
        primary, standby = self.cfg.spaces[0], self.cfg.spaces[1:]
        if not standby:
            return Scenario(0, 0, 0.0, None,
                            f"one space ({primary.name!r}): no standby answers while its "
                            "providers are down; add a second [[spaces]] with a local model "
                            "(`kbguard init --provider openai` writes one)")
        out = self._scenario(todo_by_space, scan_s, parse_s, writes, deletes, basis,
                             spaces=standby)
        debt = todo_by_space.get(primary.name, [])
        out.notes.append(f"space {primary.name!r} falls behind by {len(debt)} texts, embedded "
                         "when its providers return; search answers from "
                         f"{', '.join(repr(s.name) for s in standby)} meanwhile")
        out.spaces[primary.name] = {"texts": 0, "debt": len(debt), "tokens": 0,
                                    "cost_usd": 0.0, "seconds": 0.0, "provider": None,
                                    "providers": {}}
        return out

    # -- what things cost -------------------------------------------------------------------

    def _cost(self, space: SpaceConfig, provider: Provider, rows: list[tuple[str, str]]
              ) -> dict[str, Any]:
        tokens = self._count(provider, rows)
        price = getattr(getattr(provider, "settings", None), "price_per_million_tokens", 0.0)
        rate = self.embed_rates.get((space.space_id, provider.name))
        return {"texts": len(rows), "tokens": tokens,
                "cost_usd": round(tokens * price / 1_000_000, 6),
                "seconds": (round(rate.seconds(tokens), 3) if rate and rows else
                            0.0 if not rows else None),
                "basis": rate.basis if rate else
                f"{provider.name} has not embedded here yet: run with --calibrate"}

    def _count(self, provider: Provider, rows: list[tuple[str, str]]) -> int:
        missing = [(h, text) for h, text in rows if (provider.name, h) not in self.tokens]
        if missing:
            counts = provider.count_tokens([text for _, text in missing])
            for (h, _), n in zip(missing, counts, strict=True):
                self.tokens[(provider.name, h)] = n
        return sum(self.tokens[(provider.name, h)] for h, _ in rows)

    # -- rates from history -------------------------------------------------------------------

    def _embed_rates(self) -> dict[tuple[str, str], _Rate]:
        """Seconds per token of each (space, provider), from its calls in its newest rebuilds,
        plus what a run spends around the calls (the cache writes) per text.

        Time spent waiting is not throughput. Only a rebuild's ledger rows are calls that
        returned vectors, one row each (a verify's or a repair's row also sums the requests
        of its failed calls). A call that did return may have waited (a hung request retried,
        a 429), and a whole run may fall in an outage: each run's rate is the median of its
        calls' (weighted by tokens), and the rate is the median of the runs' rates, the lower
        of the middle two for an even count, since waiting only ever makes a run slower. A
        few slow calls in a run, or one slow run among several, move neither. Calls of less
        than half the largest call's texts (a run's last, short call; a run of a few texts)
        are left out where larger ones exist: a request's latency weighs on their few tokens.
        """
        calls: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
        for row in self.manifest.ledger.recent_calls(HISTORY_CALLS):   # newest first
            if (row["kind"] != "rebuild" or row["run_id"] is None or row["tokens"] <= 0
                    or row["seconds"] <= 0):
                continue
            runs = calls.setdefault((row["space_id"], row["provider"]), {})
            if row["run_id"] in runs or len(runs) < HISTORY_RUNS:
                runs.setdefault(row["run_id"], []).append(row)
        around = self._embed_overhead()
        rates = {}
        for key, runs in calls.items():
            biggest = max(r["texts"] for rows in runs.values() for r in rows)
            per_run = []
            texts = tokens = 0
            for rows in runs.values():
                full = [r for r in rows if 2 * r["texts"] >= biggest]
                if full:
                    per_run.append(_weighted_median([r["seconds"] / r["tokens"] for r in full],
                                                    [r["tokens"] for r in full]))
                    texts += sum(r["texts"] for r in full)
                    tokens += sum(r["tokens"] for r in full)
            per_token = statistics.median_low(per_run)
            rates[key] = _Rate(per_token + around * texts / tokens, 0.0,
                               f"{key[1]}: {1 / per_token:,.0f} tokens/s, the median of its "
                               f"last {len(per_run)} rebuild(s) here")
        return rates

    def _embed_overhead(self) -> float:
        """Seconds per embedded text that a rebuild's embed stage spends outside the provider
        calls (cache writes), from the newest runs that embedded and in which no call failed:
        a failed call's wait (a timeout before failing over) is in the stage and not in the
        ledger, and is not throughput."""
        by_run: dict[int, float] = {}
        for row in self.manifest.ledger.recent_calls(HISTORY_CALLS):
            if row["run_id"] is not None:
                by_run[row["run_id"]] = by_run.get(row["run_id"], 0.0) + row["seconds"]
        spent = texts = 0.0
        for run in self._runs_with(lambda s: s.get("chunks", {}).get("embedded", 0)
                                   and not self._waited(s)):
            s = run["summary"]
            spent += max(0.0, s["stages"].get("embed", 0.0) - by_run.get(run["run_id"], 0.0))
            texts += s["chunks"]["embedded"]
        return spent / texts if texts else 0.0

    def _waited(self, summary: dict[str, Any]) -> bool:
        """Whether a run's embedding waited on failed calls: a space left behind, or embedded
        by a provider other than the first of its chain (the first failed, and was passed)."""
        if summary.get("complete") is False:
            return True
        first = {s.name: chain_for(s).providers[0].name for s in self.cfg.spaces}
        return any(set(used.get("providers", {})) - {first[name]}
                   for name, used in summary.get("spaces", {}).items() if name in first)

    def _runs_with(self, units: Any) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["summary"].get("stages") and units(r["summary"])
                ][:HISTORY_RUNS]

    def _store_rate(self) -> _Rate | None:
        if "store" in self.calibration:
            c = self.calibration["store"]
            return _Rate(c["seconds"] / c["points"], 0.0,
                         f"store: {c['points'] / c['seconds']:,.0f} points/s calibrated now")

        def work(s: dict[str, Any]) -> int:
            c = s.get("chunks", {})
            return int(c.get("written", 0) + c.get("deleted", 0))
        idle = [r["summary"]["stages"].get("store", 0.0) for r in self.runs
                if r["summary"].get("stages") and not work(r["summary"])][:HISTORY_RUNS]
        fixed = statistics.median(idle) if idle else 0.0
        busy = self._runs_with(work)
        points = sum(work(r["summary"]) for r in busy)
        if not points:
            return None
        spent = sum(max(0.0, r["summary"]["stages"].get("store", 0.0) - fixed) for r in busy)
        return _Rate(spent / points, fixed,
                     f"store: {points / spent if spent else float('inf'):,.0f} points/s over "
                     f"runs {_ids(busy)}")

    def _parse_estimate(self, documents: int, measured_per_doc: float | None = None
                        ) -> tuple[float | None, str]:
        """Parse seconds for ``documents``: at the pace of earlier rebuilds here, else at
        ``measured_per_doc``, the seconds per document this estimate took to parse some."""
        if not documents:
            return 0.0, "nothing to parse"

        def parsed(s: dict[str, Any]) -> int:
            d = s.get("documents", {})
            return int(d.get("added", 0) + d.get("changed", 0))
        runs = self._runs_with(parsed)
        docs = sum(parsed(r["summary"]) for r in runs)
        if not docs and measured_per_doc:
            return (round(measured_per_doc * documents, 3),
                    f"parse at the pace measured now ({1 / measured_per_doc:.1f} documents/s)")
        if not docs:
            return None, ("no parse measured yet: no rebuild here has parsed a document, nor "
                          "has this estimate; run a rebuild first")
        spent = sum(r["summary"]["stages"].get("parse", 0.0) for r in runs)
        return (round(spent / docs * documents, 3),
                f"parse: {docs / spent if spent else float('inf'):.1f} documents/s over runs "
                f"{_ids(runs)}")

    def _restore_rate(self) -> _Rate | None:
        runs = self.manifest.runs.recent(["restore"], limit=HISTORY_RUNS)
        points = sum(int(r["summary"].get("points", 0)) for r in runs)
        spent = sum((r["finished_at"] - r["started_at"]).total_seconds() for r in runs)
        if points and spent > 0:
            return _Rate(spent / points, 0.0,
                         f"restore: {points / spent:,.0f} points/s over restores {_ids(runs)}")
        # never restored here, but a drill restored a copy of this KB: its restore step
        for drill in reversed(self.manifest.drills.history()):
            for step in drill["steps"] if drill["status"] == "passed" else []:
                if str(step.get("command", "")).startswith("kbguard restore"):
                    when = drill["started_at"]
                    day = when.strftime("%Y-%m-%d") if hasattr(when, "strftime") else when
                    return _Rate(0.0, float(step["seconds"]),
                                 f"restore: {step['seconds']:.1f} s in the {drill['scenario']} "
                                 f"drill of {day}")
        return None

    def _idle(self, stage: str, work: Any) -> float:
        idle = [r["summary"]["stages"].get(stage, 0.0) for r in self.runs
                if r["summary"].get("stages") and not work(r["summary"])][:HISTORY_RUNS]
        return statistics.median(idle) if idle else 0.0

    def _overhead(self) -> float:
        """What a run spends outside its stages (opening the manifest, the report)."""
        rest = [r["summary"]["seconds"] - sum(r["summary"]["stages"].values())
                for r in self.runs if r["summary"].get("stages")][:HISTORY_RUNS]
        return max(0.0, statistics.median(rest)) if rest else 0.0

    def _changed_since(self, documents: Path, files: dict[str, str | None]) -> int:
        """Corpus documents the catch-up after restoring a snapshot parses: those whose bytes
        differ from the version the snapshot indexed, or that it lacks."""
        then = self.manifest.future.indexed_hashes(documents)
        return sum(1 for path, file_hash in files.items() if then.get(path) != file_hash)

    # -- calibration --------------------------------------------------------------------------

    def _calibrate(self, tmp: Path) -> None:
        """Embed a small sample with every provider of every chain, and write a sample of points
        into a scratch store: rates for what has no history. The texts are the KB's own, and
        the sample goes through a rebuild's own steps in a scratch manifest (vectors into its
        cache, points through its write protocol), which cost as much as the calls do."""
        sample = self.manifest.future.texts()[:CALIBRATION_TEXTS]
        if not sample:
            self.notes.append("nothing to calibrate with: the corpus has no text")
            return
        texts = [text for _, text in sample]
        hashes = [h for h, _ in sample]
        spaces_done: set[str] = set()
        with Manifest.open(tmp / "calibration.duckdb", kb=self.cfg.kb) as scratch_m:
            for space in self.cfg.spaces:
                for provider in chain_for(space).providers:
                    try:
                        provider.embed(texts[:1])           # loads a local model: not a rate
                        t = time.perf_counter()
                        got = provider.embed(texts)
                        with scratch_m.transaction():
                            scratch_m.cache.add(space.space_id,
                                                list(zip(hashes, got.vectors, strict=True)),
                                                None, provider=provider.name)
                        seconds = time.perf_counter() - t
                    except KbguardError as exc:
                        self.calibration[provider.name] = {"error": str(exc)}
                        continue
                    spaces_done.add(space.name)
                    tokens = got.usage.tokens or 1
                    self.calibration[provider.name] = {
                        "texts": len(texts), "tokens": got.usage.tokens,
                        "seconds": round(seconds, 4), "cost_usd": got.usage.cost_usd}
                    self.embed_rates[(space.space_id, provider.name)] = _Rate(
                        seconds / tokens, 0.0,
                        f"{provider.name}: {tokens / seconds:,.0f} tokens/s calibrated now on "
                        f"{len(texts)} texts")
            if self.cfg.store_url or len(spaces_done) != len(self.cfg.spaces):
                return
            self._calibrate_store(tmp, scratch_m, texts, hashes)

    def _calibrate_store(self, tmp: Path, scratch_m: Manifest, texts: list[str],
                         hashes: list[str]) -> None:
        scratch = self.cfg.with_store(tmp / "calibration-store", collection="calibration")
        names = ",".join(sorted(s.name for s in self.cfg.spaces))
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(CALIBRATION_POINTS)]
        batch = self.cfg.upsert_batch
        with store_for(scratch) as store:
            store.ensure(vector_specs(scratch))
            t = time.perf_counter()
            for start in range(0, len(ids), batch):
                rows = [(pid, hashes[i % len(hashes)], texts[i % len(texts)])
                        for i, pid in enumerate(ids[start:start + batch], start)]
                vectors: dict[str, dict[str, Any]] = {}
                for space in self.cfg.spaces:
                    for h, vector, _ in scratch_m.cache.vectors(space.space_id,
                                                                sorted({r[1] for r in rows})):
                        vectors.setdefault(h, {})[space.name] = vector
                points = [(Point(pid, vectors[h], point_payload(self.cfg.kb, "calibration", h,
                                                                0, "", text)),
                           "calibration", h) for pid, h, text in rows]
                scratch_m.points.write(store, points, names)
            self.calibration["store"] = {"points": len(ids),
                                         "seconds": round(time.perf_counter() - t, 4)}


def _weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    """The value at which half of the total weight lies on either side (the lower one on a
    tie)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    half, acc = sum(weights) / 2, 0.0
    for i in order:
        acc += weights[i]
        if acc >= half:
            return values[i]
    return values[order[-1]]


def _ids(runs: Iterable[dict[str, Any]]) -> str:
    ids = sorted(r["run_id"] for r in runs)
    return f"#{ids[0]}" if len(ids) == 1 else f"#{ids[0]}–#{ids[-1]}"

