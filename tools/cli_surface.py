"""The CLI's public surface: every command's `--help` and the key paths of every `--json` output.

``tests/test_cli_surface.py`` compares it with ``tests/golden/cli_surface.json``, so a change of
an option, a help text or a JSON key is a decision recorded in a commit, never a side effect of
moving code. After an intended change, write the golden file again:

    .venv/bin/python tools/cli_surface.py --write

The JSON outputs come from a small KB built here with the fake embedder, commands run in-process
through typer's runner; values are not recorded (times and ids change), only which keys exist.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "cli_surface.json"

# help texts are laid out for the terminal: fix its width and drop colour so they compare
os.environ.update({"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb", "DO_NOT_TRACK": "1",
                   "SCARF_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1"})

import typer
from typer.testing import CliRunner

from kbguard.cli.main import app

CONFIG = """\
[kb]
name = "surface"
[corpus]
path = "corpus"
[[spaces]]
name = "local"
provider = "fake"
model = "fake-hash"
dim = 16
[store]
path = "state/store"
[manifest]
path = "state/manifest.duckdb"
[snapshots]
root = "state/snapshots"
[rebuild]
parse_workers = 1
"""


def command_paths(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path under ``group`` (``("snapshot", "create")``), sorted. Typer vendors
    its own click, so groups are known by what they can do."""
    ctx = typer.Context(group)
    for name in sorted(group.list_commands(ctx)):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        yield (*prefix, name)
        if hasattr(command, "list_commands"):
            yield from command_paths(command, (*prefix, name))


def help_texts() -> dict[str, str]:
    root = typer.main.get_command(app)
    runner = CliRunner()
    out = {"": runner.invoke(app, ["--help"]).stdout}
    for path in command_paths(root):
        out[" ".join(path)] = runner.invoke(app, [*path, "--help"]).stdout
    return out


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON value; list items merge under ``[]``, and a mapping keyed by
    data (space names, scenarios, document paths) still shows its keys: they are part of what a
    script reads."""
    out: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            out |= key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, f"{prefix}[]")
    return out


def json_outputs() -> dict[str, list[str]]:
    """Key paths of each command's `--json` output on a small KB, errors included."""
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "corpus"
        corpus.mkdir()
        for i in range(3):
            (corpus / f"doc{i}.md").write_text(textwrap.dedent(f"""\
                # Document {i}

                ## Part one
                Paragraph about topic {i}, with enough words to be a chunk of its own.

                ## Part two
                Another paragraph about item {i} and the way it is kept.
                """))
        config = root / "kb.toml"
        config.write_text(CONFIG)
        report = root / "report.html"
        out: dict[str, list[str]] = {}

        def run(name: str, *args: str, expect: int | None = 0) -> dict[str, Any]:
            result = runner.invoke(app, [*args, "--json", "--config", str(config)])
            if expect is not None and result.exit_code != expect:
                raise SystemExit(f"{name}: exit {result.exit_code}, expected {expect}\n"
                                 f"{result.stdout}\n{result.stderr}\n{result.exception!r}")
            data = json.loads(result.stdout)
            out[name] = sorted(key_paths(data))
            return data

        run("rebuild (first build)", "rebuild")
        run("rebuild --estimate", "rebuild", "--estimate")
        run("status", "status")
        run("search", "search", "topic")
        run("verify", "verify")
        run("verify --repair", "verify", "--repair")
        snap = run("snapshot create", "snapshot", "create")
        run("snapshot list", "snapshot", "list")
        run("snapshot verify", "snapshot", "verify", str(snap["id"]))
        run("snapshot prune --dry-run", "snapshot", "prune", "--keep-last", "1", "--dry-run")
        run("restore", "restore", str(snap["id"]), "--yes")
        run("report", "report", "-o", str(report))
        run("drill store-lost", "drill", "store-lost")
        (corpus / "doc0.md").write_text("# Document 0\n\nChanged text of the first document.\n")
        run("rebuild (incremental)", "rebuild")
        run("error (restore without --yes)", "restore", "--latest", expect=None)
        return out


def surface() -> dict[str, Any]:
    return {"help": help_texts(), "json": json_outputs()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN}")
    args = parser.parse_args()
    found = surface()
    text = json.dumps(found, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
