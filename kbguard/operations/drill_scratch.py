"""Where a drill's scratch copies go: never into the KB, never onto a disk without room, and
never left behind for good.

A scratch folder inside what a drill copies would be copied into itself (a corpus copy that
recurses until the path is too long, a store copy that nests until Python's recursion limit),
and inside the live KB its files would become the KB's: they are refused, symlinks resolved,
before anything is written. A temporary scratch folder carries its owner (pid, the process's
start time, the host), so the next drill removes the copies of a drill that was killed, and
never a live drill's copies or a folder it did not make.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from kbguard.config import Config
from kbguard.core.disk import allocated, require_free
from kbguard.core.durable import atomic_write_text
from kbguard.errors import ConfigError

PREFIX = "kbguard-drill-"
OWNER_FILE = "kbguard-drill-owner.json"


def kb_folders(cfg: Config) -> list[tuple[str, Path]]:
    """What a scratch folder must stay out of, most specific first, symlinks resolved."""
    found = [("store", cfg.store_path), ("snapshot root", cfg.snapshot_root),
             ("corpus", cfg.corpus), ("manifest's folder", cfg.manifest.parent)]
    return [(what, path.resolve()) for what, path in found if path is not None]


def refuse_inside_kb(cfg: Config, folder: Path, shown: str, fix: str, *,
                     holding: bool = True) -> None:
    """Raise ConfigError if ``folder`` (resolved) is inside a folder of the KB or, with
    ``holding``, holds one."""
    folder = folder.resolve()
    for what, path in kb_folders(cfg):
        if folder.is_relative_to(path):
            where = f"is inside the {what} {path}"
        elif holding and path.is_relative_to(folder):
            where = f"holds the {what} {path}"
        else:
            continue
        raise ConfigError(f"{shown} {where}: a drill's copies there would copy themselves or "
                          f"become part of the live KB. Nothing was copied. {fix}")


def temporary_parent(cfg: Config) -> Path:
    """The temporary folder (TMPDIR) a run's scratch folder goes into, checked to be outside
    the KB (it may hold the KB: the scratch folder is a new one inside it)."""
    tmp = Path(tempfile.gettempdir()).resolve()
    refuse_inside_kb(cfg, tmp, f"the temporary folder {tmp}",
                     "Set TMPDIR to a folder outside it, or pass --scratch.", holding=False)
    return tmp


def temporary_root(cfg: Config, parent: Path) -> Path:
    """A new scratch folder for one drill run under ``parent``, marked with its owner."""
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{cfg.kb}-", dir=parent))
    atomic_write_text(root / OWNER_FILE, json.dumps(_owner(os.getpid())))
    return root


def remove_stale(tmp: Path) -> list[tuple[Path, int]]:
    """Remove the scratch folders under ``tmp`` of drills that ended without removing them
    (SIGKILL, a crash): those whose owner process is gone. Returns (folder, its owner's pid)."""
    removed = []
    try:
        candidates = sorted(tmp.glob(PREFIX + "*"))
    except OSError:
        return []
    for folder in candidates:
        mark = folder / OWNER_FILE
        try:
            if folder.is_symlink() or not folder.is_dir() or mark.is_symlink() \
                    or not mark.is_file():
                continue   # not made by a drill, or not yet marked
            owner = json.loads(mark.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or _alive(owner):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append((folder, int(owner["pid"])))
    return removed


def _owner(pid: int) -> dict[str, object]:
    return {"pid": pid, "started": _stat(pid)[1], "host": socket.gethostname()}


def _alive(owner: dict[str, object]) -> bool:
    """Whether the process that made a folder may still use it; True when that cannot be told
    (another host's folder, a marker not understood)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass   # another user's process: alive
    state, started = _stat(pid)
    if state == "Z":   # killed, not yet reaped by its parent
        return False
    # the pid may since have gone to another process: its start time tells them apart
    return owner.get("started") is None or started is None or started == owner.get("started")


def _stat(pid: int) -> tuple[str | None, str | None]:
    """The state of process ``pid`` and when it started (clock ticks after boot): fields 3
    and 22 of /proc/PID/stat; None where there is no such file."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None, None
    fields = stat.rpartition(")")[2].split()
    return (fields[0] if fields else None), (fields[19] if len(fields) > 19 else None)


def room_needed(cfg: Config, scenario: str, newest_snapshot: Path | None,
                repo: Path | None) -> int:
    """About the bytes a drill writes in its scratch folder: its copy of the KB, and as much
    again for what its recovery writes beside the copy (a store rebuilt, a restore's staging
    copy)."""
    parts: list[Path | None] = [cfg.manifest, cfg.manifest.with_name(cfg.manifest.name + ".wal"),
                                cfg.store_path]
    if scenario in ("provider-outage", "everything-lost"):
        parts.append(cfg.corpus)
    if scenario in ("manifest-lost", "everything-lost"):
        parts.append(newest_snapshot)
    if scenario == "everything-lost" and repo is not None:
        parts.append(repo / ".git")
    return 2 * sum(allocated(p) for p in parts if p is not None)


def require_room(folder: Path, needed: int, scenarios: list[str]) -> None:
    """Raise DiskFullError, before anything is copied, unless ``folder``'s filesystem has
    ``needed`` bytes free for the copies of ``scenarios``."""
    drills = f"the {', '.join(scenarios)} drill" + ("s" if len(scenarios) > 1 else "")
    require_free(folder, needed, f"copy the KB for {drills} into {folder}",
                 resume="run the drill again (or pass --scratch on a larger disk); nothing was "
                        "copied, the live KB is as it was, and a drill that had no room is not "
                        "recorded")
