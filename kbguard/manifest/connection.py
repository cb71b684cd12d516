"""The manifest's DuckDB connection, and DuckDB's errors translated into kbguard's.

Every statement of every part of the manifest goes through one ``Connection``: the parts share
its transaction, and a caller never sees a DuckDB exception. A full disk is a DiskFullError, a
file that cannot be written a ManifestReadOnly, any other refusal a ManifestError that names the
file, says what to do, and carries what DuckDB said (``engine_error``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from kbguard.core.disk import (
    disk_full,
    file_in_message,
    is_disk_full,
    is_read_only_error,
    not_writable,
)
from kbguard.core.lock import lock_holder, locked_error
from kbguard.errors import KbguardError, LockedError, ManifestError, ManifestReadOnly


def now() -> datetime:
    return datetime.now(UTC)


WRITER_WAITS_S = 10.0   # how long a writer waits for readers that hold the file to let it go


def connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the DuckDB file. DuckDB lets no process open a file another process has open to
    read, even for a moment: a `status` or `search` that opened it just before a writer took
    the KB's lock holds it for a second at most, and a writer waits that out instead of
    failing. (Once the lock is taken, no new reader opens the file: they ask the writer.)"""
    deadline = time.monotonic() + (0.0 if read_only else WRITER_WAITS_S)
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if not _held_elsewhere(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def wal(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


def _held_elsewhere(exc: Exception) -> bool:
    # DuckDB says so only in its message; this is the adapter boundary that reads it
    return "could not set lock" in str(exc).lower()


class Connection:
    """The manifest's DuckDB connection, with its errors translated into kbguard's.

    A full disk is a DiskFullError: DuckDB reports it from whichever statement happened to write
    (usually a COMMIT, which appends to the WAL, or a COPY into a snapshot), as an IO or
    transaction error, and every statement goes through here, so no caller has to recognise
    those. A COMMIT that failed has already rolled back: the ROLLBACK a caller's cleanup sends
    next is then a no-op, not a second error that would hide the first. With ``translate_all``
    any other DuckDB error is a ManifestError (or ManifestReadOnly) too.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, *, translate_all: bool):
        self._con = con
        self._path = path
        self._full = False
        self.translate_all = translate_all

    def execute(self, query: str, parameters: Any = None) -> Connection:
        try:
            if parameters is None:
                self._con.execute(query)
            else:
                self._con.execute(query, parameters)
        except duckdb.Error as exc:
            if self._full and query.strip().upper() == "ROLLBACK":
                return self
            error = self._error(exc, query)
            if error is None:
                raise
            raise error from exc
        return self

    def executemany(self, query: str, parameters: Any = None) -> Connection:
        try:
            self._con.executemany(query, parameters)
        except duckdb.Error as exc:
            error = self._error(exc, query)
            if error is None:
                raise
            raise error from exc
        return self

    def cursor(self) -> Connection:
        return Connection(self._con.cursor(), self._path, translate_all=self.translate_all)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    # -- what every part of the manifest uses ------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.execute("ROLLBACK")
            raise
        else:
            self.execute("COMMIT")

    def count(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.execute(sql, list(params)).fetchone()[0])

    def insert_batch(self, sql: str, batch: pa.Table, params: Sequence[Any] = ()) -> None:
        """Run ``sql``, which reads ``batch`` as the table ``_batch``: one statement for the
        whole batch, where executemany would run row by row (~0.5 ms a row)."""
        self.register("_batch", batch)
        # Not in a finally: a failed statement aborts the transaction, which then refuses even
        # the unregister, and that error would hide the real one. The next register replaces
        # a view left behind.
        self.execute(sql, list(params))
        self.unregister("_batch")

    def stream(self, query: str, params: Sequence[Any], batch_size: int
               ) -> Iterator[pa.RecordBatch]:
        """The rows of ``query`` in Arrow batches of ``batch_size``, on a cursor of its own
        (closed after the last batch, or when the reader stops): memory follows the batch, not
        the table."""
        cur = self.cursor()
        try:
            # a relation streams to Arrow without the extra copy a DB-API result makes
            relation = cur.sql(query, params=list(params)) if params else cur.sql(query)
            yield from relation.to_arrow_reader(batch_size)
        except duckdb.Error as exc:
            error = self._error(exc, query)
            if error is None:
                raise
            raise error from exc
        finally:
            cur.close()

    def temp_table_batches(self, sql: str, table: str, size: int) -> Iterator[list[Any]]:
        """The rows of the temporary ``table`` (numbered ``rn`` from 1), ``size`` at a time as
        ``sql`` selects them from ``rn >= ? AND rn < ?``; the table is dropped after the last."""
        n = self.count(f"SELECT count(*) FROM {table}")
        for lo in range(1, n + 1, size):
            yield self.execute(sql, [lo, lo + size]).fetchall()
        # not in a finally: a batch loop left by an error keeps the table, which the next
        # fill replaces, rather than dropping it whenever the generator is collected
        self.execute(f"DROP TABLE {table}")

    def _error(self, exc: duckdb.Error, query: str) -> KbguardError | None:
        if is_disk_full(exc):
            self._full = True
            target = file_in_message(exc) or self._path
            manifest = (target.name.startswith(self._path.name)
                        and target.parent == self._path.parent)
            return disk_full(target, f"write the manifest {self._path}" if manifest
                             else f"write {target}")
        if not self.translate_all:
            return None
        return statement_error(exc, self._path, query)


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal, for what DuckDB cannot bind (file names in COPY and
    read_parquet, DDL)."""
    return "'" + text.replace("'", "''") + "'"


def sql_identifier(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def require_writable(path: Path) -> None:
    """Raise ManifestReadOnly if the manifest at ``path`` (or the folder for a new one) cannot
    be written; a command that will write it checks this before it starts its work."""
    reason = not_writable(path)
    if reason is not None:
        raise ManifestReadOnly(_read_only_message(path, reason))


def _read_only_message(path: Path, reason: str) -> str:
    return (f"The manifest {path} cannot be written: {reason}. What it holds is fine, and the "
            "commands that only read it still work: `kbguard status`, `kbguard search` and "
            "`kbguard verify` (which then cannot record its check). To rebuild, repair, take a "
            "snapshot or restore, make it writable again (remount the filesystem read-write, "
            "`chattr -i`, fix the permissions) and run the command again.")


def _engine_error(exc: BaseException) -> str:
    """The first line of what DuckDB said."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def translate(exc: Exception, path: Path, *, writing: bool) -> KbguardError:
    """The error for a manifest file that could not be opened (or checked once open)."""
    text = str(exc)
    engine = _engine_error(exc) if isinstance(exc, duckdb.Error) else None
    if is_disk_full(exc):
        return disk_full(file_in_message(exc) or path, f"write the manifest {path}")
    if is_read_only_error(exc):
        reason = not_writable(path) if writing else None
        if reason is not None:
            return ManifestReadOnly(_read_only_message(path, reason), engine_error=engine)
        first = text.splitlines()[0] if text else repr(exc)
        return ManifestError(
            f"The manifest {path} cannot be opened: {first}. Nothing suggests it is damaged: "
            "check the permissions of the file and its folder, and run the command again.",
            engine_error=engine)
    if _held_elsewhere(exc):
        # DuckDB lets no other process open a file one process writes: the KB is busy
        holder = lock_holder(path)
        if holder is not None and holder.get("pid") != os.getpid():
            return locked_error(path)
        return LockedError(
            f"The manifest {path} is open in another process ({text.splitlines()[0]}). Wait "
            "for that process to finish and run again.")
    return ManifestError(
        f"The manifest {path} cannot be read: {text.splitlines()[0] if text else exc!r}. "
        "Restore it with `kbguard restore --latest`, or move it aside and run "
        "`kbguard rebuild` to build a new one.", engine_error=engine)


# statements that leave the manifest file as it was (a temporary table lives in memory)
_READS = re.compile(r"\s*(SELECT|WITH|COPY|CREATE OR REPLACE TEMP )", re.IGNORECASE)


def statement_error(exc: duckdb.Error, path: Path, query: str) -> KbguardError:
    """The error for a statement on an open manifest that DuckDB refused."""
    engine = _engine_error(exc)
    if is_read_only_error(exc):
        reason = not_writable(path)
        if reason is not None:
            return ManifestReadOnly(_read_only_message(path, reason), engine_error=engine)
    text = str(exc)
    first = text.splitlines()[0] if text else repr(exc)
    reading = _READS.match(query) is not None
    return ManifestError(
        f"{'Reading' if reading else 'Writing'} the manifest {path} failed: {first}. What was "
        "committed before is kept. Run `kbguard verify`: if it reports manifest damage, or the "
        "manifest's tables were changed outside kbguard, bring it back with `kbguard restore "
        "--latest` (or move it aside and run `kbguard rebuild --full`); otherwise run the "
        "command again.", engine_error=engine)
