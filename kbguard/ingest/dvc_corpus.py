"""DVC and git: where the corpus is DVC-tracked, take file hashes and revisions from DVC.

DVC 3 hashes files with plain md5, as ``scan`` does, so a hash taken from DVC and one computed
here are interchangeable: switching a corpus to DVC never re-parses a file.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path


def find_dvc_root(path: Path) -> Path | None:
    for parent in (path, *path.parents):
        if (parent / ".dvc").is_dir():
            return parent
    return None


@dataclass(frozen=True)
class DvcView:
    hashes: dict[str, str]   # corpus-relative path -> md5, for files unchanged since `dvc add`
    git_rev: str | None


def dvc_view(corpus: Path) -> DvcView | None:
    """DVC's md5 of every tracked corpus file whose workspace copy is unchanged, or None when
    the corpus is not DVC-tracked (or DVC cannot tell)."""
    corpus = corpus.resolve()
    root = find_dvc_root(corpus)
    if root is None:
        return None
    try:
        from dvc.api import DVCFileSystem
        from dvc.repo import Repo

        rel = corpus.relative_to(root).as_posix()
        prefix = "" if rel == "." else rel + "/"
        with Repo(str(root)) as repo:
            status = repo.data_status(granular=True, untracked_files="no")
            unchanged = {p for p in status.get("unchanged", []) if not p.endswith("/")}
            try:
                git_rev = repo.scm.get_rev()
            except Exception:  # noqa: BLE001 - no commit yet, or not a git repo
                git_rev = None
        if not unchanged:
            return DvcView({}, git_rev) if git_rev else None
        fs = DVCFileSystem(str(root))
        hashes: dict[str, str] = {}
        for path, info in fs.find(rel if rel != "." else "/", detail=True).items():
            path = path.lstrip("/")
            md5 = (info.get("dvc_info") or {}).get("md5")
            if md5 and path in unchanged and path.startswith(prefix):
                hashes[path[len(prefix):]] = md5
        return DvcView(hashes, git_rev)
    # DVC is an accelerator here, never a requirement: on any failure, fall back to hashing
    except Exception:  # noqa: BLE001
        return None


def tracking_file(path: Path) -> Path | None:
    """The ``.dvc`` file that tracks ``path`` or a folder above it in its DVC repository."""
    path = path.resolve()
    root = find_dvc_root(path)
    if root is None:
        return None
    for p in (path, *path.parents):
        if p == root:
            return None
        candidate = p.with_name(p.name + ".dvc")
        if candidate.is_file():
            return candidate
    return None


_MD5 = re.compile(r"^\s*-?\s*md5:\s*([0-9a-f]{32}(?:\.dir)?)\s*$", re.MULTILINE)


def corpus_revision(corpus: Path) -> tuple[str | None, str | None]:
    """(git commit, DVC hash) of the corpus: the commit checked out in the git repository that
    holds it, and the md5 its ``.dvc`` file records; None for what does not apply."""
    corpus = corpus.resolve()
    try:
        done = subprocess.run(["git", "-C", str(corpus), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        commit = done.stdout.strip() if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    dvc_file = tracking_file(corpus)
    found = None
    if dvc_file is not None:
        try:
            found = _MD5.search(dvc_file.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            found = None
    return commit or None, found.group(1) if found else None
