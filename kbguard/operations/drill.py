"""Drills: rehearse a failure on a scratch copy of the KB and time the way back.

Each drill copies the KB (manifest, store and, where it needs them, the newest snapshot or the
corpus) into a scratch folder, holding the KB's lock only while it copies, so the copy is one
consistent state. It then damages the copy and brings it back with kbguard's own commands, run
as separate processes exactly as an operator would type them, timing each:

    killed-rebuild    `rebuild --full` SIGKILLed after its first store write; `status` notices
                      the interrupted run; a plain `rebuild` resumes; `verify`
    provider-outage   the primary space's API providers point at a closed port and a document
                      arrives: `rebuild` exits 4 with the primary's debt, `search` answers from
                      the standby; the providers return: `rebuild` pays exactly the debt; `verify`
    store-corruption  `chaos delete-points` and `chaos flip-bits`; `verify` finds them (exit 1);
                      `verify --repair`; `verify`
    store-lost        the store folder deleted; `verify` notices; `rebuild` from the embedding
                      cache; `verify`
    manifest-lost     the manifest deleted; `verify` notices; `restore --latest` (with its
                      catch-up rebuild); `verify`
    everything-lost   only git and the DVC remote survive: `git clone`, `dvc pull` of the corpus
                      and the newest snapshot, `restore --latest`, `verify`

Detection time is the command that notices the damage; recovery time runs from the first
recovery command to the end of a healthy `verify` (exit 0, every canary checked and passing),
and is what the config's ``[recovery]`` objective is compared with. A drill with no timed
recovery has no time to compare and fails. Corpus changes not yet indexed are the KB's normal
state between rebuilds, not damage: a drill judges the recovery it rehearses, so a closing
`verify` that finds nothing else is healthy. The only write to the live KB is the drill's row in
its manifest's ``drills`` table.

What a run embeds it embeds once: the embedding-cache rows each drill's copy gained are carried
into the copies of the drills after it (for a drill that restores a snapshot, into the restored
manifest, with the restore's catch-up run as its own `rebuild`). Before the first drill the run
estimates its spend (kbguard.operations.drill_spend), refuses to start past ``max_cost`` and stops before a
drill whose estimate would take it past. A full scratch disk, like a busy KB, is not a failed
recovery: it is an error, and nothing is recorded for that drill. The scratch folder rules are in
kbguard.operations.drill_scratch.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbguard.config import Config, load_config
from kbguard.config.provider_settings import OpenAIProviderSettings
from kbguard.core.disk import disk_full, is_disk_full
from kbguard.core.durable import copy_sparse, copy_tree_sparse
from kbguard.core.faults import ENV as CRASH_ENV
from kbguard.core.outcome import Verdict
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import ConfigError, DiskFullError, KbguardError, LockedError, OverBudget
from kbguard.ingest.dvc_corpus import corpus_revision, find_dvc_root, tracking_file
from kbguard.ingest.scan import matches
from kbguard.kb.preflight import Lock, Needs, preflight, preflight_checks
from kbguard.manifest import Manifest
from kbguard.operations.drill_scratch import (
    refuse_inside_kb,
    remove_stale,
    require_room,
    room_needed,
    temporary_parent,
    temporary_root,
)
from kbguard.operations.drill_spend import DrillSpend, plan_spend
from kbguard.recovery.snapshot import list_snapshots

SCENARIOS = ("killed-rebuild", "provider-outage", "store-corruption", "store-lost",
             "manifest-lost", "everything-lost")
# how long recording a drill waits for a command that holds the live KB's lock
RECORD_WAIT_S = 120.0
# the live KB, while a drill copies it and while it records how the drill went
LIVE_KB = Needs("drill", lock=Lock.WRITE)


@dataclass
class DrillStep:
    """One command of a drill: what ran, for how long, how it ended."""

    command: str
    seconds: float
    exit_code: int | None
    note: str = ""
    phase: str = ""      # damage | detect | recover | setup


@dataclass
class DrillResult:
    """One drill's outcome: the columns of the manifest's ``drills`` table, and its steps."""

    scenario: str
    status: str                     # passed | failed | missed | not-possible
    healthy: bool
    started_at: datetime
    finished_at: datetime
    message: str
    objective_s: float | None = None
    detection_s: float | None = None
    recovery_s: float | None = None
    requests: int = 0
    texts: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    git_commit: str | None = None
    dvc_hash: str | None = None
    steps: list[DrillStep] = field(default_factory=list)
    drill_id: int | None = None     # its row in the live manifest, once recorded

    def record(self) -> dict[str, Any]:
        """The row for ``Manifest.drills.record``."""
        row = asdict(self)
        row.pop("drill_id")
        row["steps"] = [asdict(s) for s in self.steps]
        return row

    def to_dict(self) -> dict[str, Any]:
        out = self.record()
        out["drill_id"] = self.drill_id
        out["started_at"] = self.started_at.isoformat(timespec="seconds")
        out["finished_at"] = self.finished_at.isoformat(timespec="seconds")
        return out


@dataclass
class DrillReport:
    """Every drill of one `kbguard drill`. ``passed``: each drill passed, except that a drill
    the KB cannot do (not-possible) only fails the report when it was asked for by name, and
    the run was not stopped at its spending ceiling."""

    kb: str
    drills: list[DrillResult]
    explicit: bool                  # the scenarios were named, not the default "all"
    scratch: str | None = None      # kept for inspection when given with --scratch
    notes: list[str] = field(default_factory=list)
    spend: DrillSpend | None = None     # estimated before the first drill (None: no estimate)
    max_cost_usd: float | None = None
    stopped: str | None = None      # why the run stopped before its last drill

    @property
    def passed(self) -> bool:
        return not self._bad() and self.stopped is None

    def _bad(self) -> bool:
        bad = {"failed", "missed"} | ({"not-possible"} if self.explicit else set())
        return any(d.status in bad for d in self.drills)

    @property
    def verdict(self) -> Verdict:
        """As verify's: 0 when every drill passed, 1 when one failed or missed its objective,
        else 2 when the run stopped at its spending ceiling before every drill was run."""
        if self._bad():
            return Verdict.FINDINGS
        return Verdict.COULD_NOT_CHECK if self.stopped else Verdict.HEALTHY

    @property
    def spent_usd(self) -> float:
        return round(sum(d.cost_usd for d in self.drills), 6)

    def to_dict(self) -> dict[str, Any]:
        return {"kb": self.kb, "passed": self.passed, "exit_code": int(self.verdict),
                "scratch": self.scratch, "notes": self.notes,
                "spend": self.spend.to_dict() if self.spend else None,
                "max_cost_usd": self.max_cost_usd, "spent_usd": self.spent_usd,
                "stopped": self.stopped, "drills": [d.to_dict() for d in self.drills]}


class _StepFailed(Exception):
    """A drill command ended otherwise than the way back needs: the drill failed."""


def drill_kb(cfg: Config, scenarios: Sequence[str] = (), *, scratch: Path | None = None,
             max_cost: float | None = None, progress: Progress = SILENT,
             record: bool = True) -> DrillReport:
    """Run ``scenarios`` (every one when empty) against scratch copies of the KB of ``cfg`` and
    record each outcome in its manifest's drill history.

    ``scratch``: a folder that does not exist yet or is empty, outside the KB's corpus, store,
    snapshots and manifest folder; the copies are made there and kept. Without it a temporary
    folder is used and removed afterwards. ``max_cost``: USD of embedding the run may spend;
    a run estimated above it is refused (OverBudget) before any drill, and the run stops before
    a drill whose estimate would take what it spent past it."""
    names = list(dict.fromkeys(scenarios)) or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"Unknown drill {', '.join(map(repr, unknown))}; the drills are "
                          f"{', '.join(SCENARIOS)}.")
    # the live KB is locked only while a drill copies it, and while a drill is recorded
    preflight_checks(cfg, Needs("drill", manifest=_nothing_to_rehearse))
    if scratch is not None:
        scratch = scratch.expanduser().resolve()
        refuse_inside_kb(cfg, scratch, f"--scratch {scratch}", "Pass a folder outside the KB's "
                         "corpus, store, snapshots and manifest folder.")
        if scratch.exists() and (not scratch.is_dir() or any(scratch.iterdir())):
            raise ConfigError(f"--scratch {scratch} is not an empty folder; drills damage what "
                              "is in it. Pass a new or empty folder.")
    tmp = temporary_parent(cfg) if scratch is None else Path(tempfile.gettempdir())
    report = DrillReport(kb=cfg.kb, drills=[], explicit=bool(scenarios), max_cost_usd=max_cost)
    for folder, pid in remove_stale(tmp):
        report.notes.append(f"removed {folder}, the scratch copies of a drill that ended "
                            f"without removing them (process {pid})")
        progress.note(report.notes[-1])
    blockers = {name: _not_possible(cfg, name) for name in names}
    runnable = [n for n in names if blockers[n] is None]
    if runnable:   # copies kept in --scratch add up; temporary ones go one at a time
        needs = [_room_needed(cfg, n) for n in runnable]
        require_room(scratch or tmp, sum(needs) if scratch else max(needs), runnable)
    report.spend = _say_spend(cfg, runnable, max_cost, report, progress)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        root, keep = scratch, True
        report.scratch = str(root)
    else:
        root, keep = temporary_root(cfg, tmp), False
    carried = _Carried(root / "carried-embeddings")
    try:
        for name in names:
            if blockers[name] is None and _over_ceiling(report, name):
                break
            progress.note(f"drill {name}")
            result = _run_drill(cfg, name, root / name, progress, blockers[name], carried)
            if record:
                try:
                    result.drill_id = _record(cfg, result)
                except KbguardError as exc:
                    report.notes.append(f"{name} was not recorded in the drill history: {exc}")
            report.drills.append(result)
            progress.note(f"drill {name}: {result.status}. {result.message}")
            if not keep:   # one drill's copy at a time on the temporary folder's disk
                shutil.rmtree(root / name, ignore_errors=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return report


def _nothing_to_rehearse(cfg: Config) -> KbguardError:
    return KbguardError(f"KB '{cfg.kb}' has no manifest at {cfg.manifest}: there is nothing "
                        "to rehearse on yet. Build it with `kbguard rebuild` first.")


def _say_spend(cfg: Config, runnable: list[str], max_cost: float | None, report: DrillReport,
               progress: Progress) -> DrillSpend | None:
    """Estimate the run's embedding spend and say it before any drill; refuse a run whose
    estimate passes ``max_cost``."""
    if not runnable:
        return DrillSpend()
    token = "0" * 12   # as long as a drill's own
    arrival = _arrival_text(Path(_arrival_path(cfg) or "arrival.md").suffix, token)
    try:
        spend = plan_spend(cfg, runnable, arrival, _search_text(token), progress)
    except LockedError:
        raise
    except KbguardError as exc:
        if max_cost is not None:
            raise   # no estimate, no ceiling to keep
        report.notes.append(f"the drills' embedding spend could not be estimated: {exc}")
        progress.note(report.notes[-1])
        return None
    total = spend.total
    said = (f"about ${total.cost_usd:.6f} on embedding ({total.texts} texts, {total.tokens} "
            "tokens through priced providers")
    if max_cost is not None and total.cost_usd > max_cost:
        raise OverBudget(
            f"The drills would spend {said}), more than --max-cost ${max_cost:.6f}. Nothing was "
            "run. Raise --max-cost, or run fewer drills (`kbguard rebuild --estimate` shows "
            "what each recovery costs; a `kbguard rebuild` first leaves less for the drills to "
            "embed).", estimate_usd=total.cost_usd, ceiling_usd=max_cost)
    progress.note(f"the drills will spend {said}; each text once across the drills)"
                  + (f", within --max-cost ${max_cost:.6f}" if max_cost is not None else ""))
    return spend


def _room_needed(cfg: Config, scenario: str) -> int:
    restores = scenario in ("manifest-lost", "everything-lost")
    return room_needed(cfg, scenario, _newest_local_snapshot(cfg) if restores else None,
                       _git_root(cfg.root) if scenario == "everything-lost" else None)


def _over_ceiling(report: DrillReport, name: str) -> bool:
    """Whether drill ``name`` would take the run past its ceiling: stop the run if so."""
    if report.max_cost_usd is None or report.spend is None:
        return False
    ahead = report.spend.drills[name].cost_usd
    if report.spent_usd + ahead <= report.max_cost_usd + 1e-9:
        return False
    report.stopped = (f"stopped before {name}: the drills so far spent ${report.spent_usd:.6f} "
                      f"and it is estimated at ${ahead:.6f}, which would pass --max-cost "
                      f"${report.max_cost_usd:.6f}")
    return True


def _record(cfg: Config, result: DrillResult) -> int:
    """Add the drill to the live manifest, waiting a while for a command that holds the KB."""
    deadline = time.monotonic() + RECORD_WAIT_S
    while True:
        try:
            with preflight(cfg, LIVE_KB), Manifest.open(cfg.manifest, kb=cfg.kb) as m:
                return m.drills.record(result.record())
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# -- one drill --------------------------------------------------------------------------------

class _Carried:
    """The embedding-cache rows the drills of one run made, carried into each next copy."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files: list[Path] = []

    def take(self, manifest: Path, since: datetime, scenario: str,
             own_paths: Sequence[str]) -> None:
        """Keep the rows the manifest of a drill's copy gained from ``since`` on, but those of
        the documents the drill added to its copy (``own_paths``), which no other drill has."""
        if not manifest.exists():
            return
        self.folder.mkdir(exist_ok=True)
        path = self.folder / f"{scenario}.parquet"
        try:
            with Manifest.open(manifest, read_only=True) as m:
                if m.cache.export_since(since, path, except_paths=own_paths):
                    self.files.append(path)
        except KbguardError:
            pass  # a copy a failed drill left unreadable: the next drills embed what it had

    def give(self, manifest: Path) -> int:
        """Add the rows kept so far to a copy's manifest; how many it lacked."""
        with Manifest.open(manifest) as m:
            return m.cache.import_files(self.files)


def _run_drill(cfg: Config, scenario: str, folder: Path, progress: Progress,
               blocker: str | None, carried: _Carried) -> DrillResult:
    started = datetime.now(UTC)
    commit, dvc_hash = corpus_revision(cfg.corpus)
    objective = cfg.rto_full_rebuild_s if scenario == "everything-lost" else \
        cfg.rto_single_failure_s
    run = _Runner(scenario, folder, progress, objective, carried)
    result = DrillResult(scenario=scenario, status="failed", healthy=False, started_at=started,
                         finished_at=started, message="", objective_s=objective,
                         git_commit=commit, dvc_hash=dvc_hash, steps=run.steps)
    if blocker:
        result.status, result.message = "not-possible", blocker
        result.finished_at = datetime.now(UTC)
        return result
    require_room(folder, _room_needed(cfg, scenario), [scenario])
    folder.mkdir(parents=True)
    healthy_cfg: Config | None = None
    try:
        healthy_cfg = _DRILLS[scenario](cfg, run)
        result.healthy = True
    except _StepFailed as exc:
        result.message = f"{scenario} failed: {exc}"
    except (LockedError, DiskFullError):
        # the live KB was busy when its copy was to be made, or the scratch disk is full: not
        # a failed recovery, and not recorded as one
        raise
    except (KbguardError, OSError) as exc:
        # kbguard's own full disks are DiskFullError (above); an OSError says so by its errno
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise disk_full(folder, f"run the {scenario} drill in {folder}",
                            resume="run the drill again; the live KB is as it was and this "
                                   "drill was not recorded") from exc
        result.message = f"{scenario} failed: {exc}"
    result.detection_s = run.seconds("detect")
    result.recovery_s = run.recovery_seconds()
    took = result.recovery_s
    if result.healthy and took is None:
        result.message = (f"{scenario} has no recovery time: no recovery step was timed, so it "
                          "cannot be compared with its objective")
    elif result.healthy and took is not None:
        if took > objective:
            result.status = "missed"
            result.message = (f"{scenario} recovered in {took:.1f} s, objective {objective:g} s: "
                              f"missed by {took - objective:.1f} s")
        else:
            result.status = "passed"
            result.message = (f"{scenario} recovered in {took:.1f} s, objective "
                              f"{objective:g} s (detected in {result.detection_s or 0:.1f} s)")
    usage_cfg = healthy_cfg if result.healthy else run.cfg
    if usage_cfg is not None and usage_cfg.manifest.exists():
        try:
            with Manifest.open(usage_cfg.manifest, read_only=True) as m:
                usage = m.ledger.usage_since(started)
            result.requests, result.texts = usage["requests"], usage["texts"]
            result.tokens, result.cost_usd = usage["tokens"], usage["cost_usd"]
        except KbguardError:
            pass  # a scratch manifest a failed drill left unreadable: its cost is unknown
        carried.take(usage_cfg.manifest, started, scenario, run.added)
    result.finished_at = datetime.now(UTC)
    return result


class _Runner:
    """Runs a drill's commands in its scratch folder and keeps their steps."""

    def __init__(self, scenario: str, folder: Path, progress: Progress, objective: float,
                 carried: _Carried):
        self.scenario, self.folder, self.progress = scenario, folder, progress
        self.carried = carried
        self.added: list[str] = []        # documents the drill added to its copy's corpus
        self.steps: list[DrillStep] = []
        self.cfg: Config | None = None    # the scratch KB's config
        self._recover_start: float | None = None
        self._recover_end: float | None = None
        self._drill_own_s = 0.0           # the drill's own steps amid the recovery
        # a step that hangs is a failed drill, not a hung one
        self.timeout = max(600.0, 2 * objective)

    def seconds(self, phase: str) -> float | None:
        found = [s.seconds for s in self.steps if s.phase == phase]
        return round(sum(found), 3) if found else None

    def recovery_seconds(self) -> float | None:
        if self._recover_start is None or self._recover_end is None:
            return None
        return round(self._recover_end - self._recover_start - self._drill_own_s, 3)

    def kbguard(self, *args: str, phase: str, expect: Sequence[int] = (0,), note: str = "",
                env: dict[str, str] | None = None, cfg: Config | None = None,
                killed: bool = False) -> tuple[int, dict[str, Any]]:
        """Run ``kbguard ARGS --config SCRATCH --json``; its exit code and its JSON."""
        cfg = cfg or self.cfg
        assert cfg is not None
        argv = [sys.executable, "-m", "kbguard", *args, "--config", str(cfg.path), "--json"]
        shown = "kbguard " + " ".join(shlex.quote(a) for a in args)
        done = self._run(argv, shown, phase, env=env, note=note, cwd=self.folder)
        code = done.returncode
        if killed:
            if code != -9:
                raise _StepFailed(f"`{shown}` was to be killed by SIGKILL at its first store "
                                  f"write but exited {code}: the crash point was never reached")
            self.steps[-1].exit_code = 137
            return code, {}
        try:
            data = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            data = {}
        if code not in expect:
            why = data.get("error") if isinstance(data, dict) else None
            if isinstance(data, dict) and data.get("error_type") == DiskFullError.__name__:
                raise DiskFullError(str(why))   # the scratch disk: not a failed recovery
            why = why or _last_line(done.stderr) or "no output"
            raise _StepFailed(f"`{shown}` exited {code}, expected "
                              f"{' or '.join(map(str, expect))}: {why}")
        return code, data if isinstance(data, dict) else {}

    def command(self, argv: Sequence[str], shown: str, *, phase: str, cwd: Path,
                note: str = "") -> subprocess.CompletedProcess[str]:
        """Run a command other than kbguard (git, dvc); it must exit 0."""
        done = self._run(list(argv), shown, phase, cwd=cwd, note=note)
        if done.returncode != 0:
            raise _StepFailed(f"`{shown}` exited {done.returncode}: "
                              f"{_last_line(done.stderr) or _last_line(done.stdout) or 'no output'}")
        return done

    def act(self, what: str, fn: Callable[[], Any], *, phase: str = "damage") -> None:
        """A step done here rather than by a command: deleting a folder, editing a file. A
        setup step amid the recovery is the drill's own work: not counted in its time."""
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        if phase == "setup" and self._recover_start is not None:
            self._drill_own_s += seconds
        self._add(DrillStep(what, round(seconds, 3), None, phase=phase))

    def carry_in(self, manifest: Path) -> None:
        """Add to the copy's cache what earlier drills of the run embedded, so that no text is
        embedded twice in one run."""
        if not self.carried.files:
            return
        added: list[int] = []
        self.act("carry in the vectors earlier drills of this run embedded",
                 lambda: added.append(self.carried.give(manifest)), phase="setup")
        self.steps[-1].note = f"{added[0]} the copy's cache lacked"

    def check(self, *args: str, phase: str, expect: Sequence[int]
              ) -> tuple[int, dict[str, Any], dict[str, int], int]:
        """Run ``kbguard verify ARGS``: its exit code, its JSON, the damage it found (count by
        class) and the corpus changes not yet indexed, which are not damage."""
        code, data = self.kbguard("verify", *args, phase=phase, expect=expect)
        findings = data.get("findings") or {}
        damage = {name: int(f.get("count") or 0) for name, f in findings.items()
                  if f.get("count") and name != "corpus_changed"}
        pending = int((findings.get("corpus_changed") or {}).get("count") or 0)
        return code, data, damage, pending

    def verify_healthy(self) -> None:
        """The closing `verify`: nothing found but corpus changes not yet indexed (exit 0, or 1
        for those alone), and every canary checked and passing."""
        cfg = self.cfg
        assert cfg is not None
        code, data, damage, pending = self.check(phase="recover", expect=(0, 1, 2))
        if code == 2 or damage or (code == 1 and not pending):
            raise _StepFailed(f"the KB did not end healthy: `kbguard verify` exited {code}"
                              + (f" ({', '.join(f'{n} {c}' for n, c in damage.items())})"
                                 if damage else "")
                              + (f": {data['error']}" if data.get("error") else ""))
        if cfg.canaries:
            canary = data.get("findings", {}).get("canary_failures", {})
            if canary.get("count") or canary.get("checked") is False:
                raise _StepFailed("the KB did not end healthy: its canaries were not all "
                                  "checked and passing")
            note = f"healthy; {len(cfg.canaries)} canaries passing"
        else:
            note = "healthy (the KB has no canaries)"
        if pending:
            note += (f"; {pending} corpus changes not yet indexed (not damage: the next "
                     "`kbguard rebuild` indexes them)")
        self.steps[-1].note = note

    def _run(self, argv: list[str], shown: str, phase: str, *, cwd: Path, note: str = "",
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        self.progress.note(f"  {self.scenario}: {shown}")
        base = {k: v for k, v in os.environ.items() if k not in (CRASH_ENV, "KBGUARD_CONFIG")}
        t0 = time.perf_counter()
        if phase == "recover" and self._recover_start is None:
            self._recover_start = t0
        try:
            done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                                  timeout=self.timeout, env={**base, **(env or {})})
        except subprocess.TimeoutExpired as exc:
            raise _StepFailed(f"`{shown}` did not finish within {self.timeout:g} s") from exc
        except OSError as exc:
            raise _StepFailed(f"`{shown}` could not run: {exc}") from exc
        t1 = time.perf_counter()
        if phase == "recover":
            self._recover_end = t1
        self._add(DrillStep(shown, round(t1 - t0, 3), done.returncode, note, phase))
        return done

    def _add(self, step: DrillStep) -> None:
        self.steps.append(step)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# -- the scenarios ----------------------------------------------------------------------------

def _killed_rebuild(cfg: Config, run: _Runner) -> Config:
    scratch = _copy_kb(cfg, run)
    run.kbguard("rebuild", "--full", phase="damage", killed=True,
                env={CRASH_ENV: "store-upsert:1"},
                note="SIGKILLed after its first store write, before the write was confirmed")
    _, status = run.kbguard("status", "--no-corpus-check", phase="detect")
    last = (status.get("last_run") or {}).get("status")
    if last != "interrupted":
        raise _StepFailed(f"`kbguard status` shows the killed run as {last!r}, not interrupted")
    run.steps[-1].note = "the last run shows as interrupted"
    _, rebuilt = run.kbguard("rebuild", phase="recover")
    run.steps[-1].note = (f"resumed: {rebuilt.get('chunks', {}).get('written', 0)} points "
                          f"written, {rebuilt.get('chunks', {}).get('embedded', 0)} texts "
                          "embedded")
    run.verify_healthy()
    return scratch


def _provider_outage(cfg: Config, run: _Runner) -> Config:
    primary = cfg.spaces[0]
    corpus = run.folder / "corpus"
    run.act("copy the corpus (a document arrives during the outage)",
            lambda: shutil.copytree(cfg.corpus, corpus, symlinks=True), phase="setup")
    scratch = _copy_kb(cfg, run, corpus=corpus, down=True)
    added = _arrival_path(cfg)
    assert added is not None  # _not_possible checked it
    run.added.append(added)
    token = uuid.uuid4().hex[:12]
    run.act(f"the providers of space {primary.name!r} go down (base_url: a closed port); "
            f"{added} arrives",
            lambda: _write_arrival(corpus / added, token))
    _, during = run.kbguard("rebuild", phase="detect", expect=(4,))
    debt = int(during.get("spaces", {}).get(primary.name, {}).get("debt") or 0)
    if debt <= 0:
        raise _StepFailed(f"the rebuild during the outage recorded no debt for {primary.name!r}")
    run.steps[-1].note = f"exit 4: space {primary.name!r} owes {debt} texts"
    _, found = run.kbguard("search", _search_text(token), "-k", "3", phase="detect")
    if not found.get("degraded") or found.get("space") == primary.name:
        raise _StepFailed(f"search answered from {found.get('space')!r} without saying it was "
                          "degraded: it did not fall back to the standby")
    run.steps[-1].note = f"answered from the standby space {found.get('space')!r}, degraded"

    def back() -> None:
        run.cfg = _write_scratch_config(cfg, scratch.path, corpus=corpus, store=_store_of(run),
                                        manifest=scratch.manifest,
                                        snapshots=scratch.snapshot_root)

    run.act(f"the providers of space {primary.name!r} return", back)
    _, paid = run.kbguard("rebuild", phase="recover")
    space = paid.get("spaces", {}).get(primary.name, {})
    if int(space.get("debt") or 0) != 0 or int(space.get("texts") or 0) != debt:
        raise _StepFailed(f"the rebuild after the outage embedded {space.get('texts')} texts "
                          f"for {primary.name!r} and left a debt of {space.get('debt')}; the "
                          f"debt was {debt}")
    run.steps[-1].note = f"the debt paid: exactly {debt} texts embedded for {primary.name!r}"
    run.verify_healthy()
    return scratch


def _store_corruption(cfg: Config, run: _Runner) -> Config:
    scratch = _copy_kb(cfg, run)
    for action in ("delete-points", "flip-bits"):
        run.kbguard("chaos", action, "-n", "3", "--seed", "7", "--yes", phase="damage")
    _, _, found, _ = run.check(phase="detect", expect=(1,))
    if not found:   # exit 1 for corpus changes not yet indexed alone
        raise _StepFailed("`kbguard verify` did not find the damage")
    run.steps[-1].note = f"{sum(found.values())} findings ({_classes(found)})"
    _, _, left, _ = run.check("--repair", phase="recover", expect=(0, 1))
    if left:
        raise _StepFailed(f"`kbguard verify --repair` left damage: {_classes(left)}")
    run.verify_healthy()
    return scratch


def _classes(found: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in found.items())


def _store_lost(cfg: Config, run: _Runner) -> Config:
    scratch = _copy_kb(cfg, run)
    store = _store_of(run)
    run.act("delete the store", lambda: shutil.rmtree(store))
    run.kbguard("verify", phase="detect", expect=(1, 2))
    _, rebuilt = run.kbguard("rebuild", phase="recover")
    embedded = int(rebuilt.get("chunks", {}).get("embedded") or 0)
    run.steps[-1].note = (f"{rebuilt.get('chunks', {}).get('written', 0)} points written from "
                          f"the embedding cache, {embedded} texts embedded")
    run.verify_healthy()
    return scratch


def _manifest_lost(cfg: Config, run: _Runner) -> Config:
    scratch = _copy_kb(cfg, run, snapshot=True)

    def lose() -> None:
        for p in (scratch.manifest, scratch.manifest.with_name(scratch.manifest.name + ".wal")):
            p.unlink(missing_ok=True)

    run.act("delete the manifest", lose)
    run.kbguard("verify", phase="detect", expect=(2,))
    _restore_latest(run)
    run.verify_healthy()
    return scratch


def _restore_latest(run: _Runner) -> None:
    """`kbguard restore --latest`, then its catch-up. When earlier drills of the run embedded
    texts, the catch-up runs as its own `kbguard rebuild` (the one `restore` would run) after
    they are carried into the restored manifest, which lacks them."""
    assert run.cfg is not None
    if not run.carried.files:
        _, restored = run.kbguard("restore", "--latest", "--yes", phase="recover")
        run.steps[-1].note = f"restored snapshot {restored.get('snapshot')} and caught up"
        return
    _, restored = run.kbguard("restore", "--latest", "--no-catch-up", "--yes", phase="recover")
    run.steps[-1].note = f"restored snapshot {restored.get('snapshot')}"
    run.carry_in(run.cfg.manifest)
    _, caught = run.kbguard("rebuild", phase="recover")
    run.steps[-1].note = (f"the restore's catch-up: "
                          f"{caught.get('chunks', {}).get('embedded', 0)} texts embedded")


def _everything_lost(cfg: Config, run: _Runner) -> Config:
    repo = _git_root(cfg.root)
    assert repo is not None  # _not_possible checked it
    clone = run.folder / "clone"
    lost = run.folder / "lost"
    # before the clone: the KB's own config, its paths in an empty folder, meets nothing
    run.cfg = _write_scratch_config(cfg, run.folder / "lost.toml", corpus=cfg.corpus,
                                    store=lost / "store", manifest=lost / "manifest.duckdb",
                                    snapshots=lost / "snapshots")
    run.kbguard("verify", phase="detect", expect=(2,))
    run.command(["git", "clone", "-q", str(repo), str(clone)], "git clone REPO", phase="recover",
                cwd=run.folder)
    cloned = load_config(clone / cfg.path.relative_to(repo))

    def inside(p: Path) -> Path:
        return clone / p.relative_to(repo)

    corpus, snapshots = inside(cfg.corpus), inside(cfg.snapshot_root)
    corpus_dvc = tracking_file(cfg.corpus)
    newest = _newest_tracked_snapshot(cfg, repo)
    assert corpus_dvc is not None and newest is not None
    pulls = [str(corpus_dvc.relative_to(repo)), str(newest.relative_to(repo))]
    run.command([sys.executable, "-m", "dvc", "pull", "-q", *pulls],
                "dvc pull " + " ".join(pulls), phase="recover", cwd=clone,
                note="the corpus and the newest snapshot from the DVC remote")
    # paths the KB keeps outside the repository (its store, its manifest) are gone with it:
    # they go to the scratch folder, never back to the live KB
    run.cfg = _write_scratch_config(
        cloned, clone / ".kbguard-drill.toml", corpus=corpus, snapshots=snapshots,
        store=_under(cfg.store_path, repo, clone, lost / "store"),
        manifest=_under(cfg.manifest, repo, clone, lost / "manifest.duckdb"))
    _restore_latest(run)
    run.verify_healthy()
    return run.cfg


_DRILLS: dict[str, Callable[[Config, _Runner], Config]] = {
    "killed-rebuild": _killed_rebuild, "provider-outage": _provider_outage,
    "store-corruption": _store_corruption, "store-lost": _store_lost,
    "manifest-lost": _manifest_lost, "everything-lost": _everything_lost,
}


# -- what each drill needs --------------------------------------------------------------------

def _not_possible(cfg: Config, scenario: str) -> str | None:
    """What the KB lacks for ``scenario`` (the message says what to set up), or None."""
    if cfg.store_url:
        return (f"{scenario} is not possible: the store is a Qdrant server ({cfg.collection}), "
                "whose files a drill cannot copy. Drill a copy of the KB with a local store "
                "(store.path) restored from its newest snapshot.")
    if scenario == "provider-outage":
        primary = cfg.spaces[0]
        if len(cfg.spaces) < 2:
            return ("provider-outage is not possible: the KB has one space, so nothing can "
                    "answer while its providers are down. Add a standby space (a second "
                    "[[spaces]] with a local model, as `kbguard init --provider openai` writes).")
        if not all(isinstance(e, OpenAIProviderSettings) for e in primary.chain):
            return (f"provider-outage is not possible: the primary space {primary.name!r} "
                    "embeds with a local model, which has no outage to rehearse (its loss is a "
                    "missing model, refused when the config loads). The drill takes down an "
                    "API primary whose chain is only API providers.")
        if _arrival_path(cfg) is None:
            return ("provider-outage is not possible: corpus.include accepts no .md, .txt, "
                    ".rst or .html file at the corpus root, where the drill adds a document.")
    if scenario == "manifest-lost" and _newest_local_snapshot(cfg) is None:
        return ("manifest-lost is not possible: the KB has no snapshot under "
                f"{cfg.snapshot_root} to restore the manifest from. Run `kbguard snapshot "
                "create` (and keep making them, e.g. nightly).")
    if scenario == "everything-lost":
        return _everything_lost_blocker(cfg)
    return None


def _everything_lost_blocker(cfg: Config) -> str | None:
    head = "everything-lost is not possible: "
    repo = _git_root(cfg.root)
    if repo is None:
        return head + (f"the config {cfg.path} is not in a git repository. Keep the config, "
                       "the corpus's .dvc file and the snapshots' .dvc files in git.")
    rel_cfg = cfg.path.relative_to(repo)
    if not _git_tracked(repo, rel_cfg):
        return head + f"the config {rel_cfg} is not committed to git in {repo}; commit it."
    if not _is_under(cfg.corpus, repo) or find_dvc_root(cfg.corpus) is None \
            or tracking_file(cfg.corpus) is None:
        return head + (f"the corpus {cfg.corpus} is not tracked by DVC in {repo}. Run `dvc add "
                       "CORPUS`, commit the .dvc file and `dvc push` it to a remote.")
    corpus_dvc = tracking_file(cfg.corpus)
    assert corpus_dvc is not None
    if not _git_tracked(repo, corpus_dvc.relative_to(repo)):
        return head + f"{corpus_dvc.relative_to(repo)} is not committed to git; commit it."
    if not _is_under(cfg.snapshot_root, repo) or _newest_tracked_snapshot(cfg, repo) is None:
        return head + ("the KB has no snapshot on a DVC remote committed to git. Run `kbguard "
                       "snapshot create --dvc-push` and commit the snapshot's .dvc file.")
    if not _dvc_remotes(repo):
        return head + ("the DVC repository has no remote. Add one with `dvc remote add -d NAME "
                       "URL` and push the corpus and the snapshots to it.")
    return None


def _arrival_path(cfg: Config) -> str | None:
    """A new file name at the corpus root that the corpus globs take, for a text format."""
    for suffix in (".md", ".txt", ".rst", ".html"):
        rel = f"kbguard-drill-arrival{suffix}"
        if matches(rel, cfg.include) and not matches(rel, cfg.exclude) \
                and not (cfg.corpus / rel).exists():
            return rel
    return None


def _write_arrival(path: Path, token: str) -> None:
    path.write_text(_arrival_text(path.suffix, token), encoding="utf-8")


def _arrival_text(suffix: str, token: str) -> str:
    text = (f"Rehearsed provider outage {token}. This document arrived while the primary "
            "space's embedding providers were down, so only the standby could embed it; the "
            "primary embeds it once its providers return.")
    return (f"<html><body><p>{text}</p></body></html>\n" if suffix == ".html"
            else f"Provider outage drill\n\n{text}\n")


def _search_text(token: str) -> str:
    return f"rehearsed provider outage {token}"


def _newest_local_snapshot(cfg: Config) -> Path | None:
    local = [s for s in list_snapshots(cfg) if s.local and not s.problem]
    return local[-1].path if local else None


def _newest_tracked_snapshot(cfg: Config, repo: Path) -> Path | None:
    """The newest snapshot ``.dvc`` file committed to git: what a fresh clone can pull."""
    tracked = [s for s in list_snapshots(cfg) if s.dvc
               and _git_tracked(repo, (s.path.with_name(s.id + ".dvc")).relative_to(repo))]
    return tracked[-1].path.with_name(tracked[-1].id + ".dvc") if tracked else None


def _git_root(path: Path) -> Path | None:
    try:
        done = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(done.stdout.strip()).resolve() if done.returncode == 0 else None


def _git_tracked(repo: Path, rel: Path) -> bool:
    done = subprocess.run(["git", "-C", str(repo), "ls-files", "--error-unmatch", "--",
                           rel.as_posix()], capture_output=True, text=True, timeout=60)
    return done.returncode == 0


def _dvc_remotes(repo: Path) -> bool:
    done = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    return done.returncode == 0 and bool(done.stdout.strip())


def _is_under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root)


def _under(path: Path | None, repo: Path, clone: Path, elsewhere: Path) -> Path:
    if path is not None and _is_under(path, repo):
        return clone / path.resolve().relative_to(repo)
    return elsewhere


# -- the scratch copy -------------------------------------------------------------------------

def _copy_kb(cfg: Config, run: _Runner, *, corpus: Path | None = None, down: bool = False,
             snapshot: bool = False) -> Config:
    """Copy the KB into the drill's folder under the KB's lock, write a config for the copy and
    make it the runner's. ``snapshot``: also copy the newest intact local snapshot."""
    folder = run.folder
    manifest, store, snapshots = folder / "manifest.duckdb", folder / "store", folder / "snapshots"

    def copy() -> None:
        with preflight(cfg, LIVE_KB):
            copy_sparse(cfg.manifest, manifest)
            wal = cfg.manifest.with_name(cfg.manifest.name + ".wal")
            if wal.exists():
                copy_sparse(wal, manifest.with_name(manifest.name + ".wal"))
            if cfg.store_path is not None and cfg.store_path.exists():
                copy_tree_sparse(cfg.store_path, store)
            snapshots.mkdir()
            newest = _newest_local_snapshot(cfg) if snapshot else None
            if newest is not None:
                copy_tree_sparse(newest, snapshots / newest.name)

    run.act("copy the KB under its lock" + (" (and its newest snapshot)" if snapshot else ""),
            copy, phase="setup")
    run.carry_in(manifest)
    run.cfg = _write_scratch_config(cfg, folder / "kbguard-drill.toml",
                                    corpus=corpus or cfg.corpus, store=store, manifest=manifest,
                                    snapshots=snapshots, down=down)
    return run.cfg


def _store_of(run: _Runner) -> Path:
    assert run.cfg is not None and run.cfg.store_path is not None
    return run.cfg.store_path


def _closed_port() -> int:
    """A local port nothing listens on: a connection to it is refused at once, as to a provider
    whose service is down."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_scratch_config(cfg: Config, dest: Path, *, corpus: Path, store: Path, manifest: Path,
                          snapshots: Path, down: bool = False) -> Config:
    """The KB's own config file with every path pointed at the scratch copy (absolute) and, with
    ``down``, the primary space's API providers at a closed local port. Loaded back and checked
    to name the same KB, collection and spaces, so point ids and vectors are the KB's own."""
    data = tomllib.loads(cfg.path.read_text(encoding="utf-8"))
    data.setdefault("kb", {})["name"] = cfg.kb
    data.setdefault("corpus", {})["path"] = str(corpus)
    data.setdefault("store", {}).update(path=str(store), collection=cfg.collection)
    data["store"].pop("url", None)
    data["store"].pop("api_key_env", None)
    data.setdefault("manifest", {})["path"] = str(manifest)
    data.setdefault("snapshots", {})["root"] = str(snapshots)
    for raw, space in zip(data.get("spaces", []), cfg.spaces, strict=True):
        if space.model_path is not None:
            raw["model_path"] = str(space.model_path)
        for entry, resolved in zip(raw.get("providers", []), space.providers, strict=True):
            for key in ("model_path", "api_key_file"):
                if getattr(resolved, key, None) is not None:
                    entry[key] = str(getattr(resolved, key))
    if down:
        port = _closed_port()
        for entry in data["spaces"][0].get("providers", []):
            if entry.get("type") == "openai":
                entry["base_url"] = f"http://127.0.0.1:{port}/v1"
    dest.write_text("# written by `kbguard drill` for a scratch copy of KB "
                    f"'{cfg.kb}' ({cfg.path})\n" + _toml(data), encoding="utf-8")
    copy = load_config(dest)
    if (copy.kb, copy.collection, [s.space_id for s in copy.spaces]) != \
            (cfg.kb, cfg.collection, [s.space_id for s in cfg.spaces]):
        raise KbguardError(f"The scratch config {dest} does not describe KB '{cfg.kb}' as "
                           f"{cfg.path} does; this is a bug in `kbguard drill`.")
    return copy


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml(data: dict[str, Any]) -> str:
    """A KB config's TOML: tables, arrays of tables (one level nested, as spaces.providers),
    scalars, lists of scalars and inline tables of strings."""
    out: list[str] = []

    def table(prefix: str, body: dict[str, Any], header: str) -> None:
        out.append(header)
        nested = []
        for key, value in body.items():
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                nested.append((key, value))
            else:
                out.append(f"{_key(key)} = {_value(value)}")
        for key, entries in nested:
            for entry in entries:
                table(f"{prefix}.{_key(key)}", entry, f"[[{prefix}.{_key(key)}]]")
        out.append("")

    for name, body in data.items():
        if isinstance(body, list):
            for entry in body:
                table(_key(name), entry, f"[[{_key(name)}]]")
        else:
            table(_key(name), body, f"[{_key(name)}]")
    return "\n".join(out)


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} into a scratch config")
