"""A space's providers in order: the first healthy one embeds, the others stand by.

A call goes to the first provider whose circuit breaker lets it through; on any failure a
provider can have (unreachable, timed out, 5xx, 429 after its retries, a refused
request, an invalid answer) the next one gets the same texts. The answer says which provider made
the vectors and which ones were passed over and why.

Providers share a space only when they make the same vectors. On first use every reachable
provider embeds a fixed probe set, and the chain refuses to embed (``ProvidersDisagree``) when
any two are further apart than ``min_probe_cosine``; a provider that was down then is probed
before its first vectors are used.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from kbguard.config import SpaceConfig
from kbguard.errors import (
    EmbedError,
    ProvidersDisagree,
    ProviderUnavailable,
    TextTooLong,
)
from kbguard.providers.base import Embedded, Failover, Provider, Usage, normalize
from kbguard.providers.breaker import CircuitBreaker

#: short texts of different kinds: two different models disagree on them by far more than
#: numeric noise, two copies of one model (on different hardware or runtimes) agree closely
PROBE_TEXTS: tuple[str, ...] = (
    "How do I rotate the API keys without downtime?",
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Die Katze schläft auf dem warmen Fensterbrett.",
    "Quarterly revenue grew 12% year over year, driven by subscriptions.",
    "ERROR 2026-11-29T10:15:00Z connection reset by peer (errno 104)",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "Ticket #4821: the export button does nothing in Safari 18.",
)
MIN_PROBE_COSINE = 0.999


class ProviderChain(Provider):
    """Embeds with the first healthy provider of ``providers``; see the module docstring."""

    def __init__(self, space: SpaceConfig, providers: Sequence[Provider], *,
                 failure_threshold: int = 3, cooldown_s: float = 30.0,
                 min_probe_cosine: float = MIN_PROBE_COSINE,
                 probe_texts: Sequence[str] = PROBE_TEXTS, probe_on_first_use: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        if not providers:
            raise ValueError("a provider chain needs at least one provider")
        super().__init__(space, f"chain:{space.name}")
        self.providers = list(providers)
        self.breakers = [CircuitBreaker(failure_threshold, cooldown_s, clock) for _ in providers]
        self.min_probe_cosine = min_probe_cosine
        self.probe_texts = tuple(probe_texts)
        self.probe_on_first_use = probe_on_first_use
        #: min cosine of each probed provider's probe vectors against the reference
        self.agreement: dict[str, float] = {}
        self._probe_lock = threading.Lock()
        self._reference: np.ndarray | None = None
        self._reference_from = ""
        self._agreed: set[int] = set() if len(self.providers) > 1 else {0}
        self._probed = len(self.providers) == 1
        self._refused: ProvidersDisagree | None = None
        # Chunking must fit the model: count with the first provider that counts exactly.
        self._counter = next((p for p in self.providers if p.exact_tokens), self.providers[0])
        self.exact_tokens = self._counter.exact_tokens
        self.enforces_limit = self._counter.enforces_limit
        self.max_input_tokens = self._counter.max_input_tokens

    def __repr__(self) -> str:
        return f"ProviderChain({self.space.name!r}, [{', '.join(p.name for p in self.providers)}])"

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._counter.count_tokens(texts)

    @property
    def usage_total(self) -> Usage:
        """What every provider of the chain was paid for, probes included."""
        total = Usage()
        for p in self.providers:
            total = total + p.usage_total
        return total

    def close(self) -> None:
        for p in self.providers:
            p.close()

    # -- embedding ------------------------------------------------------------------------
    def _embed_texts(self, texts: list[str]) -> Embedded:
        if self._refused is not None:
            raise ProvidersDisagree(str(self._refused))
        # A text too long for the model is a chunking error: refused before any provider
        # (or probe) is called, and no failover hides it.
        self._counter.check_lengths(texts)
        if self.probe_on_first_use and not self._probed:
            self.check_agreement()
        failovers: list[Failover] = []
        for i, provider in enumerate(self.providers):
            breaker = self.breakers[i]
            if not breaker.allow():
                failovers.append(Failover(
                    provider.name, i, f"circuit open after {breaker.failure_threshold} "
                    f"consecutive failed requests; next try in {breaker.retry_in():.0f} s"))
                continue
            try:
                if i not in self._agreed:
                    self._probe(i)
                result = provider.embed(texts)
            except (TextTooLong, ProvidersDisagree):
                breaker.release()
                raise
            except EmbedError as exc:
                breaker.record_failure(getattr(exc, "attempts", 1))
                failovers.append(Failover(provider.name, i, str(exc)))
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
            return Embedded(result.vectors, provider.name, result.usage, i, tuple(failovers))
        reasons = " | ".join(f.reason if f.reason.startswith(f.provider) else
                             f"{f.provider}: {f.reason}" for f in failovers)
        raise ProviderUnavailable(
            f"No provider of space {self.space.name!r} could embed the texts ({reasons}). Run "
            "again when one is back; what was embedded so far is kept.")

    # -- probe agreement ------------------------------------------------------------------
    def check_agreement(self) -> dict[str, float]:
        """Probe every provider that answers now; raise ``ProvidersDisagree`` if two differ.

        Providers that do not answer are probed later, before their first vectors are used."""
        for i, breaker in enumerate(self.breakers):
            if i in self._agreed or not breaker.allow():
                continue
            try:
                self._probe(i)
            except ProvidersDisagree:
                breaker.release()
                raise
            except EmbedError as exc:
                breaker.record_failure(getattr(exc, "attempts", 1))
                continue
            except BaseException:
                breaker.release()
                raise
            breaker.record_success()
        self._probed = True
        return dict(self.agreement)

    def _probe(self, i: int) -> None:
        provider = self.providers[i]
        vectors = normalize(provider.embed(self.probe_texts).vectors)
        with self._probe_lock:
            if self._refused is not None:
                raise ProvidersDisagree(str(self._refused))
            if i in self._agreed:
                return
            if self._reference is None:
                self._reference, self._reference_from = vectors, provider.name
                self.agreement[provider.name] = 1.0
                self._agreed.add(i)
                return
            cosines = (vectors * self._reference).sum(axis=1)
            worst = float(cosines.min())
            self.agreement[provider.name] = worst
            if worst < self.min_probe_cosine:
                self._refused = ProvidersDisagree(
                    f"Providers {self._reference_from} and {provider.name} of space "
                    f"{self.space.name!r} make different vectors for the same probe text "
                    f"(cosine {worst:.4f}, at least {self.min_probe_cosine} is required): they "
                    "do not serve the same model. Give each model its own space, or fix the "
                    "provider's model.")
                raise ProvidersDisagree(str(self._refused))
            self._agreed.add(i)
