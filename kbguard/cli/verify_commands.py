"""`kbguard verify | chaos`: find every kind of damage, heal it, and cause it on purpose."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kbguard.cli.common import (
    DEFAULT_CONFIG_PATH,
    ConfigOpt,
    JsonOpt,
    QuietOpt,
    RichProgress,
    emit_json,
    exit_code_for,
    guarded,
    load,
    one_line,
    stdout,
)
from kbguard.errors import ConfigError, KbguardError
from kbguard.integrity.chaos import ACTIONS, inject
from kbguard.integrity.prom import check_target, write_metrics
from kbguard.integrity.repair import repair_kb
from kbguard.integrity.verify import FINDINGS, VerifyReport, verify_kb


def register(app: typer.Typer) -> None:
    app.command("verify")(verify_cmd)
    app.command("chaos")(chaos_cmd)


@guarded
def verify_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    sample: Annotated[int, typer.Option(
        "--sample", help="Also re-embed N random points and compare with the stored vectors.")
    ] = 0,
    deep: Annotated[bool, typer.Option(
        "--deep", help="Re-embed every point and compare (catches a wrong model).")] = False,
    repair: Annotated[bool, typer.Option(
        "--repair", help="Heal what is found from the embedding cache, then check again.")
    ] = False,
    prom_file: Annotated[Path | None, typer.Option(
        "--prom-file", help="Write Prometheus textfile-collector metrics here (atomically).")
    ] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare store, manifest and corpus; name every difference.

    Exit 0 healthy, 1 findings, 2 could not check, 3 busy (another kbguard command holds the KB).
    """

    cfg = load(config)
    progress = RichProgress(enabled=not quiet and not json_out)
    if repair:
        if prom_file is not None:
            raise ConfigError("--prom-file goes with the nightly check, not with --repair; "
                              "run `kbguard verify --prom-file ...` after the repair.")
        result = repair_kb(cfg, sample=sample, deep=deep, progress=progress)
        if json_out:
            emit_json(result.to_dict())
        else:
            _print_counts("Before repair", result.before)
            a = result.actions
            stdout.print(
                f"Repaired in {result.seconds:.1f} s: {a['points_rewritten']} points rewritten, "
                f"{a['orphans_deleted']} orphans deleted, {a['cache_rows_replaced']} cache rows "
                f"replaced, {a['cache_rows_dropped']} unused damaged cache rows dropped, "
                f"{a['texts_embedded']} texts embedded"
                + ("; collection recreated" if a["collection_recreated"] else ""))
            _print_report(result.after, title="After repair")
        raise typer.Exit(exit_code_for(result))
    if prom_file is not None:
        check_target(prom_file)  # a place the metrics cannot go is refused before the check
    started = time.time()
    try:
        report = verify_kb(cfg, sample=sample, deep=deep, progress=progress)
    except KbguardError as exc:
        if prom_file is not None:  # the metrics say so also when the check cannot run
            write_metrics(prom_file, cfg.kb, None, started=started, error=str(exc))
        raise
    if prom_file is not None:
        write_metrics(prom_file, cfg.kb, report, started=started)
    if json_out:
        emit_json(report.to_dict())
    else:
        _print_report(report)
    raise typer.Exit(exit_code_for(report))


def _print_counts(title: str, report: VerifyReport) -> None:
    found = {n: c for n, c in report.counts().items() if c}
    stdout.print(f"{title}: " + (", ".join(f"{n} {c}" for n, c in found.items())
                                  if found else "healthy"))


def _print_report(report: VerifyReport, title: str = "") -> None:
    head = f"{title}: " if title else ""
    if report.healthy:
        stdout.print(f"{head}KB '{report.kb}' is healthy: {report.points_checked} points checked "
                     f"in {report.seconds:.1f} s" + (f", {report.sampled} re-embedded"
                                                       if report.sampled else ""))
    else:
        stdout.print(f"{head}KB '{report.kb}': {report.total} findings "
                     f"({report.points_checked} points checked in {report.seconds:.1f} s)")
    for f in report.findings.values():
        if not f.count:
            continue
        stdout.print(f"  {f.name:<18} {f.count}")
        for ex in f.examples:
            stdout.print("      " + ", ".join(f"{k}={one_line(v)}" for k, v in ex.items()))
        stdout.print(f"      fix: {_fix(f.name)}")
    skipped = [f.name for f in report.findings.values() if not f.checked]
    if skipped and not report.healthy:
        stdout.print(f"  not checked: {', '.join(skipped)}")
    for err in report.errors:
        stdout.print(f"  could not check: {err}")
    for note in report.notes:
        stdout.print(f"  note: {note}")


def _fix(name: str) -> str:
    return FINDINGS[name]


@guarded
def chaos_cmd(
    action: Annotated[str, typer.Argument(
        help="The damage to do: delete-points, add-orphans, stale-points, flip-bits, "
             "flip-file-bits, wrong-model, poison-cache, nan-vectors, zero-vectors, "
             "damage-payloads, drift-config, drop-collection, truncate-store, damage-cache, "
             "drop-cache-rows, damage-manifest.")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    count: Annotated[int, typer.Option("--count", "-n", help="How many points/rows to damage.")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same damage.")] = 0,
    yes: Annotated[bool, typer.Option(
        "--yes", help="Really damage this KB (use a scratch copy).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Damage a KB on purpose, for drills and tests. Use it on a scratch copy only."""

    cfg = load(config)
    if action not in ACTIONS:
        raise ConfigError(f"Unknown chaos action {action!r}; use one of {', '.join(ACTIONS)}.")
    if not yes:
        raise ConfigError(
            f"`kbguard chaos {action}` damages the KB of {cfg.path} on purpose. Run it on a "
            "scratch copy, and pass --yes to confirm.")
    result = inject(cfg, action, count=count, seed=seed)
    if json_out:
        emit_json(result.to_dict())
        return
    stdout.print(f"chaos {result.action}: {result.count} damaged in KB '{cfg.kb}'. "
                 "Now run `kbguard verify`.")
    for pid in result.point_ids[:10]:
        stdout.print(f"  {pid}")
