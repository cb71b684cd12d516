"""Bad input never stops a run or loses work; bad configs give one clear message."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbguard.cli.main import app
from kbguard.core.lock import kb_lock
from kbguard.core.progress import Progress
from kbguard.ingest.rebuild import rebuild
from tests.kbtest import KB, make_kb, manifest_chunk_ids, manifest_sql, store_contents


class _DeleteAtParse(Progress):
    """Deletes a file once the scan has listed it and parsing begins: a file gone mid-run."""

    def __init__(self, victim: Path):
        self.victim = victim

    def stage(self, name: str, total: int | None = None) -> None:
        if name == "parse" and self.victim.exists():
            self.victim.unlink()


def test_bad_files_are_recorded_as_failed_and_the_rest_is_indexed(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb", docs=3)
    outside = tmp_path / "outside.md"
    outside.write_text("# Secret\n\nThis lives outside the corpus.\n")
    kb.write("broken.pdf", b"%PDF-1.4\n1 0 obj garbage that is not a pdf\n")
    kb.write("binary.txt", b"\x00\x01\x02\x03binary\x00\xff\xfe" * 100)
    kb.write("empty.md", b"")
    kb.write("noise.md", bytes(range(128, 256)) * 8)  # no NUL, and no text encoding reads it
    os.symlink(outside, kb.corpus / "link.md")
    vanishing = kb.write("vanishing.md", "# Soon gone\n\nThis file is deleted mid-run.\n")
    with open(kb.corpus / "huge.txt", "wb") as fh:
        fh.write(b"word " * (50 * 2**20 // 5))

    report = rebuild(kb.cfg, progress=_DeleteAtParse(vanishing)).to_dict()

    failed = {f["path"]: f["error"] for f in report["failures"]}
    assert set(failed) == {"broken.pdf", "binary.txt", "empty.md", "noise.md", "link.md",
                           "vanishing.md", "huge.txt"}
    # Each reason from its start: the parser's begin with the file name, which must not be what
    # matches (it contains "empty", "binary", "pdf").
    reasons = {
        "link.md": f"symlink points outside the corpus (to {outside})",
        "vanishing.md": "file vanished during the run",
        "huge.txt": "file is 50.0 MB, over corpus.max_file_mb (20 MB)",
        "noise.md": "noise.md: not text: the bytes read as neither UTF-8 nor a legacy encoding",
        "empty.md": "empty.md: empty file (0 bytes), nothing to index",
        "binary.txt": "binary.txt: binary content in a .txt file (NUL byte at offset 0)",
        "broken.pdf": "broken.pdf: damaged or unreadable PDF (",
    }
    assert {path: failed[path][:len(start)] for path, start in reasons.items()} == reasons
    assert report["documents"]["failed"] == 7
    assert report["documents"]["added"] == 3

    rows = dict(manifest_sql(kb.cfg.manifest,
                             "SELECT path, error FROM documents WHERE status = 'failed'"))
    indexed = {r[0] for r in manifest_sql(kb.cfg.manifest, "SELECT DISTINCT path FROM chunks")}
    assert rows == failed
    assert indexed == {"doc0.md", "doc1.md", "doc2.md"}
    points = store_contents(kb.cfg)
    assert set(points) == manifest_chunk_ids(kb.cfg)
    assert not any("Secret" in p[1]["text"] for p in points.values())

    # The same bad bytes are not parsed again; the file that vanished is retried once back.
    vanishing.write_text("# Soon gone\n\nThis file is deleted mid-run.\n")
    parsed = _CountParse()
    again = rebuild(kb.cfg, progress=parsed).to_dict()
    assert parsed.total == 1
    assert again["documents"]["added"] == 1 and again["documents"]["failed"] == 6
    assert {f["path"] for f in again["failures"]} == set(failed) - {"vanishing.md"}


class _CountParse(Progress):
    def __init__(self) -> None:
        self.total: int | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if name == "parse":
            self.total = total


def test_a_document_that_turns_bad_keeps_its_last_good_chunks(built_kb) -> None:
    kb = built_kb()
    before = store_contents(kb.cfg)
    kb.write("doc1.md", b"\x00\x00 now binary \x00")
    report = kb.cli_json("rebuild")
    assert [f["path"] for f in report["failures"]] == ["doc1.md"]
    assert report["chunks"]["deleted"] == 0
    assert store_contents(kb.cfg) == before
    status = kb.cli_json("status")
    assert status["failed_documents"][0]["path"] == "doc1.md"


def test_missing_corpus_is_one_clear_error(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    kb.corpus.rename(tmp_path / "elsewhere")
    res = kb.cli("rebuild")
    assert res.code == 2
    assert "corpus folder" in res.stderr and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout


def test_broken_config_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "kbguard.toml"
    bad.write_text("[kb]\nname = \n")
    res = CliRunner().invoke(app, ["rebuild", "--config", str(bad)])
    assert res.exit_code == 2
    assert "is not valid TOML" in res.stderr
    bad.write_text('[kb]\nname = "x"\n[corpus]\npath = "c"\n')
    res = CliRunner().invoke(app, ["rebuild", "--config", str(bad)])
    assert res.exit_code == 2
    assert "[[spaces]]" in res.stderr
    res = CliRunner().invoke(app, ["status", "--config", str(tmp_path / "nope.toml")])
    assert res.exit_code == 2
    assert "kbguard init" in res.stderr


def test_json_errors_are_json_on_stdout(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["rebuild", "--json", "--config", str(tmp_path / "no.toml")])
    assert res.exit_code == 2
    import json

    body = json.loads(res.stdout)
    assert body["error_type"] == "ConfigError" and body["exit_code"] == 2


@pytest.mark.slow
def test_a_second_rebuild_stops_at_once_and_the_first_is_unharmed(kb: KB) -> None:
    # The first rebuild runs in a thread and is held inside its parse stage until the second
    # (a separate process, so the lock is really contended) has been refused.
    entered, release = threading.Event(), threading.Event()

    class Hold(Progress):
        def stage(self, name: str, total: int | None = None) -> None:
            if name == "parse":
                entered.set()
                release.wait(60)

    result: dict = {}
    t = threading.Thread(target=lambda: result.update(rebuild(kb.cfg, progress=Hold()).to_dict()))
    t.start()
    assert entered.wait(60)
    second = kb.subprocess("rebuild", timeout=60)
    release.set()
    t.join(60)
    assert second.returncode == 3
    assert "This KB is busy" in second.stderr and "kbguard rebuild" in second.stderr
    assert result["documents"]["added"] == 3
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)


def test_lock_is_released_after_a_run(kb: KB) -> None:
    kb.cli_json("rebuild")
    with kb_lock(kb.cfg.manifest, "test"):
        pass
