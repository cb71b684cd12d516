"""One writer per KB: an advisory lock file beside the manifest."""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kbguard.core.disk import disk_full, is_disk_full, not_writable
from kbguard.errors import LockedError, ManifestReadOnly, RestorePending


def lock_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".lock")


@contextmanager
def kb_lock(manifest: Path, command: str, *, reader: bool = False) -> Iterator[None]:
    """Hold the KB's write lock, or raise LockedError at once naming the holder.

    ``reader``: the command only reads the manifest (verify). Where the lock file cannot be
    written (a read-only filesystem or folder), no writer can take it either: a reader then
    locks the existing file opened read-only (flock needs no write access), or runs without a
    lock where there is no lock file; a writer is refused with ManifestReadOnly.
    """
    path = lock_path(manifest)
    fd = _open_lock(manifest, path, command, reader)
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked(path) from None
        info = {"pid": os.getpid(), "command": command,
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        _note_holder(fd, json.dumps(info).encode())
        try:
            yield
        finally:
            _note_holder(fd, b"")
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _open_lock(manifest: Path, path: Path, command: str, reader: bool) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, f"create the KB's lock file {path}") from exc
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        if reader:
            try:
                return os.open(path, os.O_RDONLY)  # flock needs no write access
            except OSError:
                return None
        reason = not_writable(path) or f"{path}: {exc.strerror}"
        raise ManifestReadOnly(
            f"`kbguard {command}` cannot take the KB's lock: {reason}. A command that writes "
            f"the KB needs the folder of the manifest ({manifest.parent}) writable; reading "
            "commands still work (`kbguard status`, `kbguard search`, `kbguard verify`). Make "
            "it writable again and run the command again.") from exc


def _note_holder(fd: int, info: bytes) -> None:
    """Who holds the lock, for the message a second command shows. Only a courtesy: on a full
    disk (or a read-only lock file) the lock itself still works, so a failed write is ignored."""
    try:
        os.ftruncate(fd, 0)
        if info:
            os.pwrite(fd, info, 0)
    except OSError:
        pass


def refuse_half_restored(manifest: Path) -> None:
    """Past its commit point a killed restore may have switched the store but not yet the
    manifest; only `kbguard restore` may touch the KB until it has finished the switch (every
    other command checks this once it holds the lock: ``kbguard.kb.preflight``)."""
    journal = manifest.with_name(manifest.name + ".restore.json")
    if not journal.exists():
        return
    try:
        state = json.loads(journal.read_text())
    except (OSError, ValueError):
        state = {"phase": "switching"}  # unreadable: assume the worst, restore will say more
    if isinstance(state, dict) and state.get("phase") == "switching":
        snapshot = state.get("snapshot", "?")
        raise RestorePending(
            f"A restore of snapshot {snapshot} was interrupted while switching the KB over "
            f"({journal}); the store and the manifest may be from different versions. Run "
            f"`kbguard restore {snapshot} --yes` to finish it first.")


def lock_holder(manifest: Path) -> dict[str, Any] | None:
    """Who holds the KB's write lock (``pid``, ``command``, ``since`` as far as recorded), or
    None when no process does. The kernel drops a flock when its process dies, however it
    dies, so a lock file left by a killed run is free, whatever pid it still names."""
    path = lock_path(manifest)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_info(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_unlocked(manifest: Path) -> None:
    """Raise LockedError if a writer holds the KB (readers cannot open a manifest being written)."""
    if lock_holder(manifest) is not None:
        raise locked_error(manifest)


def locked_error(manifest: Path) -> LockedError:
    """The error of a command that finds the KB busy, naming the holder of its lock."""
    return _locked(lock_path(manifest))


def _holder_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    return info if isinstance(info, dict) else {}


def _locked(path: Path) -> LockedError:
    info = _holder_info(path)
    who = (f"`kbguard {info.get('command', '?')}` (pid {info.get('pid', '?')}, since "
           f"{info.get('since', '?')})") if info else "another kbguard process"
    pid = info.get("pid")
    return LockedError(
        f"This KB is busy: {who} holds {path}. Wait for it to finish and run again; if that "
        "process is gone, the lock is released automatically.",
        pid=pid if isinstance(pid, int) else None, command=info.get("command"),
        since=info.get("since"))
