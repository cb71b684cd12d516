"""Any endpoint that speaks the OpenAI embeddings API, through the official ``openai`` client.

The client does the HTTP and its own retries (408/409/429/5xx, connection errors and timeouts,
honouring ``Retry-After``); this adapter plans requests within the endpoint's limits, sends up to
``concurrency`` of them at once within a tokens-per-minute budget, checks every answer whole
(``answer.decode_answer``) and translates every failure into a ``kbguard.errors`` class.

The API key is read once, from the environment variable named by ``api_key_env`` or from
``api_key_file``, and is scrubbed from every message this module raises (servers do echo keys);
third-party exceptions are never chained, so no traceback carries their text.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from kbguard.embed import normalize
from kbguard.errors import (
    ConfigError,
    EmbedError,
    ProviderRejected,
    ProviderUnavailable,
)
from kbguard.providers.answer import decode_answer
from kbguard.providers.base import Embedded, Provider, Usage
from kbguard.providers.budget import TokenBudget, plan_batches
from kbguard.providers.settings import OpenAIProviderSettings
from kbguard.providers.tokens import count_cl100k

#: OpenAI's embedding models: native size, whether a request may ask for fewer dimensions
OPENAI_MODELS: dict[str, tuple[int, bool]] = {
    "text-embedding-3-small": (1536, True),
    "text-embedding-3-large": (3072, True),
    "text-embedding-ada-002": (1536, False),
}
#: the longest input OpenAI's embedding models read, in cl100k_base tokens
OPENAI_MAX_INPUT_TOKENS = 8191
_KEY_MARK = "[api key]"


class OpenAIProvider(Provider):
    """One OpenAI-compatible ``/v1/embeddings`` endpoint filling a space."""

    def __init__(self, space: Any, settings: OpenAIProviderSettings,
                 env: Mapping[str, str] | None = None):
        self.settings = settings
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
        native = OPENAI_MODELS.get(self.model.rsplit("/", 1)[-1])
        self._extra: dict[str, Any] = {}
        if native is not None:
            size, shortens = native
            if space.dim > size or (space.dim < size and not shortens):
                raise ConfigError(
                    f"Space {space.name!r} has dim = {space.dim} but {self.model} makes "
                    f"{size}-d vectors{' (and takes no `dimensions`)' if not shortens else ''}. "
                    f"Set dim = {size}" + (" or below" if shortens else "") + ".")
            if space.dim < size:
                self._extra["dimensions"] = space.dim
            self.max_input_tokens = OPENAI_MAX_INPUT_TOKENS
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
        try:
            import httpx2
            import openai
        except ImportError as exc:
            raise ProviderUnavailable("The `openai` package (3.x) is not installed: "
                                      "`pip install 'openai>=3,<4'`.") from exc
        self._openai = openai
        self._response_type = httpx2.Response
        self._client = openai.OpenAI(
            api_key=self._key or "no-key", base_url=settings.base_url,
            timeout=settings.timeout_s, max_retries=settings.max_retries)

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
        """One HTTP request (with the client's retries): valid vectors and its usage."""
        if self._key_error is not None:
            raise ProviderUnavailable(f"{self.name}: {self._key_error}")
        if self._budget is not None:
            self._budget.acquire(est_tokens)
        started = time.perf_counter()
        try:
            # The client's documented raw call: its retries and errors, without the typed
            # layer that walks every input string and parses the answer a second time.
            response = self._client.post(
                "/embeddings", cast_to=self._response_type,
                body={"input": batch, "model": self.model, "encoding_format": "base64",
                      **self._extra})
            body = response.content
        except self._openai.OpenAIError as exc:
            attempts = self._attempts(exc)
            self._spent(Usage(requests=attempts, seconds=time.perf_counter() - started))
            error = self._translate(exc, attempts)
            error.attempts = attempts  # type: ignore[attr-defined]  # the breaker counts each
            raise error from None
        retries = response.request.headers.get("x-stainless-retry-count", "0")
        requests = 1 + (int(retries) if retries.isdigit() else 0)
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

    def _cost(self, tokens: int) -> float:
        return tokens * self.settings.price_per_million_tokens / 1_000_000

    # -- errors ---------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, _KEY_MARK) if self._key else text

    def _attempts(self, exc: Exception) -> int:
        o = self._openai
        retried = isinstance(exc, (o.APIConnectionError, o.RateLimitError, o.InternalServerError))
        return 1 + self.settings.max_retries if retried else 1

    def _translate(self, exc: Exception, attempts: int) -> EmbedError:
        o, name, s = self._openai, self.name, self.settings
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(exc, o.APITimeoutError):
            return ProviderUnavailable(
                f"{name} did not answer within timeout_s = {s.timeout_s:g} s ({tries}). Check "
                "that the service is up, or raise timeout_s.")
        if isinstance(exc, o.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            why = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            return ProviderUnavailable(
                f"{name} cannot be reached ({_short(self._scrub(why))}; {tries}). Check "
                "base_url and that the service is up.")
        if isinstance(exc, o.APIStatusError):
            code = exc.status_code
            # scrubbed before shortening, so a cut can never leave part of a key behind
            msg = _short(self._scrub(_status_message(exc)))
            if isinstance(exc, o.RateLimitError):
                text = (f"{name} rate-limited the requests (HTTP 429: {msg}; {tries}). Lower "
                        "concurrency or set tokens_per_minute for this provider, or run again "
                        "later.")
                return ProviderUnavailable(self._scrub(text))
            if code >= 500:
                return ProviderUnavailable(self._scrub(
                    f"{name} failed (HTTP {code}: {msg}; {tries}). Run again when the service "
                    "is back."))
            if code in (401, 403):
                where = (f"the environment variable {s.api_key_env}" if s.api_key_env else
                         f"api_key_file {s.api_key_file}" if s.api_key_file else
                         "api_key_env (none is set for this provider)")
                return ProviderRejected(self._scrub(
                    f"{name} refused the API key (HTTP {code}: {msg}). Check the key in {where}."))
            return ProviderRejected(self._scrub(
                f"{name} refused the request (HTTP {code}: {msg}). Check model = "
                f"{self.model!r} and this provider's settings."))
        return ProviderUnavailable(f"{name} failed: {_short(self._scrub(str(exc)))}.")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._client.close()


def read_api_key(settings: OpenAIProviderSettings, env: Mapping[str, str]) -> str | None:
    """The key from the variable named by ``api_key_env`` or from ``api_key_file``; None when
    neither is set (endpoints that take no key, e.g. a local TEI)."""
    if settings.api_key_env:
        key = (env.get(settings.api_key_env) or "").strip()
        if not key:
            raise ProviderUnavailable(
                f"The environment variable {settings.api_key_env} (api_key_env) is not set or "
                "empty. Export the API key in it and run again.")
        return key
    if settings.api_key_file:
        path = Path(settings.api_key_file).expanduser()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ConfigError(f"api_key_file {path} cannot be read ({exc.strerror}). Point it at "
                              "a file holding the API key.") from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"api_key_file {path} is not a regular file.")
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
        return key
    return None


def _display_url(url: str) -> str:
    """host[:port]/path of an endpoint: never its query string (keys travel there sometimes)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{host}{parts.path.rstrip('/')}"


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(getattr(exc, "message", "") or exc)


def _short(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
