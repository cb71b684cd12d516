"""Durable file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from kbguard.core.disk import disk_full, is_disk_full

_BLOCK = 1 << 20
_ZEROS = bytes(_BLOCK)


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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def copy_sparse(src: Path | str, dst: Path | str) -> str:
    """Copy one file keeping its holes (Qdrant Edge preallocates large sparse files, which a
    plain copy would write out in full) and its times; returns ``dst`` (a copy_function)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        _copy_data(fin, fout, None)
    shutil.copystat(src, dst)
    return str(dst)


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy one file as ``copy_sparse`` does, synced to disk, and return its sha256 and size,
    in one read of it: holes stay holes in the copy and are hashed as the zeros they read as."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = _copy_data(fin, fout, digest)
        fout.flush()
        os.fsync(fout.fileno())
    return digest.hexdigest(), size


def _copy_data(fin: BinaryIO, fout: BinaryIO, digest: Any) -> int:
    """Copy the data ranges of ``fin`` into ``fout``, seeking over its holes; ``digest`` (when
    given) is fed every byte in order, holes as zeros. Returns the bytes copied: the size, or
    less if the file shrank meanwhile (the copy then ends there too)."""
    fd = fin.fileno()
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                start = end = size      # only a hole is left
            elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                start, end = pos, size  # no hole support here: all of it is data
            else:
                raise
        if digest is not None:
            while pos < start:  # the hole before this data
                n = min(start - pos, _BLOCK)
                digest.update(_ZEROS[:n] if n < _BLOCK else _ZEROS)
                pos += n
        pos = start
        fin.seek(start)
        fout.seek(start)
        while pos < end:
            block = fin.read(min(end - pos, _BLOCK))
            if not block:
                break  # the file shrank: a checksum of the copy says so
            if digest is not None:
                digest.update(block)
            fout.write(block)
            pos += len(block)
        if pos < end:
            break
    fout.truncate(pos)
    return pos


def copy_tree_sparse(src: Path, dst: Path) -> None:
    """``shutil.copytree`` with ``copy_sparse`` (symlinks copied as links)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=copy_sparse)
