"""Asking the process that holds a KB to read it for us (the other end: kbguard.kb.read_service).

While a rebuild writes a KB, no other process can open its manifest (DuckDB) or, for an Edge
store or qdrant-client's local mode, its store; the rebuild answers reads for them instead, on
a Unix socket in Linux's abstract namespace named from the manifest's path: no file to leave
behind when the process dies, no limit on the path's length. One JSON request per connection,
one JSON answer: ``{"ok": ...}`` or ``{"error": message, "error_type": name}``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from kbguard import errors
from kbguard.core.lock import lock_holder, locked_error
from kbguard.errors import KbguardError, LockedError

ANSWER_TIMEOUT_S = 30.0   # a status over millions of rows takes seconds; more is a stuck writer
START_GRACE_S = 2.0       # a rebuild takes the lock a moment before its service listens
_MAX_ANSWER = 64 << 20


def socket_name(manifest: Path) -> str:
    """The abstract socket address of the KB whose manifest is ``manifest``."""
    digest = hashlib.sha256(os.path.realpath(manifest).encode()).hexdigest()[:32]
    return f"\0kbguard-reads-{digest}"


def ask_writer(manifest: Path, request: dict[str, Any]) -> Any | None:
    """What the process holding the KB's lock answers to ``request``; None when no process
    holds it (read the KB directly, then).

    Raises LockedError, with the usual message, when the holder serves no reads (verify,
    snapshot, restore) or does not answer in time, and the writer's own error (same type,
    same message) when it could not answer.
    """
    holder = lock_holder(manifest)
    if holder is None:
        return None
    grace = START_GRACE_S if holder.get("command") == "rebuild" else 0.0
    deadline = time.monotonic() + grace
    while True:
        try:
            answer = _exchange(socket_name(manifest), request)
            break
        except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError,
                BrokenPipeError, EOFError):
            if lock_holder(manifest) is None:
                return None   # it finished meanwhile: the KB is free to read
            if time.monotonic() >= deadline:
                raise locked_error(manifest) from None
            time.sleep(0.05)
        except TimeoutError:
            busy = locked_error(manifest)
            raise LockedError(f"{busy} It did not answer a read within {ANSWER_TIMEOUT_S:g} s.",
                              pid=busy.pid, command=busy.command, since=busy.since) from None
    if "error" in answer:
        raise _error_type(answer.get("error_type"))(str(answer["error"]))
    return answer["ok"]


def _exchange(address: str, request: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(ANSWER_TIMEOUT_S)
        sock.connect(address)
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks, size = [], 0
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > _MAX_ANSWER:
                raise KbguardError(f"The rebuild's answer to a read was over "
                                   f"{_MAX_ANSWER >> 20} MiB; ask for less (-k).")
    if not chunks:
        raise EOFError("the writer closed the connection without an answer")
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise KbguardError("The rebuild's read service answered something that is not an "
                           "answer; run the command again once the rebuild has finished.")
    return answer


def _error_type(name: Any) -> type[KbguardError]:
    """The error class the writer raised, by name, among kbguard's own (else the base)."""
    cls = getattr(errors, name, None) if isinstance(name, str) else None
    return cls if isinstance(cls, type) and issubclass(cls, KbguardError) else KbguardError


def vector_text(vector: np.ndarray) -> str:
    """A vector as text that turns back into the same float32 values exactly."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def text_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
