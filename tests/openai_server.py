"""A real HTTP server on 127.0.0.1 that speaks the OpenAI embeddings API, with faults on demand.

``POST /v1/embeddings`` answers with deterministic vectors (the fake embedder's hashed
bag-of-words, so a local ``fake`` provider agrees with it exactly), in ``float`` or ``base64``
encoding, with ``usage.prompt_tokens`` (a word count, deliberately not the tiktoken count, so a
test can tell which one a client used). ``dimensions`` in a request shortens the vectors as
text-embedding-3 models do.

Faults are queued with ``server.fail(kind, times=n, **params)`` and each applies to the next
``n`` requests, then stops by itself. Kinds:

    status        HTTP ``code`` (500, 503, ...), optional ``retry_after`` / ``retry_after_ms``
    rate_limit    429 with ``retry_after`` in seconds, or ``retry_after_date`` (seconds ahead,
                  sent as an HTTP date)
    hang          no answer for ``seconds`` (default 5), then the connection is closed
    slow          the right answer, ``seconds`` late
    drop          a 200 whose body stops half way, then the connection is closed
    malformed     a 200 whose body is not JSON
    error_body    a 200 whose body is an ``error`` object (a rate limit, as some gateways send)
    wrong_count   one vector too few
    wrong_dim     every vector one dimension short
    nan           the first vector carries ``value`` (default NaN; inf works too)
    zero          the first vector is all zeros
    shuffled      every vector present, in a shuffled order (valid: ``index`` says where)
    bad_index     the second item repeats index 0, so index 1 is missing
    trickle       the right answer, one byte every ``interval`` seconds (default 1); with
                  ``headers=True`` from the status line on, else after the headers
    huge          a 200 whose JSON body goes on for ``size`` bytes (default 500 MB), sent with a
                  Content-Length or, with ``chunked=True``, without one
    gzip_bomb     a 200 with ``Content-Encoding: gzip`` whose ~2 MB body inflates to ``size``
                  bytes (default 2 GiB)

``latency_s`` adds a delay to every request (the benchmark's slow provider); ``variant`` makes
the server serve a different "model" (the vectors' dimensions permuted), for probe checks.
Every request is logged (``server.requests``: headers, body, the fault applied, and for the
faults that stream, the bytes of the body the client took before it stopped reading).

Requests in absolute form (``POST http://host:port/v1/embeddings``, as a client sends them to an
HTTP proxy) are answered too, so the server can stand in for a proxy to itself.

Run as a script it serves until killed and prints its base URL on the first line of stdout:
``python tests/openai_server.py --latency-ms 100``.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import json
import math
import random
import socket
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from kbguard.config import SpaceConfig
from kbguard.providers.base import normalize
from kbguard.providers.local import FakeEmbedder

NATIVE_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072,
               "text-embedding-ada-002": 1536}
KINDS = ("status", "rate_limit", "hang", "slow", "drop", "malformed", "error_body", "wrong_count",
         "wrong_dim", "nan", "zero", "shuffled", "bad_index", "trickle", "huge", "gzip_bomb")
_MB = 1 << 20
_HUGE_HEAD = b'{"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": ['


@dataclass
class Fault:
    kind: str
    times: int
    params: dict[str, Any]


@dataclass
class LoggedRequest:
    at: float
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    fault: str | None = None
    sent: int = 0      # body bytes the client took, for the faults that stream


    @property
    def inputs(self) -> list[str]:
        return list((self.body or {}).get("input") or [])


@dataclass
class OpenAIServer:
    """An OpenAI-compatible embeddings server in a thread; use as a context manager."""

    api_key: str | None = None
    dim: int = 64                     # native size of models not in NATIVE_DIMS
    latency_s: float = 0.0
    variant: int = 0
    report_usage: bool = True
    encoding: str | None = None       # answer in this encoding whatever the request asks
    requests: list[LoggedRequest] = field(default_factory=list)
    max_in_flight: int = 0            # most requests being answered at one moment
    keep_log: bool = True             # False for long benchmark runs: only a count is kept
    # cheap vectors (one hash per text picks a row of a fixed random matrix) so that the
    # benchmark measures the client, not this server's hashing; they match no local embedder
    fast: bool = False
    served: int = 0

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._embedders: dict[int, FakeEmbedder] = {}
        self._in_flight = 0
        self._tables: dict[int, np.ndarray] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> OpenAIServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering: hung handlers wake up, the port is closed (connections refused)."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.drop_connections()  # keep-alive connections die too, as in a crash
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- faults and log -------------------------------------------------------------------
    def fail(self, kind: str, times: int = 1, **params: Any) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {KINDS}")
        with self._lock:
            self._faults.append(Fault(kind, times, params))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _next_fault(self) -> Fault | None:
        with self._lock:
            while self._faults and self._faults[0].times <= 0:
                self._faults.popleft()
            if not self._faults:
                return None
            fault = self._faults[0]
            fault.times -= 1
            return fault

    @property
    def embedding_requests(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    # -- vectors --------------------------------------------------------------------------
    def _fast_table(self, dim: int) -> np.ndarray:
        with self._lock:
            table = self._tables.get(dim)
            if table is None:
                table = normalize(np.random.default_rng(dim).standard_normal(
                    (_FAST_ROWS, dim)).astype(np.float32))
                self._tables[dim] = table
            return table

    def vectors(self, texts: list[str], model: str, dimensions: int | None) -> np.ndarray:
        dim = dimensions or NATIVE_DIMS.get(model, self.dim)
        if self.fast:
            table = self._fast_table(dim)
            rows = [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little")
                    % len(table) for t in texts]
            return table[rows]
        with self._lock:
            emb = self._embedders.get(dim)
            if emb is None:
                emb = FakeEmbedder(SpaceConfig(name="served", provider="fake", model=model, dim=dim))
                self._embedders[dim] = emb
        vecs = normalize(emb._embed(texts))
        if self.variant:
            vecs = vecs[:, np.random.default_rng(self.variant).permutation(dim)]
        return vecs


_FAST_ROWS = 4096


class _Server(ThreadingHTTPServer):
    """Remembers its open connections, so that stopping it also cuts the kept-alive ones."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    owner: OpenAIServer
    protocol_version = "HTTP/1.1"   # keep-alive, as real endpoints
    # headers and body go out in separate writes: without this, Nagle's algorithm holds the
    # body until the client's delayed ACK (~40 ms a request)
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is ``owner.requests``; stderr stays quiet

    def do_POST(self) -> None:
        owner = self.owner
        with owner._lock:
            owner._in_flight += 1
            owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
        try:
            self._answer()
        finally:
            with owner._lock:
                owner._in_flight -= 1

    def _answer(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        entry = LoggedRequest(time.monotonic(), self.path,
                              {k.lower(): v for k, v in self.headers.items()}, body)
        with owner._lock:
            owner.served += 1
            if owner.keep_log:
                owner.requests.append(entry)
        if urlsplit(self.path).path.rstrip("/") != "/v1/embeddings":
            return self._json(404, {"error": {"message": f"no route {self.path}",
                                              "type": "invalid_request_error"}})
        if owner.api_key is not None:
            presented = self.headers.get("Authorization", "")
            if presented != f"Bearer {owner.api_key}":
                # Echo what was presented, as some providers do, so that tests prove the
                # client never repeats a server's text with a key in it.
                return self._json(401, {"error": {
                    "message": f"Incorrect API key provided: {presented.removeprefix('Bearer ')}",
                    "type": "invalid_request_error", "code": "invalid_api_key"}})
        if not isinstance(body, dict) or not isinstance(body.get("input"), (list, str)):
            return self._json(400, {"error": {"message": "input is required",
                                              "type": "invalid_request_error"}})
        if owner.latency_s and owner._stopping.wait(owner.latency_s):
            return self._close()
        fault = owner._next_fault()
        entry.fault = fault.kind if fault else None
        if fault is not None:
            early = self._early_fault(fault, entry)
            if early:
                return
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        model = str(body.get("model", ""))
        dims = body.get("dimensions")
        vecs = owner.vectors(texts, model, int(dims) if dims else None)
        items: list[dict[str, Any]] = [{"object": "embedding", "index": i, "embedding": v}
                                       for i, v in enumerate(vecs)]
        if fault is not None:
            items = self._answer_fault(fault, items)
        b64 = (owner.encoding or body.get("encoding_format")) == "base64"
        for item in items:
            v = np.asarray(item["embedding"], dtype="<f4")
            item["embedding"] = (base64.b64encode(v.tobytes()).decode() if b64
                                 else [float(x) for x in v])
        tokens = sum(len(t.split()) for t in texts)
        answer: dict[str, Any] = {"object": "list", "data": items, "model": model}
        if owner.report_usage:
            answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        payload = json.dumps(answer).encode()
        if fault is not None and fault.kind == "drop":
            return self._drop(payload)
        if fault is not None and fault.kind == "trickle":
            return self._trickle(payload, fault.params, entry)
        self._send(200, payload)

    # -- faults -----------------------------------------------------------------------------
    def _early_fault(self, fault: Fault, entry: LoggedRequest) -> bool:
        """Faults that replace the answer entirely; True when the request is done."""
        p, kind = fault.params, fault.kind
        if kind == "huge":
            self._huge(int(p.get("size", 500 * _MB)), bool(p.get("chunked")), entry)
            return True
        if kind == "gzip_bomb":
            self._gzip_bomb(int(p.get("size", 2048 * _MB)), entry)
            return True
        if kind == "status":
            headers = {}
            if "retry_after" in p:
                headers["Retry-After"] = str(p["retry_after"])
            if "retry_after_ms" in p:
                headers["retry-after-ms"] = str(p["retry_after_ms"])
            code = int(p.get("code", 500))
            self._json(code, {"error": {"message": f"injected {code}", "type": "server_error"}},
                       headers)
            return True
        if kind == "rate_limit":
            if "retry_after_date" in p:
                when = time.time() + float(p["retry_after_date"])
                headers = {"Retry-After": email.utils.formatdate(when, usegmt=True)}
            else:
                headers = {"Retry-After": str(p.get("retry_after", 1))}
            self._json(429, {"error": {"message": "Rate limit reached for requests",
                                       "type": "requests", "code": "rate_limit_exceeded"}},
                       headers)
            return True
        if kind == "hang":
            self.owner._stopping.wait(float(p.get("seconds", 5)))
            self._close()
            return True
        if kind == "slow":
            if self.owner._stopping.wait(float(p.get("seconds", 1))):
                self._close()
                return True
            return False
        if kind == "malformed":
            self._send(200, b'{"object": "list", "data": [{"object": "embedding", "embeddi')
            return True
        if kind == "error_body":
            self._json(200, {"error": {"message": p.get("message", "Rate limit reached"),
                                       "type": "rate_limit_exceeded", "code": 429}})
            return True
        return False

    def _answer_fault(self, fault: Fault, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kind = fault.kind
        if kind == "wrong_count":
            return items[:-1]
        if kind == "wrong_dim":
            for item in items:
                item["embedding"] = item["embedding"][:-1]
        elif kind == "nan":
            vec = np.array(items[0]["embedding"], dtype=np.float32)
            vec[0] = float(fault.params.get("value", math.nan))
            items[0]["embedding"] = vec
        elif kind == "zero":
            items[0]["embedding"] = np.zeros_like(items[0]["embedding"])
        elif kind == "shuffled":
            items = items[:]
            random.Random(len(items)).shuffle(items)
            if len(items) > 1 and [i["index"] for i in items] == sorted(i["index"] for i in items):
                items.reverse()
        elif kind == "bad_index" and len(items) > 1:
            items[1]["index"] = 0
        return items

    # -- writing ----------------------------------------------------------------------------
    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers)

    def _send(self, code: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(payload)

    def _drop(self, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self._close()

    def _trickle(self, payload: bytes, p: dict[str, Any], entry: LoggedRequest) -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        slow = head + payload if p.get("headers") else payload
        if not p.get("headers"):
            self.wfile.write(head)
        interval = float(p.get("interval", 1.0))
        for i in range(len(slow)):
            try:
                self.wfile.write(slow[i:i + 1])
            except OSError:
                break  # the client gave up
            entry.sent += 1
            if self.owner._stopping.wait(interval):
                break
        self._close()

    def _huge(self, size: int, chunked: bool, entry: LoggedRequest) -> None:
        """A body that starts as an answer and goes on with ``0.0, `` until ``size`` bytes."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(size))
        self.end_headers()
        piece, filler = _HUGE_HEAD, b"0.0, " * (256 * 1024 // 5)
        while entry.sent < size and not self.owner._stopping.is_set():
            piece = piece[: size - entry.sent]
            try:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            except OSError:
                break  # the client stopped reading
            entry.sent += len(piece)
            piece = filler
        if chunked and entry.sent == size:
            self.wfile.write(b"0\r\n\r\n")
        self._close()

    def _gzip_bomb(self, size: int, entry: LoggedRequest) -> None:
        """gzip of a JSON answer's first bytes and then blanks: 1 MiB of blanks takes ~1 KB."""
        head, segment = _gzip_blanks()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(head) + _segments(size) * len(segment)))
        self.end_headers()
        for piece in [head] + [segment] * _segments(size):
            try:
                self.wfile.write(piece)
            except OSError:
                break
            entry.sent += len(piece)
        self._close()

    def _close(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


_GZIP: tuple[bytes, bytes] | None = None


def _gzip_blanks() -> tuple[bytes, bytes]:
    """The start of a gzip stream (the answer's first bytes) and a piece that can follow it
    any number of times, each inflating to 1 MiB of blanks (each piece is fully flushed, so the
    compressor's state after one is the same as after the last)."""
    global _GZIP
    if _GZIP is None:
        c = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        head = c.compress(_HUGE_HEAD) + c.flush(zlib.Z_FULL_FLUSH)
        segment = c.compress(b" " * _MB) + c.flush(zlib.Z_FULL_FLUSH)
        _GZIP = head, segment
    return _GZIP


def _segments(size: int) -> int:
    return max(1, size // _MB)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--variant", type=int, default=0)
    ap.add_argument("--fast", action="store_true", help="cheap vectors (benchmarks)")
    args = ap.parse_args()
    server = OpenAIServer(dim=args.dim, latency_s=args.latency_ms / 1000, variant=args.variant,
                          keep_log=False, fast=args.fast)
    server.start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
