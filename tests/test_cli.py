"""The command line as an interface: help for every command, init, status and search output."""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer
from typer.testing import CliRunner

from kbguard.cli.main import app
from tests.kbtest import KB, make_kb


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in group.commands.items():
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    names = []
    for path, cmd in _commands(root):
        names.append(" ".join(path))
        assert cmd.help, f"`kbguard {' '.join(path)}` has no help text"
        res = CliRunner().invoke(app, [*path, "--help"])
        assert res.exit_code == 0, res.output
        assert "Usage" in res.output
    assert {"init", "rebuild", "status", "search"} <= set(names)


def test_init_writes_a_config_that_builds(tmp_path: Path) -> None:
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Alpha\n\nAlpha text about apples.\n")
    cfg = tmp_path / "conf" / "kb.toml"
    runner = CliRunner()
    res = runner.invoke(app, ["init", "--corpus", str(corpus), "--config", str(cfg),
                              "--provider", "fake"])
    assert res.exit_code == 0, res.output
    assert "kbguard rebuild --config" in res.stdout
    text = cfg.read_text()
    assert 'path = "../docs"' in text and 'name = "docs"' in text
    res = runner.invoke(app, ["init", "--corpus", str(corpus), "--config", str(cfg)])
    assert res.exit_code == 2 and "--force" in res.stderr
    res = runner.invoke(app, ["rebuild", "--json", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["documents"]["added"] == 1


def test_status_reports_counts_last_run_and_pending_changes(kb: KB) -> None:
    res = kb.cli("status")
    assert res.code == 2 and "kbguard rebuild" in res.stderr  # never built yet
    report = kb.cli_json("rebuild")
    st = kb.cli_json("status")
    assert st["counts"]["chunks"] == report["chunks"]["total"]
    assert st["counts"]["points_written"] == report["chunks"]["total"]
    assert st["store"]["points"] == report["chunks"]["total"]
    assert st["last_run"]["status"] == "ok" and st["last_run"]["kind"] == "rebuild"
    assert st["pending"]["up_to_date"] is True
    kb.write("new.md", "# New\n\nNew words.\n")
    (kb.corpus / "doc0.md").unlink()
    st = kb.cli_json("status")
    assert st["pending"] == {"added": 1, "changed": 0, "removed": 1, "refused": 0,
                             "up_to_date": False, "files": 3, "problem": None}
    human = kb.cli("status")
    assert human.code == 0 and "not indexed yet: 1 added" in human.stdout


def test_a_lost_store_is_named_with_the_cheap_way_back(built_kb) -> None:
    import shutil

    kb = built_kb()
    shutil.rmtree(kb.cfg.store_path)
    st = kb.cli("status")
    assert st.code == 0 and "missing; `kbguard rebuild` writes it again" in st.stdout
    found = kb.cli("search", "anything")
    assert found.code == 2 and "Run `kbguard rebuild`" in found.stderr
    again = kb.cli_json("rebuild")
    assert again["chunks"]["embedded"] == 0
    assert again["chunks"]["written"] == again["chunks"]["total"]


def test_search_finds_the_document_about_the_query(tmp_path: Path, backend: str) -> None:
    kb = make_kb(tmp_path, backend=backend)
    kb.write("zebra.md", "# Zebras\n\nZebras have black and white stripes on their bodies.\n")
    kb.cli_json("rebuild")
    out = kb.cli_json("search", "zebras stripes", "-k", "3")
    assert out["results"][0]["path"] == "zebra.md"
    assert len(out["results"]) == 3
    assert out["results"][0]["score"] >= out["results"][1]["score"]
    human = kb.cli("search", "zebras stripes", "-k", "1")
    assert human.code == 0 and "zebra.md" in human.stdout and "black and white" in human.stdout


def test_search_rejects_an_empty_query(built_kb) -> None:
    res = built_kb().cli("search", "   ")
    assert res.code == 2 and "The search text is empty; give the words" in res.stderr


def test_search_before_the_first_build_says_to_build(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=1)
    res = kb.cli("search", "anything")
    assert res.code == 2
    assert "has not been built yet" in res.stderr and "kbguard rebuild" in res.stderr


def _json_commands() -> list[tuple[tuple[str, ...], typer.core.TyperCommand]]:
    """Every command that has a --json option, by its path of names."""
    def walk(group, prefix: tuple[str, ...]):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, (*prefix, name))
            elif any("--json" in getattr(p, "opts", ()) for p in cmd.params):
                yield (*prefix, name), cmd
    return list(walk(typer.main.get_command(app), ()))


def _one_json_error(res, code: int) -> dict:
    """The run printed exactly one JSON object, an error with its exit code."""
    err = json.loads(res.stdout)   # anything but one JSON value does not parse
    assert isinstance(err, dict) and {"error", "exit_code"} <= err.keys(), res.stdout
    exit_code = res.exit_code if hasattr(res, "exit_code") else res.code
    assert err["exit_code"] == exit_code == code, (res.stdout, res.stderr)
    return err


def test_every_json_run_prints_one_json_object_when_it_fails(built_kb, tmp_path: Path) -> None:
    commands = _json_commands()
    assert {("status",), ("search",), ("restore",), ("snapshot", "prune"),
            ("snapshot", "verify"), ("drill",)} <= {path for path, _ in commands}
    runner = CliRunner()
    nowhere = str(tmp_path / "nowhere.toml")
    for path, cmd in commands:
        needed = ["x" for p in cmd.params if p.param_type_name == "argument" and p.required]
        res = runner.invoke(app, [*path, *needed, "--json", "--config", nowhere])
        assert "No config at" in _one_json_error(res, 2)["error"], path
        res = runner.invoke(app, [*path, *needed, "--json", "--no-such-option"])
        assert "--no-such-option" in _one_json_error(res, 2)["error"], path

    # refusals: what replaces or deletes data, run without --yes where nobody can be asked
    kb = built_kb(tmp_path / "kb")
    first, second = (kb.cli_json("snapshot", "create")["id"] for _ in range(2))
    for args in (["restore", "--latest"], ["restore", first],
                 ["restore", "--from-qdrant-snapshot", str(tmp_path / "shard.snapshot")],
                 ["snapshot", "prune", "--keep-last", "1"]):
        res = kb.cli(*args, "--json")
        assert "Pass --yes to confirm" in _one_json_error(res, 2)["error"], args
        assert "Pass --yes to confirm" in res.stderr
    assert [s["id"] for s in kb.cli_json("snapshot", "list")["snapshots"]] == [first, second]
