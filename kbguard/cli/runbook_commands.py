"""`kbguard runbook`: the recovery runbook of this KB, from its drills and estimates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kbguard.cli.common import DEFAULT_CONFIG_PATH, ConfigOpt, guarded, load, stdout
from kbguard.core.durable import atomic_write_text
from kbguard.errors import KbguardError
from kbguard.operations.runbook import render_runbook


def register(app: typer.Typer) -> None:
    app.command("runbook")(runbook_cmd)


@guarded
def runbook_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Write the runbook here (Markdown) instead of printing it.")
    ] = None,
) -> None:
    """Write this KB's recovery runbook: per failure, how it is detected, the exact commands,
    the newest drill's measured recovery time, the estimated cost now, and how to confirm."""
    cfg = load(config)
    if output is not None and not output.parent.is_dir():
        raise KbguardError(f"{output.parent} is not a folder; create it or choose another "
                           "--output.")
    text = render_runbook(cfg, config_path=config)
    if output is None:
        stdout.out(text, end="", highlight=False)
        return
    atomic_write_text(output, text)
    stdout.print(f"Wrote the runbook of KB '{cfg.kb}' to {output}")
