"""Crash points for drills and tests: kill this process with SIGKILL at a named moment.

Set ``KBGUARD_CRASH_AT=point:n`` (e.g. ``embed-batch:3``) and the process kills itself the n-th
time it reaches that point — a real SIGKILL, no cleanup, exactly as an OOM killer or a lost node
would. Points: parse-commit, embed-batch, store-upsert (after the store write, before it is
confirmed), store-delete (after the store delete, before the manifest forgets the point),
snapshot-write (the points file written, the snapshot not yet in place), restore-build (after
each batch built into the staging store), restore-commit (the restore committed, nothing
switched yet), restore-switch (the store switched, the manifest not yet).
"""

from __future__ import annotations

import os
import signal

ENV = "KBGUARD_CRASH_AT"
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    if _seen[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
