"""Scan: list the corpus and know each file's content hash.

Hashes are md5, the same as DVC's, so where the corpus is DVC-tracked and clean the hashes come
from DVC without reading a byte. Elsewhere a stat cache (size + mtime from the manifest) means an
unchanged file is never read twice.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from kbguard.kb.corpus import require_corpus
from kbguard.manifest import DocumentRow

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class ScannedFile:
    path: str                 # posix path relative to the corpus root
    size: int
    mtime_ns: int
    file_hash: str | None     # None when the file could not be hashed (see error)
    error: str | None = None  # why this file is refused (symlink outside, unreadable, ...)


@dataclass
class ScanResult:
    files: dict[str, ScannedFile]
    hashed: int = 0                  # files read and hashed this scan
    hash_source: str = "computed"    # computed | dvc
    notes: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """A hash of the whole corpus content: same files, same bytes, same fingerprint."""
        h = hashlib.sha256()
        for path in sorted(self.files):
            f = self.files[path]
            h.update(f"{path}\0{f.file_hash or ''}\n".encode())
        return "md5set:" + h.hexdigest()[:32]


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    # O_NONBLOCK: a file swapped for a FIFO after the scan looked at it must not hang the read
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as fh:
        kind = _not_regular(os.fstat(fd).st_mode)
        if kind:
            raise OSError(errno.EINVAL, f"{kind} is not a regular file", str(path))
        while block := fh.read(_READ_SIZE):
            h.update(block)
    return h.hexdigest()


def _not_regular(mode: int) -> str | None:
    """What a file that is not a regular file is (a FIFO, a socket, a device); None if regular."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


def _may_hold(folder: str, patterns: Iterable[str]) -> bool:
    """Whether a glob could select a file somewhere inside ``folder`` (a relative path)."""
    parts = folder.split("/")
    for pattern in patterns:
        segments = pattern.split("/")
        for i, part in enumerate(parts):
            if "**" in segments[i]:
                return True
            if i == len(segments) - 1 or not _glob_regex(segments[i]).match(part):
                break  # the last segment names files, not folders
        else:
            return True
    return False


@lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a gitignore-like glob: `**/` spans zero or more folders, `*` stays in one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches(path: str, patterns: Iterable[str]) -> bool:
    return any(_glob_regex(p).match(path) for p in patterns)


def walk_corpus(root: Path, include: Iterable[str], exclude: Iterable[str]
                ) -> Iterable[tuple[str, Path, str | None]]:
    """Yield (relative path, absolute path, refusal reason or None) for every selected file.

    Symlinks are never followed out of the corpus: such a file is yielded with a reason, and so
    is a symlinked folder that leads out of it where the globs could select files inside it.
    """
    include, exclude = tuple(include), tuple(exclude)
    root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        rel_dir = base.relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") or d == ".")
        candidates = list(filenames)
        # A symlinked folder is listed as a dir but not descended; treat it like a file entry so
        # that one pointing outside the corpus is reported, not silently skipped.
        linked_dirs = set()
        for d in list(dirnames):
            if (base / d).is_symlink():
                dirnames.remove(d)
                candidates.append(d)
                linked_dirs.add(d)
        for name in sorted(candidates):
            if name.startswith("."):
                continue
            rel = f"{rel_dir}/{name}" if rel_dir != "." else name
            full = base / name
            selected = matches(rel, include) and not matches(rel, exclude)
            if name in linked_dirs and not selected:
                target = Path(os.path.realpath(full))
                if (not target.is_relative_to(root) and _may_hold(rel, include)
                        and not matches(rel + "/", exclude)):
                    yield rel, full, (f"symlink to a folder outside the corpus (to {target}); "
                                      "its files are not indexed: copy them into the corpus "
                                      "to index them")
                continue
            if not selected:
                continue
            reason = None
            if full.is_symlink():
                target = Path(os.path.realpath(full))
                if not target.is_relative_to(root):
                    reason = (f"symlink points outside the corpus (to {target}); "
                              "copy the file into the corpus to index it")
                elif target.is_dir():
                    reason = "symlink to a folder inside the corpus; it is indexed at its real path"
            yield rel, full, reason


def scan_corpus(root: Path, include: Iterable[str], exclude: Iterable[str],
                known: Mapping[str, DocumentRow],
                dvc_hashes: Mapping[str, str] | None = None) -> ScanResult:
    """List the corpus; reuse hashes from DVC or the stat cache, hash the rest."""
    require_corpus(root)
    result = ScanResult(files={})
    from_dvc = dvc_hashes or {}
    if from_dvc:
        result.hash_source = "dvc"
    for rel, full, reason in walk_corpus(root, include, exclude):
        if reason:
            result.files[rel] = ScannedFile(rel, 0, 0, None, reason)
            continue
        try:
            st = full.stat()
        except OSError as exc:
            result.files[rel] = ScannedFile(rel, 0, 0, None, f"cannot stat: {exc.strerror}")
            continue
        kind = _not_regular(st.st_mode)
        if kind:
            # reading a FIFO waits for a writer forever; only regular files are documents
            result.files[rel] = ScannedFile(
                rel, 0, 0, None, f"{kind} is not a regular file, and only regular files are "
                "documents: exclude it (corpus.exclude) or replace it with a file")
            continue
        prev = known.get(rel)
        digest = from_dvc.get(rel)
        if digest is None and prev and prev.file_hash and prev.size == st.st_size \
                and prev.mtime_ns == st.st_mtime_ns:
            digest = prev.file_hash
        if digest is None:
            try:
                digest = file_md5(full)
            except FileNotFoundError:
                continue  # vanished between listing and reading: it is simply not in the corpus
            except OSError as exc:
                result.files[rel] = ScannedFile(rel, st.st_size, st.st_mtime_ns, None,
                                                f"cannot read: {exc.strerror}")
                continue
            result.hashed += 1
        result.files[rel] = ScannedFile(rel, st.st_size, st.st_mtime_ns, digest)
    return result
