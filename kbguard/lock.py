"""One writer per KB: an advisory lock file beside the manifest."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kbguard.errors import LockedError, RestorePending


def lock_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.name + ".lock")


@contextmanager
def kb_lock(manifest: Path, command: str) -> Iterator[None]:
    """Hold the KB's write lock, or raise LockedError at once naming the holder."""
    path = lock_path(manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(_held_message(path)) from None
        info = {"pid": os.getpid(), "command": command,
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            if command != "restore":
                _refuse_half_restored(manifest)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _refuse_half_restored(manifest: Path) -> None:
    """Past its commit point a killed restore may have switched the store but not yet the
    manifest; only `kbguard restore` may touch the KB until it has finished the switch."""
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
        raise LockedError(_held_message(lock_path(manifest)))


def _holder_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    return info if isinstance(info, dict) else {}


def _held_message(path: Path) -> str:
    info = _holder_info(path)
    who = (f"`kbguard {info.get('command', '?')}` (pid {info.get('pid', '?')}, since "
           f"{info.get('since', '?')})") if info else "another kbguard process"
    return (f"This KB is busy: {who} holds {path}. Wait for it to finish and run again; "
            "if that process is gone, the lock is released automatically.")
