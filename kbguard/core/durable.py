"""Durable file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from kbguard.core.disk import disk_full, is_disk_full


def fsync_path(path: Path) -> None:
    """Flush a file, or the renames and removals inside a folder, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, fsynced and
    renamed into place; on any error the temporary file is removed and ``path`` is untouched.

    The folder must exist: creating folders is the caller's decision, never a side effect of a
    write (a mistyped path must not leave a new tree behind). A full disk raises DiskFullError.
    """
    path = Path(path)
    try:
        _write_replace(path, text, mode)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, f"write {path}", needed=len(text.encode("utf-8")),
                            resume="run the command again") from exc
        raise
    fsync_path(path.parent)


def _write_replace(path: Path, text: str, mode: int | None) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def copy_sparse(src: Path | str, dst: Path | str) -> str:
    """Copy one file keeping its holes (Qdrant Edge preallocates large sparse files, which a
    plain copy would write out in full) and its times; returns ``dst`` (a copy_function)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:   # ENXIO: only a hole is left
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            fin.seek(start)
            fout.seek(start)
            while start < end:
                block = fin.read(min(end - start, 1 << 20))
                if not block:
                    break
                fout.write(block)
                start += len(block)
            pos = end
        fout.truncate(size)
    shutil.copystat(src, dst)
    return str(dst)


def copy_tree_sparse(src: Path, dst: Path) -> None:
    """``shutil.copytree`` with ``copy_sparse`` (symlinks copied as links)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=copy_sparse)
