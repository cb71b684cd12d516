"""The `kbguard` command: a thin typer layer; each group lives in its own module."""

from __future__ import annotations

import typer

from kbguard.cli import (
    drill_commands,
    kb_commands,
    report_commands,
    runbook_commands,
    snapshot_commands,
    verify_commands,
)
from kbguard.cli.common import JsonErrorsGroup

app = typer.Typer(
    name="kbguard",
    help="Keep a RAG knowledge base recoverable: manifest, incremental rebuilds, verified stores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=JsonErrorsGroup,
)
kb_commands.register(app)
snapshot_commands.register(app)
verify_commands.register(app)
runbook_commands.register(app)
report_commands.register(app)
drill_commands.register(app)


def run() -> None:
    app()
