"""Scanning: globs, the stat cache, and hashes taken from a real git + DVC repo."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbguard.ingest.dvc_corpus import dvc_view
from kbguard.ingest.scan import file_md5, matches, scan_corpus
from kbguard.manifest import DocumentRow
from tests.kbtest import DVC, git_dvc_repo


def test_globs() -> None:
    assert matches("a.md", ["**/*.md"])
    assert matches("x/y/a.md", ["**/*.md"])
    assert not matches("a.mdx", ["**/*.md"])
    assert matches("drafts/a.md", ["drafts/**"])
    assert not matches("x/drafts/a.md", ["drafts/**"])
    assert not matches("a/b.md", ["*.md"])


def test_stat_cache_avoids_rehashing(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("one")
    (tmp_path / "b.md").write_text("two")
    first = scan_corpus(tmp_path, ["**/*.md"], [], {})
    assert first.hashed == 2
    known = {p: DocumentRow(p, f.file_hash, f.size, f.mtime_ns, f.file_hash, "ok", None, 1)
             for p, f in first.files.items()}
    second = scan_corpus(tmp_path, ["**/*.md"], [], known)
    assert second.hashed == 0
    (tmp_path / "b.md").write_text("two, changed")
    third = scan_corpus(tmp_path, ["**/*.md"], [], known)
    assert third.hashed == 1
    assert third.files["b.md"].file_hash == file_md5(tmp_path / "b.md")


@pytest.mark.slow
def test_dvc_hashes_match_computed_and_dirty_files_are_excluded(tmp_path: Path) -> None:
    run = git_dvc_repo(tmp_path)
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "a.md").write_text("alpha")
    (corpus / "sub" / "b.md").write_text("beta")
    run(*DVC, "add", "-q", "corpus")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "corpus")

    view = dvc_view(corpus)
    assert view is not None and view.git_rev
    assert view.hashes == {"a.md": file_md5(corpus / "a.md"),
                           "sub/b.md": file_md5(corpus / "sub" / "b.md")}
    scan = scan_corpus(corpus, ["**/*.md"], [], {}, dvc_hashes=view.hashes)
    assert scan.hashed == 0 and scan.hash_source == "dvc"

    (corpus / "a.md").write_text("alpha, edited after dvc add")
    dirty = dvc_view(corpus)
    assert dirty is not None and set(dirty.hashes) == {"sub/b.md"}
    scan = scan_corpus(corpus, ["**/*.md"], [], {}, dvc_hashes=dirty.hashes)
    assert scan.hashed == 1
    assert scan.files["a.md"].file_hash == file_md5(corpus / "a.md")


def test_not_a_dvc_repo(tmp_path: Path) -> None:
    assert dvc_view(tmp_path) is None
