"""The CLI's surface (every `--help`, the keys of every `--json` output) is what the golden file
records: moving code never changes it by accident. After an intended change:
`.venv/bin/python tools/cli_surface.py --write`, and the diff shows what users will see."""

from __future__ import annotations

import json

from tools.cli_surface import GOLDEN, surface


def test_the_cli_surface_matches_the_golden_file() -> None:
    golden = json.loads(GOLDEN.read_text())
    found = json.loads(json.dumps(surface()))
    for command, text in golden["help"].items():
        assert found["help"].get(command) == text, f"`kbguard {command} --help` changed"
    assert sorted(found["help"]) == sorted(golden["help"]), "commands were added or removed"
    for command, keys in golden["json"].items():
        assert found["json"].get(command) == keys, f"the --json keys of `{command}` changed"
    assert sorted(found["json"]) == sorted(golden["json"])


def test_key_paths_name_nested_and_listed_keys() -> None:
    from tools.cli_surface import key_paths

    assert key_paths({"a": {"b": 1}, "c": [{"d": 2}, {"e": 3}]}) == {
        "a", "a.b", "c", "c[].d", "c[].e"}
