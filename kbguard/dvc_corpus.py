"""DVC and git: where the corpus is DVC-tracked, take file hashes and revisions from DVC.

DVC 3 hashes files with plain md5, as ``scan`` does, so a hash taken from DVC and one computed
here are interchangeable: switching a corpus to DVC never re-parses a file.
"""

from __future__ import annotations

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
            except Exception:  # no commit yet, or not a git repo
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
    except Exception:  # DVC is an accelerator here, never a requirement: fall back to hashing
        return None
