"""HTTP for the API providers: one POST with a wall-clock deadline and a cap on what it reads.

The timeouts of HTTP clients bound each step of a request (connect, each read), so a server that
trickles its answer a byte at a time holds a request for as long as it likes. Here every socket
operation of a request waits at most until that request's ``deadline`` (a ``time.monotonic()``
value): connecting, the TLS handshake, sending, and each read, headers included. When the
deadline passes, the connection is closed and ``DeadlinePassed`` raised.

The body is read in pieces and inflated (gzip) as it arrives; reading stops as soon as the
inflated bytes pass ``max_bytes``, so neither a huge answer nor a compression bomb is ever held in
memory.

Nothing from the environment goes into a request: its headers are the caller's. The environment
only routes it, as for any HTTP client: the standard proxy variables (``HTTPS_PROXY``,
``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and ``SSL_CERT_FILE``/``SSL_CERT_DIR``. Redirects are
answers like any other, never followed: following one would carry the key to another address.
"""

from __future__ import annotations

import contextvars
import email.utils
import math
import random
import time
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore2

from kbguard.errors import ConfigError

#: what is read of an error answer: enough for its message
ERROR_BODY_BYTES = 64 * 1024


class DeadlinePassed(Exception):
    """The request's deadline passed; ``received`` body bytes had arrived (None: no answer yet)."""

    def __init__(self, received: int | None):
        super().__init__("deadline passed")
        self.received = received


class ConnectionFailed(Exception):
    """The connection could not be made, or broke before the answer was whole."""


class AnswerRefused(Exception):
    """The answer cannot be read within its limits: ``too_large``, or an encoding not asked for."""

    def __init__(self, why: str, *, too_large: bool = False):
        super().__init__(why)
        self.too_large = too_large


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]   # names in lower case
    body: bytes


class HttpClient:
    """Connections to one endpoint (through the proxy the environment names for it, if any)."""

    def __init__(self, base_url: str, max_connections: int):
        self._pool = httpcore2.ConnectionPool(
            ssl_context=httpcore2.default_ssl_context(), proxy=_proxy_for(base_url),
            max_connections=max_connections, network_backend=_DeadlineBackend())

    def post(self, url: str, headers: Mapping[str, str], body: bytes, *, deadline: float,
             max_bytes: int) -> Reply:
        """POST ``body``; the answer, its body inflated and at most ``max_bytes`` long (an error
        answer's body is cut at ``ERROR_BODY_BYTES`` instead)."""
        token = _DEADLINE.set(deadline)
        progress = _Progress()
        try:
            left = _left(None, httpcore2.PoolTimeout)
            timeouts = {"connect": left, "read": left, "write": left, "pool": left}
            with self._pool.stream("POST", url, headers=list(headers.items()), content=body,
                                   extensions={"timeout": timeouts}) as response:
                names = {k.decode("latin-1").lower(): v.decode("latin-1")
                         for k, v in response.headers}
                ok = 200 <= response.status < 300
                data = _read(response.iter_stream(), names, max_bytes if ok else
                             ERROR_BODY_BYTES, cut=not ok, progress=progress)
                return Reply(response.status, names, data)
        except httpcore2.TimeoutException:
            raise DeadlinePassed(progress.received) from None
        except (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.ProxyError,
                httpcore2.UnsupportedProtocol) as exc:
            raise ConnectionFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            _DEADLINE.reset(token)

    def close(self) -> None:
        self._pool.close()


def retryable(status: int) -> bool:
    """Statuses a later attempt may get past: timeouts, conflicts, rate limits, server errors."""
    return status in (408, 409, 429) or status >= 500


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, or ``Retry-After`` in seconds or
    as an HTTP date), or None when it did not say."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            value = float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
        if math.isfinite(value):
            return max(0.0, value)
    try:
        when = email.utils.parsedate_to_datetime(headers["retry-after"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(attempt: int) -> float:
    """The wait after failed attempt ``attempt`` (1, 2, ...) when the server named none."""
    return float(min(0.5 * 2 ** (attempt - 1), 8.0) * (1 - 0.25 * random.random()))


# -- reading ------------------------------------------------------------------------------

class _Progress:
    received: int | None = None   # body bytes read so far; None until the headers are in


def _read(stream: Iterable[bytes], headers: Mapping[str, str], limit: int, *, cut: bool,
          progress: _Progress) -> bytes:
    encoding = headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
        declared = headers.get("content-length", "")
        if not cut and declared.isdigit() and int(declared) > limit:
            raise AnswerRefused(f"a body of {int(declared):,} bytes", too_large=True)
    elif encoding in ("gzip", "x-gzip"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    else:
        raise AnswerRefused(f"Content-Encoding {encoding[:40]!r}, which was not asked for")
    parts: list[bytes] = []
    size = received = progress.received = 0
    for raw in stream:
        received += len(raw)
        progress.received = received
        if inflater is None:
            piece = raw
        else:
            try:
                # at most one byte past the limit: that byte is enough to know
                piece = inflater.decompress(raw, limit - size + 1)
            except zlib.error:
                raise AnswerRefused("gzip data that does not inflate") from None
        size += len(piece)
        if size > limit:
            if cut:
                parts.append(piece[: len(piece) - (size - limit)])
                break
            raise AnswerRefused(f"more than {limit:,} bytes", too_large=True)
        parts.append(piece)
    return b"".join(parts)


# -- the deadline, at the socket --------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "kbguard_request_deadline", default=None)


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this thread's request deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, stream: httpcore2.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore2.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore2.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore2.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore2.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _left(timeout, httpcore2.ConnectTimeout), local_address,
            socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore2.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _left(timeout, httpcore2.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


# -- proxies ------------------------------------------------------------------------------

def _proxy_for(base_url: str) -> Any:
    """The proxy the environment names for ``base_url``'s host, or None."""
    parts = urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    if not chosen:
        return None
    proxy = urlsplit(chosen if "://" in chosen else f"http://{chosen}")
    if proxy.scheme not in ("http", "https") or not proxy.hostname:
        raise ConfigError(
            f"The environment names a {proxy.scheme or 'malformed'} proxy for "
            f"{parts.hostname}; API providers are reached directly or through an http(s) proxy "
            f"only. Set {parts.scheme.upper()}_PROXY to one, or add the host to NO_PROXY.")
    auth = (unquote(proxy.username), unquote(proxy.password or "")) if proxy.username else None
    host = f"[{proxy.hostname}]" if ":" in proxy.hostname else proxy.hostname
    port = f":{proxy.port}" if proxy.port else ""
    return httpcore2.Proxy(url=f"{proxy.scheme}://{host}{port}", auth=auth)
