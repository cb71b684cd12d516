"""Providers against a real OpenAI-compatible HTTP server on 127.0.0.1 (tests/openai_server.py).

Every fault the server can inject is either retried or failed over as configured, and no invalid
vector ever comes back; breakers, chains, probe agreement, key handling and offline token counts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kbguard.config import SpaceConfig
from kbguard.errors import (
    ConfigError,
    InvalidAnswer,
    ProviderRejected,
    ProvidersDisagree,
    ProviderUnavailable,
    TextTooLong,
)
from kbguard.providers import (
    CircuitBreaker,
    Embedded,
    LocalProvider,
    OpenAIProvider,
    OpenAIProviderSettings,
    ProviderChain,
    build_chain,
    parse_provider_settings,
)
from kbguard.providers.answer import answer_cap
from kbguard.providers.budget import TokenBudget, plan_batches
from kbguard.providers.local import FakeEmbedder
from kbguard.providers.tokens import count_cl100k
from tests.kbtest import KB, make_kb, manifest_sql
from tests.openai_server import OpenAIServer

KEY = "sk-test-9f8e7d6c5b4a3210-SECRET"
SPACE = SpaceConfig(name="primary", provider="fake", model="text-embedding-3-small", dim=64)
TEXTS = ["how to rotate keys", "zebras have stripes", "tax forms are due in april",
         "the export button does nothing", "photosynthesis in plants"]
#: what a call may take past its timeout_s: closing the connection, a busy 2-core machine
MARGIN_S = 1.0


def expected(texts: list[str], space: SpaceConfig = SPACE) -> np.ndarray:
    return FakeEmbedder(space).embed_batch(texts)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    # the client honours proxy variables; a proxy set for the registries must not take these
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with OpenAIServer(api_key=KEY) as srv:
        yield srv


def timed(call: Callable[[], Any], limit: float) -> tuple[float, Any]:
    """Seconds ``call()`` took and what it returned or raised, run in a thread; the test fails
    when it takes longer than ``limit`` (the thread is left to the server's stop)."""
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["out"] = call()
        except Exception as exc:  # noqa: BLE001 - the error is the outcome the test checks
            box["out"] = exc
        box["took"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit} s"
    return box["took"], box["out"]


def provider(server: OpenAIServer, space: SpaceConfig = SPACE, *,
             sleep: Callable[[float], None] = time.sleep, **settings: object) -> OpenAIProvider:
    values: dict[str, object] = {"base_url": server.url, "api_key_env": "TEST_EMBED_KEY",
                                 "max_retries": 0, "timeout_s": 5}
    values.update(settings)
    return OpenAIProvider(space, OpenAIProviderSettings(**values),  # type: ignore[arg-type]
                          env={"TEST_EMBED_KEY": KEY}, sleep=sleep)


def chain(server: OpenAIServer, space: SpaceConfig = SPACE, *,
          clock: Callable[[], float] = time.monotonic, **settings: object) -> ProviderChain:
    """The server's provider with the same model's fake behind it; ``clock``: the breakers'."""
    fake = LocalProvider(FakeEmbedder(space), "fake:local")
    return ProviderChain(space, [provider(server, space, **settings), fake], clock=clock)


def recording(waits: list[float]) -> Callable[[float], None]:
    """A provider's ``sleep`` that waits for real (the deadline is real time) and notes each
    wait in ``waits``."""
    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)
    return sleep


# -- settings -----------------------------------------------------------------------------------

def test_settings_defaults_are_the_documented_ones() -> None:
    s = parse_provider_settings({"type": "openai", "api_key_env": "OPENAI_API_KEY"})
    assert (s.base_url, s.timeout_s, s.max_retries, s.concurrency, s.max_batch_texts,
            s.max_batch_tokens, s.tokens_per_minute, s.price_per_million_tokens, s.model) == (
        "https://api.openai.com/v1", 30, 2, 4, 256, 100_000, 0, 0.0, None)


@pytest.mark.parametrize("entry, key", [
    ({"max_batch_texts": 2049}, "max_batch_texts"),
    ({"max_batch_tokens": 300_001}, "max_batch_tokens"),
    ({"concurrency": 0}, "concurrency"),
    ({"timeout": 30}, "timeout"),
    ({"base_url": "ftp://example.org"}, "base_url"),
    ({"base_url": "https://user:pw@example.org/v1"}, "base_url"),
    ({"base_url": "https://example.org/v1?api-key=k"}, "base_url: must not have a query"),
    ({"base_url": "https://example.org/v1#k"}, "base_url: must not have a query"),
    ({"base_url": "https://example.org:port/v1"}, "base_url: must be an http"),
    ({"api_key_env": "A", "api_key_file": "k.txt"}, "not both"),
])
def test_bad_settings_name_the_key(entry: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_provider_settings({"type": "openai", **entry}, "space 'primary', provider 1")


@pytest.mark.parametrize("url", [
    "https://example.org/v1?api-key=sk-live-0123456789",
    "https://example.org/v1/?api-key=sk-live-0123456789",
    "https://example.org/v1#sk-live-0123456789",
    "https://me:sk-live-0123456789@example.org/v1",
    "https://sk-live-0123456789@example.org/v1",
])
def test_a_base_url_with_a_query_or_credentials_is_refused_and_never_repeated(
        url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="base_url: must not") as err:
        parse_provider_settings({"type": "openai", "base_url": url})
    assert "sk-live" not in "".join(traceback.format_exception(err.value))
    # and from a KB config, as a command sees it
    kb = make_kb(tmp_path, docs=1)
    text = kb.config_path.read_text()
    head, _, rest = text.partition("[[spaces]]")
    kb.config_path.write_text(head + f"""[[spaces]]
name = "primary"
model = "text-embedding-3-small"
dim = 64
[[spaces.providers]]
type = "openai"
base_url = "{url}"
""" + rest[rest.index("[store]"):])
    res = kb.cli("status")
    assert res.code == 2
    assert "spaces.providers.base_url (in [[spaces]] #1, [[spaces.providers]] #1): must not" \
        in res.stderr
    assert "sk-live" not in res.stdout + res.stderr


def test_a_key_pasted_into_api_key_env_is_refused_and_never_repeated() -> None:
    with pytest.raises(ConfigError, match="NAME of an environment variable") as err:
        parse_provider_settings({"type": "openai", "api_key_env": KEY})
    assert KEY not in str(err.value)
    assert "9f8e7d6c" not in "".join(traceback.format_exception(err.value))


def test_local_entries_and_unknown_types() -> None:
    assert parse_provider_settings({"type": "fake"}).type == "fake"
    st = parse_provider_settings({"type": "sentence-transformers", "model_path": "m"})
    assert st.model_path == Path("m")
    with pytest.raises(ConfigError, match="type"):
        parse_provider_settings({"type": "cohere"})


# -- token counting -----------------------------------------------------------------------------

def test_cl100k_counts_offline_with_nothing_downloaded(tmp_path: Path) -> None:
    # A fresh process, an empty tiktoken cache and every proxy pointing at a closed port: a
    # download attempt would fail, so a right answer proves the bundled file was used.
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    code = ("from kbguard.providers.tokens import cl100k, count_cl100k;"
            "print(cl100k().encode('hello world'), count_cl100k(['tiktoken is great!', '']))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[15339, 1917] [6, 0]"


def test_provider_counts_with_cl100k_and_knows_the_input_limit(server: OpenAIServer) -> None:
    p = provider(server)
    assert p.count_tokens(["hello world", "tiktoken is great!"]) == [2, 6]
    assert (p.max_input_tokens, p.exact_tokens) == (8191, True)


def test_a_text_over_the_input_limit_is_refused_before_sending(server: OpenAIServer) -> None:
    long_text = " ".join(["word"] * 9000)
    assert count_cl100k([long_text])[0] > 8191
    with pytest.raises(TextTooLong, match=r"Text 1 of the batch has 9000 tokens, over the 8191"):
        provider(server).embed(["short", long_text])
    with pytest.raises(TextTooLong):
        chain(server).embed(["short", long_text])  # a chunking error: no failover hides it
    assert server.embedding_requests == []


# -- answers ------------------------------------------------------------------------------------

def test_vectors_auth_dimensions_and_usage(server: OpenAIServer) -> None:
    p = provider(server, price_per_million_tokens=0.02)
    got = p.embed(TEXTS)
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)
    assert got.vectors.dtype == np.float32 and got.provider == p.name
    (req,) = server.embedding_requests
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body["dimensions"] == 64 and req.body["encoding_format"] == "base64"
    assert req.body["model"] == "text-embedding-3-small" and req.inputs == TEXTS
    words = sum(len(t.split()) for t in TEXTS)  # the server's usage, not the tiktoken count
    assert words != sum(p.count_tokens(TEXTS))
    assert (got.usage.texts, got.usage.tokens, got.usage.requests) == (5, words, 1)
    assert got.usage.cost_usd == pytest.approx(words * 0.02 / 1e6)
    assert p.usage_total.tokens == words and p.texts_embedded == 5


def test_without_usage_the_tokens_are_counted_with_cl100k(server: OpenAIServer) -> None:
    server.report_usage = False
    p = provider(server)
    assert p.embed(TEXTS).usage.tokens == sum(count_cl100k(TEXTS))


def test_float_answers_are_decoded_too(server: OpenAIServer) -> None:
    server.encoding = "float"
    np.testing.assert_allclose(provider(server).embed(TEXTS).vectors, expected(TEXTS), atol=1e-6)


def test_native_size_sends_no_dimensions_and_impossible_sizes_are_refused(
        server: OpenAIServer) -> None:
    full = SpaceConfig(name="primary", provider="fake", model="text-embedding-3-small", dim=1536)
    provider(server, full).embed(["one"])
    assert "dimensions" not in server.embedding_requests[-1].body
    with pytest.raises(ConfigError, match="takes no `dimensions`"):
        provider(server, SpaceConfig(name="p", provider="fake", model="text-embedding-ada-002", dim=64))
    with pytest.raises(ConfigError, match=r"makes 3072-d vectors.*Set dim = 3072 or below"):
        provider(server, SpaceConfig(name="p", provider="fake", model="text-embedding-3-large", dim=4096))


def test_an_empty_call_sends_nothing(server: OpenAIServer) -> None:
    assert provider(server).embed([]).vectors.shape == (0, 64)
    assert server.embedding_requests == []


def test_batches_follow_the_limits_and_keep_the_order(server: OpenAIServer) -> None:
    texts = [f"text number {i} " + "x " * (i % 5) for i in range(23)]
    p = provider(server, max_batch_texts=4, concurrency=1)
    np.testing.assert_allclose(p.embed(texts).vectors, expected(texts), atol=1e-6)
    sizes = [len(r.inputs) for r in server.embedding_requests]
    assert sizes == [4, 4, 4, 4, 4, 3]
    counts = count_cl100k(texts)
    server.requests.clear()
    provider(server, max_batch_tokens=20).embed(texts)
    for r in server.embedding_requests:
        assert sum(count_cl100k(r.inputs)) <= 20
    assert sum(len(r.inputs) for r in server.embedding_requests) == len(texts) == len(counts)


def test_concurrency_bounds_requests_in_flight(server: OpenAIServer) -> None:
    server.latency_s = 0.15
    texts = [f"text {i}" for i in range(24)]
    p = provider(server, max_batch_texts=2, concurrency=4)
    t = time.perf_counter()
    got = p.embed(texts)
    took = time.perf_counter() - t
    np.testing.assert_allclose(got.vectors, expected(texts), atol=1e-6)
    assert server.max_in_flight == 4
    assert got.usage.requests == 12
    assert took < 12 * 0.15 / 2  # 3 rounds of 4, not 12 in a row
    p.close()


def test_plan_batches() -> None:
    assert plan_batches([1, 1, 1, 1, 1], 2, 100) == [(0, 2), (2, 4), (4, 5)]
    assert plan_batches([5, 5, 50, 1], 10, 10) == [(0, 2), (2, 3), (3, 4)]
    assert plan_batches([], 3, 3) == []


def test_token_budget_waits_for_the_window() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    budget = TokenBudget(100, clock=lambda: now[0], sleep=sleep)
    budget.acquire(60)
    now[0] = 10.0
    budget.acquire(40)
    assert slept == []
    budget.acquire(30)  # the 60 from t=0 must leave the window first
    assert slept == [50.0] and now[0] == 60.0
    budget.acquire(500)  # larger than the budget: waits for an empty window, then goes alone
    assert now[0] == 120.0


def test_tokens_per_minute_caps_the_batch_size(server: OpenAIServer) -> None:
    texts = ["one two three four five"] * 6
    provider(server, tokens_per_minute=12).embed(texts[:2])
    assert [len(r.inputs) for r in server.embedding_requests] == [2]
    assert provider(server, tokens_per_minute=12)._max_tokens == 12


# -- faults: retried, failed over, never a bad vector -------------------------------------------

FAULTS_THAT_FAIL = [
    ("status", {"code": 500}, ProviderUnavailable, "HTTP 500"),
    ("status", {"code": 503}, ProviderUnavailable, "HTTP 503"),
    ("rate_limit", {"retry_after": "0"}, ProviderUnavailable, "HTTP 429"),
    ("drop", {}, ProviderUnavailable, "cannot be reached"),
    ("malformed", {}, InvalidAnswer, "malformed JSON"),
    ("error_body", {}, ProviderUnavailable, "HTTP 200 with an error: Rate limit reached"),
    ("wrong_count", {}, InvalidAnswer, "4 vectors for 5 texts"),
    ("wrong_dim", {}, InvalidAnswer, "63-d vector"),
    ("nan", {}, InvalidAnswer, "NaN or infinite"),
    ("nan", {"value": float("inf")}, InvalidAnswer, "NaN or infinite"),
    ("zero", {}, InvalidAnswer, "all-zero vector"),
    ("bad_index", {}, InvalidAnswer, "index 0 twice and without index 1"),
]


@pytest.mark.parametrize("kind, params, error, message", FAULTS_THAT_FAIL,
                         ids=[f"{k}-{p}" for k, p, *_ in FAULTS_THAT_FAIL])
def test_each_fault_is_an_error_alone_and_a_failover_in_a_chain(
        server: OpenAIServer, kind: str, params: dict[str, object], error: type[Exception],
        message: str) -> None:
    server.fail(kind, **params)
    with pytest.raises(error, match=message):
        provider(server).embed(TEXTS)
    ch = chain(server)
    ch.check_agreement()
    server.fail(kind, **params)
    got = ch.embed(TEXTS)
    assert got.provider == "fake:local" and got.provider_index == 1
    assert [f.provider_index for f in got.failovers] == [0]
    assert message in got.failovers[0].reason
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)
    assert server.embedding_requests[-1].fault == kind


def test_shuffled_indices_are_put_back_in_order(server: OpenAIServer) -> None:
    server.fail("shuffled")
    got = provider(server).embed(TEXTS)
    assert server.embedding_requests[-1].fault == "shuffled"
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)


@pytest.mark.parametrize("kind, params", [
    ("status", {"code": 500, "retry_after_ms": 10}),
    ("status", {"code": 503, "retry_after_ms": 10}),
    ("rate_limit", {"retry_after": "0.05"}),
    ("drop", {}),
])
def test_passing_faults_are_retried(server: OpenAIServer, kind: str,
                                                  params: dict[str, object]) -> None:
    server.fail(kind, times=1, **params)
    p = provider(server, max_retries=2, timeout_s=3)
    got = p.embed(TEXTS)
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)
    assert [r.fault for r in server.embedding_requests] == [kind, None]
    assert got.usage.requests == 2


def test_retries_beyond_the_budget_fail(server: OpenAIServer) -> None:
    server.fail("status", times=3, code=503, retry_after_ms=10)
    with pytest.raises(ProviderUnavailable, match=r"HTTP 503: injected 503; 3 attempts\)"):
        provider(server, max_retries=2).embed(TEXTS)
    assert len(server.embedding_requests) == 3


@pytest.mark.parametrize("header", ["seconds", "date"])
def test_429_waits_as_retry_after_says(server: OpenAIServer, header: str) -> None:
    if header == "seconds":
        server.fail("rate_limit", retry_after="1")
    else:
        server.fail("rate_limit", retry_after_date=2)  # an HTTP date: 1-2 s ahead (whole seconds)
    provider(server, max_retries=1).embed(TEXTS)
    first, second = server.embedding_requests
    assert first.fault == "rate_limit" and second.fault is None
    assert 0.9 <= second.at - first.at < 3.0


def test_a_hang_spends_the_deadline_and_is_not_retried(server: OpenAIServer) -> None:
    server.fail("hang", times=2, seconds=5)
    t = time.perf_counter()
    with pytest.raises(ProviderUnavailable,
                       match=r"did not answer within timeout_s = 0.3 s \(1 attempt\)") as err:
        provider(server, timeout_s=0.3, max_retries=1).embed(TEXTS)
    assert time.perf_counter() - t < 0.3 + MARGIN_S
    assert err.value.attempts == 2  # type: ignore[attr-defined]  # all it had: the breaker opens
    assert len(server.embedding_requests) == 1


def test_a_slow_answer_within_the_timeout_is_used(server: OpenAIServer) -> None:
    server.fail("slow", seconds=0.3)
    got = provider(server, timeout_s=2).embed(TEXTS)
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)


def test_a_failed_call_with_concurrency_returns_nothing(server: OpenAIServer) -> None:
    texts = [f"t{i}" for i in range(12)]
    server.fail("nan")
    with pytest.raises(InvalidAnswer):
        provider(server, max_batch_texts=3, concurrency=4).embed(texts)


# -- one deadline per request: a hanging or trickling endpoint costs timeout_s, once --------

SLOW_FAULTS = [("hang", {"seconds": 60}), ("trickle", {"interval": 0.2}),
               ("trickle", {"interval": 0.2, "headers": True})]
SLOW_IDS = ["hang", "trickle", "trickle-headers"]


@pytest.mark.parametrize("kind, params", SLOW_FAULTS, ids=SLOW_IDS)
def test_a_hanging_or_trickling_primary_fails_over_within_timeout_s(
        server: OpenAIServer, kind: str, params: dict[str, object]) -> None:
    # retries too fit in the deadline; the breaker's clock stands still: once open it stays open
    ch = chain(server, timeout_s=1.5, max_retries=2, clock=lambda: 0.0)
    ch.check_agreement()
    server.fail(kind, times=100, **params)
    took, got = timed(lambda: ch.embed(TEXTS), limit=30)
    assert isinstance(got, Embedded), got
    assert got.provider == "fake:local" and took < 1.5 + MARGIN_S, took
    assert "did not answer within timeout_s = 1.5 s (1 attempt" in got.failovers[0].reason
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)
    # the call spent what the provider had: its breaker opens, the next batch does not wait
    assert ch.breakers[0].state == "open"
    asked = len(server.embedding_requests)
    _, got = timed(lambda: ch.embed(TEXTS), limit=5)
    assert got.provider == "fake:local" and got.failovers[0].reason.startswith("circuit open")
    assert len(server.embedding_requests) == asked   # the primary was not asked at all
    if kind == "trickle":
        (slow,) = [r for r in server.embedding_requests if r.fault]
        assert 0 < slow.sent <= 1.5 / 0.2 + 2  # cut off, not read to the end


def test_a_trickled_answer_says_how_much_had_arrived(server: OpenAIServer) -> None:
    server.fail("trickle", interval=0.1)
    took, err = timed(lambda: provider(server, timeout_s=1).embed(TEXTS), limit=30)
    assert isinstance(err, ProviderUnavailable) and took < 1 + MARGIN_S
    assert "did not answer within timeout_s = 1 s (1 attempt; " in str(err)
    assert " bytes of its answer had arrived)" in str(err)


def test_a_retry_that_would_start_past_the_deadline_is_not_waited_for(
        server: OpenAIServer) -> None:
    server.fail("rate_limit", times=5, retry_after="5")
    waits: list[float] = []
    _, err = timed(lambda: provider(server, timeout_s=1, max_retries=2,
                                    sleep=recording(waits)).embed(TEXTS), limit=30)
    assert isinstance(err, ProviderUnavailable) and waits == [], (waits, err)
    assert ("HTTP 429: Rate limit reached for requests; 1 attempt; the retry due in 5 s would "
            "start past timeout_s = 1 s)") in str(err)
    assert err.attempts == 3  # type: ignore[attr-defined]
    assert len(server.embedding_requests) == 1


def test_backoffs_count_against_the_deadline(server: OpenAIServer) -> None:
    # no Retry-After: waits of 0.5 s, 1 s, 2 s ..., each up to a quarter shorter
    server.fail("status", times=10, code=503)
    waits: list[float] = []
    _, err = timed(lambda: provider(server, timeout_s=1, max_retries=10,
                                    sleep=recording(waits)).embed(TEXTS), limit=30)
    assert isinstance(err, ProviderUnavailable), err
    # the first wait (0.375-0.5 s) fits; after it the second (0.75-1 s) would end past 1 s
    assert len(waits) == 1 and 0.375 <= waits[0] <= 0.5, waits
    assert "HTTP 503" in str(err) and "would start past timeout_s = 1 s" in str(err)
    assert len(server.embedding_requests) == 2


@pytest.mark.slow
@pytest.mark.parametrize("kind, params", SLOW_FAULTS[:2], ids=SLOW_IDS[:2])
def test_with_default_settings_a_hanging_primary_costs_timeout_s_once(
        server: OpenAIServer, kind: str, params: dict[str, object]) -> None:
    defaults = OpenAIProviderSettings(base_url=server.url, api_key_env="TEST_EMBED_KEY")
    primary = OpenAIProvider(SPACE, defaults, env={"TEST_EMBED_KEY": KEY})
    ch = ProviderChain(SPACE, [primary, LocalProvider(FakeEmbedder(SPACE), "fake:local")],
                       clock=lambda: 0.0)   # the breaker, once open, stays open
    ch.check_agreement()
    server.fail(kind, times=100, **{**params, "seconds": 120, "interval": 1.0})
    took, got = timed(lambda: ch.embed(TEXTS), limit=120)
    assert isinstance(got, Embedded) and got.provider == "fake:local", got
    assert took < defaults.timeout_s + MARGIN_S, took
    asked = len(server.embedding_requests)
    _, got = timed(lambda: ch.embed(TEXTS), limit=5)
    assert got.provider == "fake:local" and got.failovers[0].reason.startswith("circuit open")
    assert len(server.embedding_requests) == asked


def _chain_kb(root: Path, url: str, timeout_s: float) -> KB:
    """A KB whose one space is filled by the server, with the same model's fake behind it."""
    kb = make_kb(root, docs=2)
    text = kb.config_path.read_text()
    head, _, rest = text.partition("[[spaces]]")
    kb.config_path.write_text(head + f"""[[spaces]]
name = "primary"
model = "{SPACE.model}"
dim = 64
batch_size = 8
[[spaces.providers]]
type = "openai"
base_url = "{url}"
api_key_env = "KBG_TEST_EMBED_KEY"
timeout_s = {timeout_s}
[[spaces.providers]]
type = "fake"
model = "{SPACE.model}"
""" + rest[rest.index("[store]"):])
    return kb


@pytest.mark.slow
def test_rebuild_verify_and_repair_fail_over_from_a_trickling_primary(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb = _chain_kb(tmp_path, server.url, timeout_s=1.5)
    server.fail("trickle", times=10_000, interval=0.2)  # every answer would take minutes

    def run(*args: str) -> dict:
        res = kb.subprocess(*args, "--json", env={"KBG_TEST_EMBED_KEY": KEY}, timeout=120)
        assert res.returncode == 0, (args, res.stdout, res.stderr)
        return json.loads(res.stdout)

    built = run("rebuild")
    assert list(built["spaces"]["primary"]["providers"]) == [f"fake:{SPACE.model}"]
    checked = run("verify", "--sample", "4")
    assert checked["sampled"] == 4
    # a damaged cache row: repair re-embeds it
    [(blob, h)] = manifest_sql(kb.cfg.manifest,
                               "SELECT vector, content_hash FROM embeddings LIMIT 1")
    manifest_sql(kb.cfg.manifest, "UPDATE embeddings SET vector = ? WHERE content_hash = ?",
                 [bytes([blob[0] ^ 1]) + bytes(blob[1:]), h], write=True)
    repaired = run("verify", "--repair")
    assert repaired["repair"]["actions"]["cache_rows_replaced"] == 1
    # each command paid for the primary once: its probe, cut at the deadline
    assert [r.fault for r in server.embedding_requests] == ["trickle"] * 3


# -- an answer is never larger than its batch can need ------------------------------------------

def _peak_while(call: Callable[[], Any]) -> tuple[Any, int]:
    """What ``call()`` returned or raised, and the peak of memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        try:
            out = call()
        except Exception as exc:  # noqa: BLE001 - the error is the outcome the test checks
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_huge_answer_is_cut_at_the_cap(server: OpenAIServer, chunked: bool) -> None:
    size = 256 << 20
    cap = answer_cap(len(TEXTS), SPACE.dim)
    server.fail("huge", size=size, chunked=chunked)
    err, peak = _peak_while(lambda: provider(server).embed(TEXTS))
    (req,) = server.embedding_requests
    time.sleep(0.2)  # the server notices the closed connection
    # what it could send: the cap and what the sockets' buffers held, not the 256 MB
    assert req.sent < cap + (16 << 20), req.sent
    assert peak < 16 << 20, peak
    assert isinstance(err, InvalidAnswer), err
    assert f"past the {cap:,} such an answer can need; reading stopped there" in str(err)


def test_a_gzip_bomb_is_stopped_after_the_cap_of_inflated_bytes(server: OpenAIServer) -> None:
    cap = answer_cap(len(TEXTS), SPACE.dim)
    server.fail("gzip_bomb", size=512 << 20)
    err, peak = _peak_while(lambda: provider(server).embed(TEXTS))
    assert peak < 16 << 20, peak  # inflated: 512 MiB; read: about the cap
    assert isinstance(err, InvalidAnswer), err
    assert f"answered with more than {cap:,} bytes for 5 texts of 64 dimensions" in str(err)


@pytest.mark.parametrize("kind", ["huge", "gzip_bomb"])
def test_an_oversized_answer_fails_over_and_nothing_of_it_is_used(
        server: OpenAIServer, kind: str) -> None:
    ch = chain(server)
    ch.check_agreement()
    server.fail(kind, size=64 << 20)
    got = ch.embed(TEXTS)
    assert got.provider == "fake:local" and "reading stopped there" in got.failovers[0].reason
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)


def test_the_cap_leaves_room_for_a_full_answer_in_json_numbers(server: OpenAIServer) -> None:
    server.encoding = "float"  # an endpoint that ignores encoding_format: the longer encoding
    full = SpaceConfig(name="primary", provider="fake", model="text-embedding-3-large", dim=3072)
    texts = [f"text {i}" for i in range(64)]
    got = provider(server, full).embed(texts)
    np.testing.assert_allclose(got.vectors, expected(texts, full), atol=1e-6)


# -- a request carries what its entry configures, nothing from the environment --------------

#: every header a request is sent with; Authorization only with a configured key
REQUEST_HEADERS = {"host", "accept", "accept-encoding", "content-type", "content-length",
                   "user-agent", "authorization"}


def test_nothing_from_the_environment_goes_into_a_request(
        server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    leaks = {"OPENAI_ORG_ID": "org-env-leak", "OPENAI_PROJECT_ID": "proj-env-leak",
             "OPENAI_CUSTOM_HEADERS": "X-Env-Leak: custom-env-leak\nAuthorization: Bearer "
                                      "custom-env-key",
             "OPENAI_API_KEY": "sk-env-openai-key", "OPENAI_ADMIN_KEY": "sk-env-admin-key",
             "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_WEBHOOK_SECRET": "whsec-env"}
    for name, value in leaks.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TEST_EMBED_KEY", KEY)
    with_key = OpenAIProvider(SPACE, OpenAIProviderSettings(
        base_url=server.url, api_key_env="TEST_EMBED_KEY", max_retries=0))
    without = OpenAIProvider(SPACE, OpenAIProviderSettings(base_url=server.url, max_retries=0))
    with_key.embed(TEXTS)
    with pytest.raises(ProviderRejected, match="HTTP 401"):  # the server wants a key
        without.embed(TEXTS)
    keyed, bare = server.embedding_requests  # both came here, not to OPENAI_BASE_URL
    assert keyed.headers["authorization"] == f"Bearer {KEY}"
    assert "authorization" not in bare.headers
    for req in (keyed, bare):
        assert set(req.headers) <= REQUEST_HEADERS, set(req.headers) - REQUEST_HEADERS
        sent = json.dumps(req.headers) + json.dumps(req.body)
        for value in ("env-leak", "env-key", "env-openai", "env-admin", "whsec"):
            assert value not in sent


def test_the_proxy_the_environment_names_is_used(
        server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # the server stands in for a proxy to itself: a request through it arrives in absolute form
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.port}")
    provider(server).embed(TEXTS)
    assert server.embedding_requests[-1].path == f"{server.url}/embeddings"
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    provider(server).embed(TEXTS)
    assert server.embedding_requests[-1].path == "/v1/embeddings"


def test_a_redirect_is_not_followed(server: OpenAIServer) -> None:
    server.fail("status", code=307)
    with pytest.raises(ProviderRejected, match=r"answered with a redirect \(HTTP 307\), which "
                                               r"is not followed"):
        provider(server).embed(TEXTS)
    assert len(server.embedding_requests) == 1


@pytest.mark.parametrize("url, warned", [
    ("http://192.0.2.10:8080/v1", True), ("http://tei.internal/v1", True),
    ("https://192.0.2.10/v1", False), ("http://127.0.0.1:8080/v1", False),
    ("http://localhost:8080/v1", False), ("http://[::1]:8080/v1", False)])
def test_a_key_sent_in_clear_to_another_machine_is_warned_about(
        url: str, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kbguard")
    OpenAIProvider(SPACE, OpenAIProviderSettings(base_url=url, api_key_env="K"), env={"K": KEY})
    OpenAIProvider(SPACE, OpenAIProviderSettings(base_url=url), env={})  # no key: no warning
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == int(warned), messages
    if warned:
        assert messages[0].startswith("Warning: the key in K is sent over plain http to ")
        assert KEY not in messages[0]


def test_the_warning_goes_to_stderr_and_json_stays_clean(tmp_path: Path) -> None:
    # 192.0.2.10 (TEST-NET-1) answers nobody: the fake behind it fills the space
    kb = _chain_kb(tmp_path, "http://192.0.2.10:9/v1", timeout_s=0.5)
    res = kb.subprocess("rebuild", "--json", env={"KBG_TEST_EMBED_KEY": KEY}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["spaces"]["primary"]["coverage"] == 1.0
    assert ("Warning: the key in KBG_TEST_EMBED_KEY is sent over plain http to 192.0.2.10, "
            "which is not this machine") in res.stderr
    assert KEY not in res.stdout + res.stderr


# -- circuit breaker ----------------------------------------------------------------------------

def test_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=2, cooldown_s=10, clock=lambda: now[0])
    assert b.state == "closed" and b.allow()
    b.record_failure()
    assert b.state == "closed" and b.allow()
    b.record_success()
    b.record_failure()
    b.record_failure()  # two in a row
    assert b.state == "open" and not b.allow()
    now[0] = 9.9
    assert not b.allow() and b.retry_in() == pytest.approx(0.1)
    now[0] = 10.0
    assert b.allow()          # the one trial call
    assert not b.allow()      # no second while it is out
    b.record_failure()        # the trial failed: open again, a fresh cooldown
    assert b.state == "open" and not b.allow()
    now[0] = 20.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_breaker_counts_the_requests_of_a_retried_call() -> None:
    b = CircuitBreaker(failure_threshold=3, cooldown_s=1, clock=lambda: 0.0)
    b.record_failure(attempts=2)
    assert b.state == "closed"
    b.record_failure()
    assert b.state == "open"


def test_breaker_release_frees_the_trial() -> None:
    now = [0.0]
    b = CircuitBreaker(failure_threshold=1, cooldown_s=1, clock=lambda: now[0])
    b.record_failure()
    now[0] = 1.0
    assert b.allow() and not b.allow()
    b.release()
    assert b.allow()


# -- chains -------------------------------------------------------------------------------------

def test_chain_fails_over_when_the_primary_is_killed_and_the_breaker_skips_it(
        server: OpenAIServer) -> None:
    now = [0.0]
    primary = provider(server)
    fake = LocalProvider(FakeEmbedder(SPACE), "fake:local")
    ch = ProviderChain(SPACE, [primary, fake], failure_threshold=2, cooldown_s=30,
                       clock=lambda: now[0])
    assert ch.embed(TEXTS).provider == primary.name
    server.stop()
    for _ in range(2):
        got = ch.embed(TEXTS)
        assert got.provider == "fake:local"
        assert "cannot be reached" in got.failovers[0].reason
    assert ch.breakers[0].state == "open"
    got = ch.embed(TEXTS)   # the breaker answers: the primary is not called
    assert got.failovers[0].reason.startswith("circuit open after 2 consecutive failed requests")
    np.testing.assert_allclose(got.vectors, expected(TEXTS), atol=1e-6)


def test_after_the_cooldown_a_recovered_primary_serves_again(server: OpenAIServer) -> None:
    now = [0.0]
    ch = ProviderChain(SPACE, [provider(server), LocalProvider(FakeEmbedder(SPACE), "fake")],
                       failure_threshold=1, cooldown_s=30, clock=lambda: now[0])
    ch.check_agreement()
    server.fail("status", code=503)
    assert ch.embed(TEXTS).provider == "fake"
    n = len(server.embedding_requests)
    assert ch.embed(TEXTS).provider == "fake"
    assert len(server.embedding_requests) == n  # open: not even tried
    now[0] = 31.0
    got = ch.embed(TEXTS)
    assert got.provider_index == 0 and ch.breakers[0].state == "closed"


def test_one_call_that_exhausted_its_retries_opens_the_breaker(server: OpenAIServer) -> None:
    # default threshold 3 = the three requests of one call with the default 2 retries: a
    # provider that hangs costs its timeouts once, not on every batch
    ch = ProviderChain(SPACE, [provider(server, max_retries=2),
                               LocalProvider(FakeEmbedder(SPACE), "fake")])
    ch.check_agreement()
    server.fail("status", times=3, code=503, retry_after_ms=10)
    assert ch.embed(TEXTS).provider == "fake"
    assert ch.breakers[0].state == "open"
    n = len(server.embedding_requests)
    assert ch.embed(TEXTS).provider == "fake" and len(server.embedding_requests) == n


def test_every_provider_down_names_each_reason(server: OpenAIServer) -> None:
    other = OpenAIServer(api_key=KEY).start()
    try:
        ch = ProviderChain(SPACE, [provider(server), provider(other)])
        server.fail("status", times=10, code=500)
        other.fail("wrong_count", times=10)
        with pytest.raises(ProviderUnavailable) as err:
            ch.embed(TEXTS)
        text = str(err.value)
        assert "No provider of space 'primary' could embed the texts" in text
        # the first use probes both (8 texts) before their first vectors are used
        assert "HTTP 500" in text and "answered with 7 vectors for 8 texts" in text
    finally:
        other.stop()


def test_a_chain_of_providers_that_disagree_is_refused(server: OpenAIServer) -> None:
    server.variant = 1  # another "model": the same texts, different vectors
    ch = chain(server)
    with pytest.raises(ProvidersDisagree, match=r"make different vectors for the same probe text "
                                                r"\(cosine -?0\.\d+, at least 0.999"):
        ch.embed(TEXTS)
    with pytest.raises(ProvidersDisagree):  # and it stays refused
        ch.embed(TEXTS)


def test_a_provider_down_at_first_use_is_probed_before_its_vectors_are_used(
        server: OpenAIServer) -> None:
    now = [0.0]
    server.variant = 1
    server.fail("status", code=503)
    ch = ProviderChain(SPACE, [provider(server), LocalProvider(FakeEmbedder(SPACE), "fake")],
                       failure_threshold=1, cooldown_s=5, clock=lambda: now[0])
    assert ch.embed(TEXTS).provider == "fake"  # the primary failed its probe: fake is reference
    now[0] = 6.0
    with pytest.raises(ProvidersDisagree):
        ch.embed(TEXTS)


def test_agreeing_providers_pass_the_probe(server: OpenAIServer) -> None:
    ch = chain(server)
    assert ch.check_agreement() == {ch.providers[0].name: 1.0, "fake:local": pytest.approx(1.0)}
    probes = [r for r in server.embedding_requests if len(r.inputs) == 8]
    assert len(probes) == 1


def test_the_chain_is_a_drop_in_embedder(server: OpenAIServer) -> None:
    ch = build_chain(SPACE, [{"type": "openai", "base_url": server.url,
                              "api_key_env": "TEST_EMBED_KEY"}, {"type": "fake"}],
                     env={"TEST_EMBED_KEY": KEY})
    vecs = ch.embed_batch(TEXTS)
    assert vecs.shape == (5, 64) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-6)
    assert ch.count_tokens(["hello world"]) == [2] and ch.max_input_tokens == 8191
    assert ch.texts_embedded == 5
    assert ch.usage_total.texts == 5 + 2 * 8  # the batch and both probes


# -- secrets ------------------------------------------------------------------------------------

def test_a_refused_key_is_never_repeated(server: OpenAIServer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-0123456789abcdef-SECRET"
    p = OpenAIProvider(SPACE, OpenAIProviderSettings(base_url=server.url, api_key_env="K",
                                                     max_retries=0), env={"K": wrong})
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ProviderRejected, match=r"refused the API key \(HTTP 401") as err:
        p.embed(TEXTS)
    assert server.embedding_requests[-1].headers["authorization"] == f"Bearer {wrong}"
    shown = "".join(traceback.format_exception(err.value)) + repr(p) + caplog.text
    assert "Incorrect API key provided: [api key]" in str(err.value)
    assert wrong not in shown and "0123456789abcdef" not in shown
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_a_key_in_an_error_body_is_scrubbed(server: OpenAIServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ch = chain(server)
    ch.check_agreement()
    server.fail("error_body", message=f"quota exceeded for key {KEY}")
    got = ch.embed(TEXTS)
    reason = got.failovers[0].reason
    assert "quota exceeded for key [api key]" in reason
    assert KEY not in reason + repr(ch) + repr(ch.providers[0]) + caplog.text


def test_key_from_a_private_file_and_refused_from_an_open_one(server: OpenAIServer,
                                                              tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    settings = OpenAIProviderSettings(base_url=server.url, api_key_file=key_file, max_retries=0)
    with pytest.raises(ConfigError, match=r"open to group or others \(mode 0644\).*chmod 600"):
        OpenAIProvider(SPACE, settings)
    key_file.chmod(0o600)
    OpenAIProvider(SPACE, settings).embed(TEXTS)
    assert server.embedding_requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_a_key_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo, 0o600)
    settings = OpenAIProviderSettings(base_url="https://example.org/v1", api_key_file=fifo)
    try:
        took, err = timed(lambda: OpenAIProvider(SPACE, settings), limit=5)
    finally:
        # a reader still waiting for a writer gets one, and its end of file
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert isinstance(err, ConfigError), err
    assert str(err) == (f"api_key_file {fifo} is not a regular file (it is a FIFO). Point it "
                        "at a file holding the API key.")
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("key", ["sk-one\nsk-two", "sk-ключ"])
def test_a_key_no_header_can_carry_is_refused(tmp_path: Path, key: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    with pytest.raises(ConfigError, match="more than one line of printable ASCII"):
        OpenAIProvider(SPACE, OpenAIProviderSettings(api_key_file=key_file))
    p = OpenAIProvider(SPACE, OpenAIProviderSettings(api_key_env="K"), env={"K": key})
    with pytest.raises(ProviderUnavailable, match="characters no HTTP header carries"):
        p.embed(TEXTS)


def test_a_missing_key_variable_fails_over_and_says_which(server: OpenAIServer) -> None:
    p = OpenAIProvider(SPACE, OpenAIProviderSettings(base_url=server.url,
                                                     api_key_env="NO_SUCH_VAR"), env={})
    with pytest.raises(ProviderUnavailable, match="NO_SUCH_VAR .api_key_env. is not set"):
        p.embed(TEXTS)
    ch = ProviderChain(SPACE, [p, LocalProvider(FakeEmbedder(SPACE), "fake")])
    got = ch.embed(TEXTS)
    assert got.provider == "fake" and "NO_SUCH_VAR" in got.failovers[0].reason
    assert server.embedding_requests == []


def test_build_chain_names_the_bad_entry(server: OpenAIServer) -> None:
    with pytest.raises(ConfigError, match=r"space 'primary', provider 2: timeout: Extra inputs"):
        build_chain(SPACE, [{"type": "openai", "base_url": server.url},
                            {"type": "fake", "timeout": 3}])


def test_a_chain_counts_with_the_model_s_own_tokenizer(server: OpenAIServer) -> None:
    # an open model behind an OpenAI-compatible endpoint, the same model locally last: chunks
    # are measured with the local tokenizer (exact), not with cl100k_base (an estimate)
    space = SpaceConfig(name="local", provider="sentence-transformers", model="all-MiniLM-L6-v2", dim=384)
    ch = build_chain(space, [{"type": "openai", "base_url": server.url},
                             {"type": "sentence-transformers"}])
    assert not ch.providers[0].exact_tokens and ch.exact_tokens
    assert ch.max_input_tokens == 254
    assert ch.count_tokens(["Django's QuerySet API is lazy."]) == \
        ch.providers[1].count_tokens(["Django's QuerySet API is lazy."])
