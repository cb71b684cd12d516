"""Corpus entries that are not regular files, and symlinked folders that lead out of it."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import long_markdown, make_kb, store_contents


# -- 4. corpus entries that are not regular files -------------------------------------------

@pytest.mark.timeout(120)
def test_fifo_socket_and_folder_symlink_out_are_recorded_not_read(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb")
    os.mkfifo(kb.corpus / "pipe.md")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(kb.corpus / "sock.md"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nOutside the corpus.\n")
    os.symlink(outside, kb.corpus / "linked")
    (kb.corpus / "sub").mkdir()
    (kb.corpus / "sub" / "inner.md").write_text(long_markdown("Inner", sections=1))
    os.symlink(kb.corpus / "sub", kb.corpus / "alias")  # inside: indexed at its real path
    try:
        report = kb.cli_json("rebuild")
        status = kb.cli_json("status")
    finally:
        sock.close()
    failed = {f["path"]: f["error"] for f in report["failures"]}
    assert set(failed) == {"pipe.md", "sock.md", "linked"}
    assert failed["pipe.md"].startswith("a named pipe (FIFO) is not a regular file, and only "
                                        "regular files are documents")
    assert failed["sock.md"].startswith("a socket is not a regular file")
    assert failed["linked"].startswith(
        f"symlink to a folder outside the corpus (to {outside.resolve()})")
    assert report["documents"]["added"] == 4
    assert {f["path"] for f in status["failed_documents"]} == set(failed)
    assert not any("Secret" in p[1]["text"] for p in store_contents(kb.cfg).values())


def test_folder_symlink_out_that_no_glob_could_select_is_not_reported(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb")
    text = kb.config_path.read_text().replace(
        "[chunking]", 'include = ["*.md"]\nexclude = ["vendor/**"]\n[chunking]')
    kb.config_path.write_text(text)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, kb.corpus / "linked")      # *.md selects only top-level files
    report = kb.cli_json("rebuild")
    assert report["failures"] == []
    text = text.replace('include = ["*.md"]', 'include = ["**/*.md"]')
    kb.config_path.write_text(text)
    os.symlink(outside, kb.corpus / "vendor")      # excluded as a folder
    assert [f["path"] for f in kb.cli_json("rebuild")["failures"]] == ["linked"]
