"""File names with control characters: escaped in human output, exact in JSON."""

from __future__ import annotations

import json
from pathlib import Path

from kbguard.cli.common import one_line
from tests.kbtest import KB, make_kb

NEWLINE_NAME = "bad\nname.md"
ESCAPE_NAME = "bin\x1b[2Jary.txt"   # an ANSI "clear screen" in a name, on a binary file


def _kb(tmp_path: Path) -> KB:
    kb = make_kb(tmp_path, docs=0)
    kb.write(NEWLINE_NAME, "# Zebra facts\n\nZebras have stripes and live in the savanna.\n")
    kb.write(ESCAPE_NAME, b"not text \x00 at all")
    return kb


def test_one_line_escapes_control_characters_only() -> None:
    assert one_line("bad\nname\t\r\x1b[0m\x7f\u202e\u2028.md") == \
        "bad\\nname\\t\\r\\x1b[0m\\x7f\\u202e\\u2028.md"
    assert one_line("Ünïcödé naïve — “quoted” €.md") == "Ünïcödé naïve — “quoted” €.md"
    assert one_line("\udcff.txt") == "\\udcff.txt"  # an undecodable byte of a file name


def test_control_characters_in_file_names_never_split_human_output(tmp_path: Path) -> None:
    kb = _kb(tmp_path)
    res = kb.cli("rebuild")
    assert res.code == 0, (res.stdout, res.stderr)
    failed = [line for line in res.stdout.splitlines() if line.startswith("  failed")]
    assert failed == [
        ("  failed     bin\\x1b[2Jary.txt: bin\\x1b[2Jary.txt: binary content in a .txt file "
        "(NUL byte at offset 9); is it really text? Give it its real suffix or remove it from "
        "the corpus.")]

    res = kb.cli("search", "zebra stripes", "-k", "1")
    assert res.code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("  bad\\nname.md  [Zebra facts]")
    assert lines[1] == "   Zebras have stripes and live in the savanna."

    res = kb.cli("status", "--no-corpus-check")
    assert res.code == 0
    assert "  failed     bin\\x1b[2Jary.txt: bin\\x1b[2Jary.txt: binary content" in res.stdout

    (kb.corpus / NEWLINE_NAME).write_text("# Zebra facts\n\nZebras changed.\n")
    res = kb.cli("verify")
    assert res.code == 1
    assert "      path=bad\\nname.md, change=changed" in res.stdout.splitlines()

    for out in (kb.cli("rebuild").stdout, kb.cli("status").stdout, kb.cli("verify").stdout,
                kb.cli("search", "zebra").stdout):
        assert "\x1b" not in out and "name.md" not in out.replace("bad\\nname.md", "")


def test_json_output_keeps_the_exact_names(tmp_path: Path) -> None:
    kb = _kb(tmp_path)
    report = kb.cli_json("rebuild")
    assert [f["path"] for f in report["failures"]] == [ESCAPE_NAME]
    hits = kb.cli_json("search", "zebra stripes")["results"]
    assert hits[0]["path"] == NEWLINE_NAME
    st = kb.cli_json("status")
    assert [f["path"] for f in st["failed_documents"]] == [ESCAPE_NAME]
    res = kb.cli("search", "zebra stripes", "--json")
    assert "\x1b" not in res.stdout and json.loads(res.stdout)["results"][0]["path"] == NEWLINE_NAME
