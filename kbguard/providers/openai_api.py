"""Any endpoint that speaks the OpenAI embeddings API.

This adapter plans requests within the endpoint's limits, sends up to ``concurrency`` of them at
once within a tokens-per-minute budget, retries what may pass (connection errors, 408/409/429/5xx,
honouring ``Retry-After``), checks every answer whole (``answer.decode_answer``) and translates
every failure into a ``kbguard.errors`` class.

Each request has one deadline, ``timeout_s`` after it starts, that covers every attempt and every
wait between them, enforced at the socket (``transport``): a server that hangs or trickles its
answer costs at most ``timeout_s``, and a chain then fails over. What is read of an answer is
capped by what the batch can need (``answer.answer_cap``).

A request carries what the entry configures and nothing else: the key (read once, from the
environment variable named by ``api_key_env`` or from ``api_key_file``) and fixed headers. No
other variable is read (the official client would add ``OPENAI_ORG_ID``, ``OPENAI_PROJECT_ID``
and ``OPENAI_CUSTOM_HEADERS`` to any ``base_url``). The key is scrubbed from every message this
module raises (servers do echo keys); third-party exceptions are never chained, so no traceback
carries their text.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kbguard.config import SpaceConfig
from kbguard.config.catalog import OPENAI_MAX_INPUT_TOKENS, OPENAI_MODELS
from kbguard.config.provider_settings import OpenAIProviderSettings
from kbguard.errors import (
    ConfigError,
    EmbedError,
    ProviderRejected,
    ProviderUnavailable,
)
from kbguard.providers.answer import answer_cap, decode_answer, oversized, unreadable
from kbguard.providers.base import Embedded, Provider, Usage, normalize
from kbguard.providers.budget import TokenBudget, plan_batches
from kbguard.providers.tokens import count_cl100k
from kbguard.providers.transport import (
    AnswerRefused,
    ConnectionFailed,
    DeadlinePassed,
    HttpClient,
    Reply,
    backoff,
    retry_after,
    retryable,
)

_KEY_MARK = "[api key]"
_log = logging.getLogger(__name__)


class OpenAIProvider(Provider):
    """One OpenAI-compatible ``/v1/embeddings`` endpoint filling a space."""

    def __init__(self, space: SpaceConfig, settings: OpenAIProviderSettings,
                 env: Mapping[str, str] | None = None, *,
                 sleep: Callable[[float], None] = time.sleep):
        """``sleep``: how the waits between attempts are spent (a test records them). The
        deadline is real time: the socket enforces it too."""
        self.settings = settings
        self._sleep = sleep
        self.model = settings.model or space.model
        self.endpoint = _display_url(settings.base_url)
        super().__init__(space, f"openai:{self.model}@{self.endpoint}")
        # A missing variable makes this provider fail its calls (a chain then fails over and
        # says why); a key file open to others is a config error, refused at once.
        self._key: str | None = None
        self._key_error: ProviderUnavailable | None = None
        try:
            self._key = read_api_key(settings, os.environ if env is None else env)
        except ProviderUnavailable as exc:
            self._key_error = exc
        known = OPENAI_MODELS.get(self.model.rsplit("/", 1)[-1])
        self._extra: dict[str, Any] = {}
        if known is not None:
            size, shortens = known.dim, known.shortens
            if space.dim > size or (space.dim < size and not shortens):
                raise ConfigError(
                    f"Space {space.name!r} has dim = {space.dim} but {self.model} makes "
                    f"{size}-d vectors{' (and takes no `dimensions`)' if not shortens else ''}. "
                    f"Set dim = {size}" + (" or below" if shortens else "") + ".")
            if space.dim < size:
                self._extra["dimensions"] = space.dim
            self.max_input_tokens = known.max_input_tokens
            self.exact_tokens = True
            self.enforces_limit = True
        else:
            # Another model behind the same API: cl100k_base only estimates its tokens, and its
            # input limit is what the settings say (the endpoint enforces it otherwise).
            self.exact_tokens = False
            self.enforces_limit = settings.max_input_tokens is not None
            self.max_input_tokens = settings.max_input_tokens or OPENAI_MAX_INPUT_TOKENS
        self._max_tokens = settings.max_batch_tokens
        self._budget: TokenBudget | None = None
        if settings.tokens_per_minute:
            self._budget = TokenBudget(settings.tokens_per_minute)
            self._max_tokens = min(self._max_tokens, settings.tokens_per_minute)
        self._pool: ThreadPoolExecutor | None = None
        self._url = f"{settings.base_url}/embeddings"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Accept-Encoding": "gzip", "User-Agent": "kbguard"}
        if self._key:
            self._headers["Authorization"] = f"Bearer {self._key}"
        self._http = HttpClient(settings.base_url, max_connections=settings.concurrency)
        warning = settings.key_in_clear() if self._key else None
        if warning:
            _log.warning(warning)  # stderr, unless the application routes kbguard's logs

    def __repr__(self) -> str:
        s = self.settings
        return (f"OpenAIProvider(model={self.model!r}, endpoint={self.endpoint!r}, "
                f"timeout_s={s.timeout_s}, max_retries={s.max_retries}, "
                f"concurrency={s.concurrency})")

    # -- tokens ---------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_cl100k(texts)

    # -- embedding ------------------------------------------------------------------------
    def _embed_texts(self, texts: list[str]) -> Embedded:
        started = time.perf_counter()
        self.check_lengths(texts)
        step = self.settings.max_batch_texts
        jobs = [texts[a:a + step] for a in range(0, len(texts), step)]
        if len(jobs) == 1 or self.settings.concurrency == 1:
            parts = [self._send(batch) for batch in jobs]
        else:
            parts = self._in_parallel(jobs)
        vectors = np.concatenate([vecs for vecs, _ in parts])
        if self.space.normalize:
            vectors = normalize(vectors)
        tokens = sum(u.tokens for _, u in parts)
        usage = Usage(texts=len(texts), tokens=tokens, requests=sum(u.requests for _, u in parts),
                      seconds=time.perf_counter() - started, cost_usd=self._cost(tokens))
        return Embedded(vectors, self.name, usage)

    def _in_parallel(self, jobs: list[list[str]]) -> list[tuple[np.ndarray, Usage]]:
        with self._usage_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.concurrency,
                                                thread_name_prefix="kbguard-embed")
            pool = self._pool
        futures: list[Future[tuple[np.ndarray, Usage]]] = [
            pool.submit(self._send, batch) for batch in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f.done() and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()  # requests not yet sent are not sent: the whole call has failed
            raise failed.exception()  # type: ignore[misc]
        return [f.result() for f in futures]

    def _send(self, batch: list[str]) -> tuple[np.ndarray, Usage]:
        """Up to max_batch_texts texts, in as many requests as max_batch_tokens needs.

        Tokens are counted here, in the sending thread, so that counting overlaps with the
        other requests' waits instead of delaying the first request."""
        counts = self.count_tokens(batch)
        spans = plan_batches(counts, self.settings.max_batch_texts, self._max_tokens)
        parts = [self._request(batch[a:b], sum(counts[a:b])) for a, b in spans]
        if len(parts) == 1:
            return parts[0]
        total = Usage()
        for _, u in parts:
            total = total + u
        return np.concatenate([v for v, _ in parts]), total

    def _request(self, batch: list[str], est_tokens: int) -> tuple[np.ndarray, Usage]:
        """One request (with its retries): valid vectors and its usage."""
        if self._key_error is not None:
            raise ProviderUnavailable(f"{self.name}: {self._key_error}")
        if self._budget is not None:
            self._budget.acquire(est_tokens)
        started = time.perf_counter()
        payload = json.dumps({"input": batch, "model": self.model, "encoding_format": "base64",
                              **self._extra}).encode()
        body, requests = self._post(payload, len(batch), started)
        try:
            vectors, reported = decode_answer(body, len(batch), self.space.dim, self.name,
                                              scrub=self._scrub)
        except EmbedError:
            self._spent(Usage(requests=requests, seconds=time.perf_counter() - started))
            raise
        tokens = est_tokens if reported is None else reported
        usage = Usage(texts=len(batch), tokens=tokens, requests=requests,
                      seconds=time.perf_counter() - started, cost_usd=self._cost(tokens))
        self._spent(usage)
        return vectors, usage

    def _post(self, payload: bytes, texts: int, started: float) -> tuple[bytes, int]:
        """The body of a 2xx answer and the attempts it took. Every attempt and every wait
        between them ends within timeout_s: a wait that would end later is not begun."""
        s = self.settings
        deadline = time.monotonic() + s.timeout_s
        cap = answer_cap(texts, self.space.dim)
        attempt = 0
        while True:
            attempt += 1
            try:
                reply = self._http.post(self._url, self._headers, payload, deadline=deadline,
                                        max_bytes=cap)
            except DeadlinePassed as exc:
                raise self._failed(self._late(exc, attempt), attempt, started,
                                   spent=True) from None
            except AnswerRefused as exc:
                error = (oversized(self.name, cap, texts, self.space.dim, str(exc))
                         if exc.too_large else unreadable(self.name, str(exc)))
                raise self._failed(error, attempt, started) from None
            except ConnectionFailed as exc:
                problem: ConnectionFailed | Reply = exc
                wait = backoff(attempt)
            else:
                if 200 <= reply.status < 300:
                    return reply.body, attempt
                problem = reply
                if not retryable(reply.status):
                    raise self._failed(self._problem(reply, attempt), attempt, started)
                asked = retry_after(reply.headers)
                wait = backoff(attempt) if asked is None else asked
            if attempt > s.max_retries:
                raise self._failed(self._problem(problem, attempt), attempt, started)
            if time.monotonic() + wait >= deadline:
                # no time for the wait: as good as every attempt spent (the breaker opens)
                note = (f"; the retry due in {wait:.3g} s would start past timeout_s = "
                        f"{s.timeout_s:g} s")
                raise self._failed(self._problem(problem, attempt, note), attempt, started,
                                   spent=True)
            self._sleep(wait)

    def _failed(self, error: EmbedError, attempts: int, started: float, *,
                spent: bool = False) -> EmbedError:
        """``error`` with what it cost recorded. Its ``attempts`` are the failed requests the
        circuit breaker counts: a call that ran out of time counts as every attempt it had."""
        self._spent(Usage(requests=attempts, seconds=time.perf_counter() - started))
        error.attempts = 1 + self.settings.max_retries if spent else attempts  # type: ignore[attr-defined]
        return error

    def _cost(self, tokens: int) -> float:
        return tokens * self.settings.price_per_million_tokens / 1_000_000

    # -- errors ---------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, _KEY_MARK) if self._key else text

    def _late(self, exc: DeadlinePassed, attempts: int) -> EmbedError:
        arrived = ("" if exc.received is None else
                   f"; {exc.received:,} bytes of its answer had arrived")
        return ProviderUnavailable(
            f"{self.name} did not answer within timeout_s = {self.settings.timeout_s:g} s "
            f"({_tries(attempts)}{arrived}). Check that the service is up, or raise timeout_s.")

    def _problem(self, problem: ConnectionFailed | Reply, attempts: int,
                 note: str = "") -> EmbedError:
        if isinstance(problem, ConnectionFailed):
            return ProviderUnavailable(
                f"{self.name} cannot be reached ({_short(self._scrub(str(problem)))}; "
                f"{_tries(attempts)}{note}). Check base_url and that the service is up.")
        return self._refused(problem, f"{_tries(attempts)}{note}")

    def _refused(self, reply: Reply, tries: str) -> EmbedError:
        name, s, code = self.name, self.settings, reply.status
        # scrubbed before shortening, so a cut can never leave part of a key behind
        msg = _short(self._scrub(_status_message(reply.body)))
        if code == 429:
            return ProviderUnavailable(self._scrub(
                f"{name} rate-limited the requests (HTTP 429: {msg}; {tries}). Lower "
                "concurrency or set tokens_per_minute for this provider, or run again later."))
        if code >= 500 or code in (408, 409):
            return ProviderUnavailable(self._scrub(
                f"{name} failed (HTTP {code}: {msg}; {tries}). Run again when the service "
                "is back."))
        if 300 <= code < 400:
            return ProviderRejected(
                f"{name} answered with a redirect (HTTP {code}), which is not followed: it "
                "would carry the key to another address. Set base_url to the address the "
                "endpoint answers at.")
        if code in (401, 403):
            where = (f"the environment variable {s.api_key_env}" if s.api_key_env else
                     f"api_key_file {s.api_key_file}" if s.api_key_file else
                     "api_key_env (none is set for this provider)")
            return ProviderRejected(self._scrub(
                f"{name} refused the API key (HTTP {code}: {msg}). Check the key in {where}."))
        return ProviderRejected(self._scrub(
            f"{name} refused the request (HTTP {code}: {msg}). Check model = "
            f"{self.model!r} and this provider's settings."))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._http.close()


def read_api_key(settings: OpenAIProviderSettings, env: Mapping[str, str]) -> str | None:
    """The key from the variable named by ``api_key_env`` or from ``api_key_file``; None when
    neither is set (endpoints that take no key, e.g. a local TEI)."""
    if settings.api_key_env:
        key = (env.get(settings.api_key_env) or "").strip()
        if not key:
            raise ProviderUnavailable(
                f"The environment variable {settings.api_key_env} (api_key_env) is not set or "
                "empty. Export the API key in it and run again.")
        if not _header_safe(key):
            raise ProviderUnavailable(
                f"The environment variable {settings.api_key_env} (api_key_env) holds "
                "characters no HTTP header carries (a key is one line of printable ASCII). "
                "Export the key alone in it.")
        return key
    if settings.api_key_file:
        return _read_key_file(Path(settings.api_key_file).expanduser())
    return None


def _read_key_file(path: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ConfigError(f"api_key_file {path} cannot be read ({exc.strerror}). Point it at "
                          "a file holding the API key.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(f"api_key_file {path} is not a regular file (it is a "
                              f"{_file_kind(mode)}). Point it at a file holding the API key.")
        if mode & 0o077:
            raise ConfigError(
                f"api_key_file {path} is open to group or others (mode "
                f"{stat.S_IMODE(mode):04o}); refusing to use it. Run `chmod 600 {path}`.")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(65536)
    finally:
        os.close(fd)
    key = data.decode("utf-8", errors="replace").strip()
    if not key:
        raise ConfigError(f"api_key_file {path} is empty. Write the API key into it.")
    if not _header_safe(key):
        raise ConfigError(f"api_key_file {path} holds more than one line of printable ASCII, "
                          "which no HTTP header carries. Write the API key alone into it.")
    return key


def _header_safe(key: str) -> bool:
    return all("!" <= c <= "~" for c in key)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "folder"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _display_url(url: str) -> str:
    """host[:port]/path of an endpoint: never its query string (keys travel there sometimes)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{host}{parts.path.rstrip('/')}"


def _status_message(body: bytes) -> str:
    """The message of an error answer: its ``error.message`` when it is JSON, else its text."""
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", errors="replace").strip() or "no message"
    if isinstance(answer, dict):
        err = answer.get("error", answer)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(answer.get("message"), str):
            return str(answer["message"])
    return json.dumps(answer)


def _tries(attempts: int) -> str:
    return f"{attempts} attempt{'s' if attempts != 1 else ''}"


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
