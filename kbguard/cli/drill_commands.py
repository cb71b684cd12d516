"""`kbguard drill`: rehearse failures on a scratch copy of the KB and time the way back."""

from __future__ import annotations

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
from kbguard.operations.drill import SCENARIOS, drill_kb

# a drill is not resumed: what a Ctrl-C leaves and what the next run does
STARTS_OVER = ("Interrupted. A drill does not resume: the next `kbguard drill` starts its drills "
               "over. The drills that finished are in the drill history; the copies in the "
               "temporary folder were removed (a --scratch folder is kept: pass a new or empty "
               "one next time).")


def register(app: typer.Typer) -> None:
    app.command("drill")(drill_cmd)


@guarded(interrupted=STARTS_OVER)
def drill_cmd(
    scenarios: Annotated[list[str] | None, typer.Argument(
        metavar="[SCENARIO]...",
        help=f"Drills to run (default: all): {', '.join(SCENARIOS)}.")] = None,
    scratch: Annotated[Path | None, typer.Option(
        "--scratch", help="A new or empty folder for the scratch copies, outside the KB's "
                          "corpus, store, snapshots and manifest folder; kept afterwards "
                          "(default: a temporary folder, removed).")] = None,
    max_cost: Annotated[float | None, typer.Option(
        "--max-cost", metavar="USD", min=0.0,
        help="The most the run may spend on embedding: refused before it starts when its "
             "estimate is above, stopped before a drill that would pass it.")] = None,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Rehearse failures on a scratch copy of the KB, never the live one, and time recovery.

    Exit 0 every drill passed, 1 a drill failed, missed its objective, or (named on the command
    line) was not possible; 2 could not run (a full scratch disk, an estimate above --max-cost,
    or stopped before a drill that would pass it); 3 busy.
    """
    cfg = load(config)
    progress = RichProgress(enabled=not quiet and not json_out)
    report = drill_kb(cfg, scenarios or (), scratch=scratch, max_cost=max_cost,
                      progress=progress)
    if json_out:
        emit_json(report.to_dict())
    else:
        for d in report.drills:
            stdout.print(f"{d.scenario:<17} {d.status:<13} {one_line(d.message)}")
            for step in d.steps:
                code = "" if step.exit_code is None else f" exit {step.exit_code}"
                stdout.print(f"    {step.phase:<8} {step.seconds:7.2f} s{code:<8} "
                             f"{one_line(step.command)}"
                             + (f"  ({one_line(step.note)})" if step.note else ""))
        for note in report.notes:
            stdout.print(f"note: {one_line(note)}")
        if report.scratch:
            stdout.print(f"scratch copies kept in {one_line(report.scratch)}")
        if report.spend is not None:
            stdout.print(f"embedding: ${report.spent_usd:.6f} spent, "
                         f"${report.spend.total.cost_usd:.6f} estimated before the drills")
        if report.stopped:
            stdout.print(one_line(report.stopped))
        impossible = sum(d.status == "not-possible" for d in report.drills)
        verdict = "drills passed" if report.passed else "drills did not pass"
        stdout.print(verdict + (f"; {impossible} not possible on this KB (see above for what "
                                "to set up)" if impossible else ""))
    raise typer.Exit(exit_code_for(report))
