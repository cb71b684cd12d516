"""The filesystems kbguard writes to: how much room they have, and whether they can be written.

A full disk is not a bug and not damage: everything committed before it filled up is kept, and
the same command continues once there is room. What the user needs to hear is which filesystem
is full, how much is free there and how much the write needs. Where a write would fail in a way
that cannot be caught (the Edge engine writes through memory maps, and a full disk kills the
process with SIGBUS), the room is checked before the write instead.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from kbguard.errors import DiskFullError

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_FULL_WORDS = ("no space left on device", "disk quota exceeded", "database or disk is full")
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# DuckDB names the file it failed to write as: Could not write file "PATH": No space left ...
_FILE_IN_MESSAGE = re.compile(r'file \\?"([^"\\]+)\\?"')


def existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest parent that does."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem that holds ``path``."""
    st = os.statvfs(existing_ancestor(path))
    return st.f_bavail * st.f_frsize


def mount_point(path: Path) -> Path:
    """Where the filesystem that holds ``path`` is mounted (bind mounts included)."""
    path = existing_ancestor(path).resolve()
    best = None
    for mount, _ in _mounts():
        if path.is_relative_to(mount) and (best is None or len(mount.parts) > len(best.parts)):
            best = mount
    if best is not None:
        return best
    dev = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == dev:
        path = path.parent
    return path


def describe_filesystem(path: Path) -> str:
    """``the filesystem mounted at /srv (ext4)``: how a user finds it in `df`."""
    mount = mount_point(path)
    kinds = [kind for where, kind in _mounts() if where == mount]
    # the last mount on a point is the one in use
    return f"the filesystem mounted at {mount}" + (f" ({kinds[-1]})" if kinds else "")


def _mounts() -> list[tuple[Path, str]]:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) > 2:
            out.append((Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)),
                                    fields[1])), fields[2]))
    return out


def human(n: float) -> str:
    """A byte count the way `df -h` says it."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (an OSError, a DuckDB or SQLite error, ...) says the disk is full."""
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    # DuckDB's and SQLite's errors carry no errno: for the adapters that translate them, the
    # text is all there is. kbguard's own full disk is a DiskFullError, never read this way.
    text = str(exc).lower()
    return any(word in text for word in _FULL_WORDS)


def file_in_message(exc: BaseException) -> Path | None:
    """The file a DuckDB IO error names, if it names one."""
    match = _FILE_IN_MESSAGE.search(str(exc))
    return Path(match.group(1)) if match else None


def disk_full(path: Path, action: str, *, needed: int | None = None,
              resume: str = "run the same command again; work already committed is not redone"
              ) -> DiskFullError:
    """The error for ``action`` (``write the manifest /x/kb.duckdb``) on the filesystem of
    ``path``, which failed or would fail for want of room; ``needed``: about how many bytes
    it needs free."""
    try:
        where = describe_filesystem(path)
        free = f"{human(free_bytes(path))} free"
    except OSError:
        where, free = "its filesystem", "free space unknown"
    need = f", about {human(needed)} needed" if needed is not None else ""
    return DiskFullError(
        f"The disk is full: there is no room to {action} on {where} ({free}{need}). Nothing "
        f"committed before was lost. Free space there (or point the config at a larger disk) "
        f"and {resume}.")


def require_free(path: Path, needed: int, action: str, **kw: str) -> None:
    """Raise DiskFullError unless the filesystem of ``path`` has ``needed`` bytes free."""
    try:
        free = free_bytes(path)
    except OSError:
        return  # cannot tell: the write itself will report a real problem
    if free < needed:
        raise disk_full(path, action, needed=needed, **kw)


def allocated(path: Path) -> int:
    """Bytes the files under ``path`` take on disk (sparse files count what they hold)."""
    total = 0
    try:
        if not path.is_dir():
            return path.lstat().st_blocks * 512 if path.exists() else 0
    except OSError:
        return 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total


def not_writable(path: Path) -> str | None:
    """Why ``path`` (a file, or the folder a new file goes into) cannot be written; None if
    it can. A file is written in place and beside it (a WAL, a lock), so its folder counts."""
    path = Path(os.path.abspath(path))
    targets = [path, path.parent] if path.exists() else [existing_ancestor(path)]
    for target in targets:
        try:
            if os.statvfs(target).f_flag & os.ST_RDONLY:
                return f"{target} is on a read-only filesystem ({describe_filesystem(target)})"
        except OSError:
            continue
        if not os.access(target, os.W_OK):
            what = "the folder" if target.is_dir() else "the file"
            return (f"{what} {target} is not writable (its permissions, owner or attributes "
                    "such as `chattr +i` forbid it)")
    return None


def is_read_only_error(exc: BaseException) -> bool:
    """Whether ``exc`` says a write was refused by permissions or a read-only filesystem."""
    if isinstance(exc, OSError):
        return exc.errno in _READ_ONLY_ERRNOS
    text = str(exc).lower()   # a DuckDB error carries no errno (see is_disk_full)
    return any(w in text for w in ("permission denied", "operation not permitted",
                                   "read-only file system"))
