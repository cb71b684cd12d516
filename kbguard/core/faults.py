"""Crash points for drills and tests: kill this process with SIGKILL at a named moment.

Set ``KBGUARD_CRASH_AT=point:n`` (e.g. ``embed-batch:3``) and the process kills itself the n-th
time it reaches that point — a real SIGKILL, no cleanup, exactly as an OOM killer or a lost node
would. Points: parse-commit, embed-batch, store-upsert (after the store write, before it is
confirmed), store-delete (after the store delete, before the manifest forgets the point),
snapshot-write (the points file written, the snapshot not yet in place), restore-build (after
each batch built into the staging store), restore-commit (the restore committed, nothing
switched yet), restore-switch (the store switched, the manifest not yet).

The same points can hold a run instead, for tests of what other commands see meanwhile: with
``KBGUARD_PAUSE_AT=point:n`` and ``KBGUARD_PAUSE_FILE=PATH``, the n-th arrival at the point
creates PATH and waits, its other threads running on, until PATH is deleted.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "KBGUARD_CRASH_AT"
PAUSE_ENV = "KBGUARD_PAUSE_AT"
PAUSE_FILE_ENV = "KBGUARD_PAUSE_FILE"
_seen: dict[str, int] = {}
_paused: dict[str, int] = {}


def crash_point(name: str) -> None:
    _pause_point(name)
    if _reached(os.environ.get(ENV), name, _seen):
        os.kill(os.getpid(), signal.SIGKILL)


def _pause_point(name: str) -> None:
    flag = os.environ.get(PAUSE_FILE_ENV)
    if not flag or not _reached(os.environ.get(PAUSE_ENV), name, _paused):
        return
    with open(flag, "w") as fh:
        fh.write(str(os.getpid()))
    while os.path.exists(flag):
        time.sleep(0.05)


def _reached(spec: str | None, name: str, counts: dict[str, int]) -> bool:
    """Whether this arrival at ``name`` is the one ``spec`` (``point:n``) names."""
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    if point != name:
        return False
    counts[name] = counts.get(name, 0) + 1
    return counts[name] == int(nth or 1)
