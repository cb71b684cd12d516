"""`kbguard runbook`: this KB's recovery runbook, written from its config, drills and estimates.

For every failure kbguard rehearses: how it shows (the verify class, the Prometheus metric, the
exit code), the exact commands for this KB's config, how long recovery took in the newest drill
and when, what an estimate says it costs now, and how to confirm recovery. A duration that no
drill has measured is written as "not yet drilled", never guessed; a cost that cannot be
estimated says why.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbguard.config import Config
from kbguard.core.progress import human_duration
from kbguard.ingest.dvc_corpus import find_dvc_root
from kbguard.integrity.verify import STORE_CLASSES
from kbguard.kb.preflight import Needs, preflight_checks
from kbguard.manifest import Manifest
from kbguard.operations.estimate import EstimateReport, Scenario, estimate
from kbguard.operations.status import INTERRUPTED


@dataclass(frozen=True)
class _Failure:
    drill: str            # the `kbguard drill` scenario
    title: str
    estimate: str         # the `rebuild --estimate` scenario that prices its recovery
    full: bool            # measured against rto_full_rebuild_s (else rto_single_failure_s)


FAILURES = (
    _Failure("store-corruption", "The store is damaged (bit flips, lost or stale points)",
             "store_lost", False),
    _Failure("store-lost", "The store is lost", "store_lost", False),
    _Failure("manifest-lost", "The manifest is lost", "restore_latest", False),
    _Failure("killed-rebuild", "A rebuild was killed mid-run", "incremental", False),
    _Failure("provider-outage", "The primary space's embedding providers are down",
             "primary_down", False),
    _Failure("everything-lost", "Everything is lost but git and the DVC remote",
             "restore_latest", True),
)


def render_runbook(cfg: Config, *, estimates: EstimateReport | None = None,
                   now: datetime | None = None, config_path: Path | None = None) -> str:
    """The runbook as Markdown. ``estimates``: reuse an estimate (else one is made now).
    ``config_path``: the config as its commands name it, as the user gave it (default: its
    absolute path); a relative one holds from the current folder, which the runbook names."""
    now = now or datetime.now(UTC)
    preflight_checks(cfg, Needs("runbook", unlocked=True))   # the estimate checks the corpus
    drills = _latest_drills(cfg)
    if estimates is None:
        estimates = estimate(cfg)
    shown = config_path if config_path is not None else cfg.path
    flag = f"--config {shlex.quote(str(shown))}"
    where = ("The commands name the config by its absolute path: run them from any folder."
             if shown.is_absolute() else
             f"Run the commands from `{Path.cwd()}`: the config path `{shown}` is relative "
             "to that folder.")
    out = [f"# Recovery runbook: KB `{cfg.kb}`", "",
           f"Written by `kbguard runbook {flag}` on {now:%Y-%m-%d %H:%M} UTC from the config, "
           "the drills recorded in the manifest and an estimate made then. Durations are the "
           "newest drill's; a failure never drilled says so. Run `kbguard drill "
           f"{flag}` to measure them, and write this file again.", "", where, "",
           f"Objectives (`[recovery]`): one failure {human_duration(cfg.rto_single_failure_s)}, "
           f"everything lost {human_duration(cfg.rto_full_rebuild_s)}.", "",
           "| failure | last drill | recovery | objective | estimated cost now |",
           "|---|---|---|---|---|"]
    for f in FAILURES:
        d = drills.get(f.drill)
        objective = cfg.rto_full_rebuild_s if f.full else cfg.rto_single_failure_s
        sc = estimates.scenarios[f.estimate]
        out.append(f"| {f.title} | {_when(d)} | {_recovery(d)} | {human_duration(objective)} | "
                   f"{_cost_cell(f, sc)} |")
    out.append("")
    for f in FAILURES:
        out += _section(cfg, f, drills.get(f.drill), estimates, flag)
    return "\n".join(out).rstrip() + "\n"


def _section(cfg: Config, f: _Failure, drill: dict[str, Any] | None,
             estimates: EstimateReport, flag: str) -> list[str]:
    sc = estimates.scenarios[f.estimate]
    objective = cfg.rto_full_rebuild_s if f.full else cfg.rto_single_failure_s
    detect, commands, confirm = _steps(cfg, f, flag)
    lines = [f"## {f.title} (`kbguard drill {f.drill}`)", "", f"**Detected by:** {detect}", "",
             "**Recover:**", "", "```sh", *commands, "```", ""]
    if drill is None:
        lines.append(f"**Measured:** not yet drilled. Rehearse it with `kbguard drill {f.drill} "
                     f"{flag}`.")
    else:
        lines.append(f"**Measured:** {_drill_line(drill, objective)}")
    lines += ["", f"**Estimated now:** {_estimate_line(f, sc)}", "",
              f"**Confirm recovery:** {confirm}", ""]
    return lines


def _steps(cfg: Config, f: _Failure, flag: str) -> tuple[str, list[str], str]:
    verify_ok = (f"`kbguard verify {flag}` exits 0 (every point checked, every canary passes) "
                 "and the metric `kbguard_verify_healthy` is 1 again; or it exits 1 with "
                 "findings under `corpus_changed` alone: corpus changes not yet indexed are not "
                 "damage, and the next `kbguard rebuild` indexes them.")
    kb = f"kbguard {{}} {flag}"
    if f.drill == "store-corruption":
        classes = ", ".join(f"`{c}`" for c in STORE_CLASSES)
        return (f"`kbguard verify` exits 1 with findings of class {classes}; with `--prom-file`, "
                "`kbguard_verify_healthy 0` and `kbguard_verify_findings{class=...} > 0`.",
                [kb.format("verify --repair")], verify_ok)
    if f.drill == "store-lost":
        return ("`kbguard verify` exits 1 with every point under `missing_points`, or with "
                "`store_unreadable` when its files are damaged beyond reading "
                "(`kbguard_verify_findings{class=\"store_unreadable\"} 1`); searches fail.",
                [kb.format("rebuild") + "          # a missing store: written from the cache",
                 kb.format("rebuild --full") + "   # an unreadable one: deleted and rewritten"],
                verify_ok)
    if f.drill == "manifest-lost":
        return ("`kbguard verify`, `kbguard status` and `kbguard rebuild` exit 2 and say that "
                "the manifest was lost while the store is there, naming the snapshot to restore "
                "(with `--prom-file`, `kbguard_verify_up 0`).",
                [kb.format("restore --latest --yes") + "   # the newest intact snapshot, then "
                 "a catch-up rebuild"], verify_ok)
    if f.drill == "killed-rebuild":
        return ("the rebuild's exit code (137 after SIGKILL, 130 after Ctrl-C); `kbguard status` "
                f"shows the last run as `{INTERRUPTED}` after a kill (`failed`, with its error, "
                "after Ctrl-C) and, if it was writing the store, points pending.",
                [kb.format("rebuild") + "   # resumes: committed batches are not redone"],
                verify_ok + " `kbguard status` shows no point pending.")
    if f.drill == "provider-outage":
        return ("`kbguard rebuild` exits 4 (a space is incomplete) and `kbguard status` shows "
                "the primary space's coverage under 100 %; `kbguard search` answers with "
                "`degraded: true` from the standby space.",
                ["# nothing to do while it is down: search answers from the standby space",
                 kb.format("status") + "    # the debt: texts the primary space lacks",
                 kb.format("rebuild") + "   # once the provider is back: pays the debt"],
                "`kbguard status` shows every space at 100 % coverage; " + verify_ok)
    return _everything_lost(cfg, flag, verify_ok)


def _everything_lost(cfg: Config, flag: str, verify_ok: str) -> tuple[str, list[str], str]:
    detect = "the machine, its disk or the KB folder is gone; every command exits 2."
    root = find_dvc_root(cfg.corpus)
    if root is None:
        return (detect, ["# not possible yet: the corpus is not DVC-tracked, so a lost machine "
                         "loses it.",
                         "# set up: `dvc init`, `dvc add` the corpus, a DVC remote, and "
                         "`kbguard snapshot create --dvc-push` on a schedule"], verify_ok)
    origin = _git(root, "remote", "get-url", "origin")
    folder = (Path(origin.rstrip("/")).name.removesuffix(".git") if origin else "") or root.name
    try:
        config = cfg.path.relative_to(root)
    except ValueError:
        return (detect, ["# not possible yet: the config is outside the git repository "
                         f"{root}; commit it there so a clone has it"], verify_ok)
    corpus = cfg.corpus.relative_to(root) if cfg.corpus.is_relative_to(root) else cfg.corpus
    url = shlex.quote(origin) if origin else "<this repository's git remote>"
    return (detect, [f"git clone {url} {shlex.quote(folder)} && "
                     f"cd {shlex.quote(folder)}",
                     f"dvc pull {shlex.quote(str(corpus))}   # the corpus at the cloned "
                     "revision",
                     "# restore pulls the newest snapshot from the DVC remote itself",
                     f"kbguard restore --latest --yes --config {shlex.quote(str(config))}"],
            verify_ok)


# -- figures ----------------------------------------------------------------------------------

def _latest_drills(cfg: Config) -> dict[str, dict[str, Any]]:
    if not cfg.manifest.exists():
        return {}
    with Manifest.open(cfg.manifest, read_only=True) as m:
        return {d["scenario"]: d for d in m.drills.history()}   # oldest first: newest wins


def _drill_line(d: dict[str, Any], objective: float) -> str:
    when = _when(d)
    if d["status"] == "not-possible":
        return f"not possible on {when}: {d.get('message') or 'see the drill'}"
    parts = [f"recovery {human_duration(d['recovery_s'])}" if d.get("recovery_s") is not None else
             "recovery not reached"]
    if d.get("detection_s") is not None:
        parts.append(f"detection {human_duration(d['detection_s'])}")
    parts.append(f"objective {human_duration(d.get('objective_s') or objective)}")
    cost = (f"{d.get('texts', 0):,} texts, {d.get('tokens', 0):,} tokens, "
            f"${d.get('cost_usd', 0.0):.4f}")
    verdict = {"passed": "passed", "missed": "MISSED its objective",
               "failed": "FAILED"}.get(d["status"], d["status"])
    msg = f" ({d['message']})" if d.get("message") and d["status"] != "passed" else ""
    return f"drill of {when}: {verdict}{msg}; {', '.join(parts)}; embedding {cost}."


def _estimate_line(f: _Failure, sc: Scenario) -> str:
    if f.drill == "store-corruption":
        return ("`verify --repair` rewrites the damaged points from the embedding cache: no "
                "embedding, $0, unless cache rows are damaged too (those texts are embedded "
                f"again). Rewriting the whole store would take {_secs(sc.seconds)}.")
    head = (f"{sc.texts:,} texts, {sc.tokens:,} tokens, ${sc.cost_usd:.4f}, "
            f"{_secs(sc.seconds)}")
    return f"{head} (`rebuild --estimate` scenario `{f.estimate}`; {sc.basis})."


def _cost_cell(f: _Failure, sc: Scenario) -> str:
    if f.drill == "store-corruption":
        return "$0 (from the cache)"
    return f"${sc.cost_usd:.4f}, {_secs(sc.seconds)}"


def _recovery(d: dict[str, Any] | None) -> str:
    if d is None:
        return "not yet drilled"
    if d["status"] == "not-possible":
        return "not possible"
    r = d.get("recovery_s")
    mark = {"missed": " (missed)", "failed": " (failed)"}.get(d["status"], "")
    return (human_duration(r) if r is not None else "not reached") + mark


def _when(d: dict[str, Any] | None) -> str:
    if d is None:
        return "not yet drilled"
    at = d["started_at"]
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if isinstance(
        at, datetime) else str(at)


def _secs(seconds: float | None) -> str:
    return "time unknown" if seconds is None else f"about {human_duration(seconds)}"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
