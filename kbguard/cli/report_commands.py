"""`kbguard report`: the KB's history as one HTML page that works offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kbguard.cli.common import (
    DEFAULT_CONFIG_PATH,
    ConfigOpt,
    JsonOpt,
    emit_json,
    guarded,
    load,
    one_line,
    stdout,
)
from kbguard.operations.report import write_report


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)


@guarded
def report_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="The HTML file to write (replaced atomically). "
                               "Default: <kb>-report.html in the current folder.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Write the KB's history as one HTML page: drill recovery times against their objectives,
    verify findings, embedding spend per month and the KB's size. It works offline."""

    cfg = load(config)
    result = write_report(cfg, output)
    if json_out:
        emit_json(result.to_dict())
        return
    stdout.print(f"Report of KB '{cfg.kb}' written to {one_line(result.path)} "
                 f"({result.bytes / 1e6:.1f} MB).")
    for name, note in result.empty.items():
        stdout.print(f"  {name}: {note}")
