"""Embedding providers and provider chains.

    Embedder (texts -> vectors of a space: base)
     ├── FakeEmbedder, SentenceTransformerEmbedder   in-process models (local)
     └── Provider (an Embedder that also says who embedded and what it cost: base)
          ├── OpenAIProvider  any OpenAI-compatible /v1/embeddings endpoint (openai_api)
          ├── LocalProvider   an in-process Embedder: sentence-transformers or fake (local)
          └── ProviderChain   a space's providers in order, failover and breakers (chain)

``build_chain(space, entries)`` turns a space and its provider entries (the config's
``provider_settings``) into a chain; a one-entry chain is what the single ``provider =`` key
means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kbguard.config import SpaceConfig
from kbguard.config.provider_settings import (
    FakeProviderSettings,
    OpenAIProviderSettings,
    ProviderEntry,
    ProviderSettings,
    SentenceTransformersProviderSettings,
    parse_provider_settings,
)
from kbguard.providers.base import Embedded, Failover, Provider, Usage
from kbguard.providers.breaker import CircuitBreaker
from kbguard.providers.chain import MIN_PROBE_COSINE, PROBE_TEXTS, ProviderChain
from kbguard.providers.local import LocalProvider, local_embedder
from kbguard.providers.openai_api import OpenAIProvider, read_api_key

__all__ = [
    "MIN_PROBE_COSINE",
    "PROBE_TEXTS",
    "CircuitBreaker",
    "Embedded",
    "Failover",
    "FakeProviderSettings",
    "LocalProvider",
    "OpenAIProvider",
    "OpenAIProviderSettings",
    "Provider",
    "ProviderChain",
    "ProviderSettings",
    "SentenceTransformersProviderSettings",
    "Usage",
    "build_chain",
    "chain_for",
    "spent",
    "spent_since",
    "forget_chains",
    "build_provider",
    "parse_provider_settings",
    "read_api_key",
]


def build_provider(space: SpaceConfig, settings: ProviderEntry,
                   env: Mapping[str, str] | None = None) -> Provider:
    """The provider one entry describes, filling ``space`` (name, model, dim, normalize)."""
    if isinstance(settings, OpenAIProviderSettings):
        return OpenAIProvider(space, settings, env=env)
    if isinstance(settings, SentenceTransformersProviderSettings):
        local = space.model_copy(update={
            "provider": "sentence-transformers", "model": settings.model or space.model,
            "model_path": settings.model_path or space.model_path})
        return LocalProvider(local_embedder(local), f"sentence-transformers:{local.model}")
    if isinstance(settings, FakeProviderSettings):
        local = space.model_copy(update={"provider": "fake",
                                         "model": settings.model or space.model})
        return LocalProvider(local_embedder(local), f"fake:{local.model}")
    raise TypeError(f"not a provider entry: {type(settings).__name__}")


def build_chain(space: SpaceConfig, entries: Sequence[ProviderEntry | Mapping[str, Any]],
                env: Mapping[str, str] | None = None, **options: Any) -> ProviderChain:
    """A chain of the entries' providers (settings objects or plain mappings), in order.

    ``options`` go to ``ProviderChain`` (failure_threshold, cooldown_s, ...)."""
    settings = [e if isinstance(e, (OpenAIProviderSettings, SentenceTransformersProviderSettings,
                                    FakeProviderSettings))
                else parse_provider_settings(e, f"space {space.name!r}, provider {i + 1}")
                for i, e in enumerate(entries)]
    providers: list[Provider] = []
    try:
        for s in settings:
            providers.append(build_provider(space, s, env))
        return ProviderChain(space, providers, **options)
    except BaseException:
        for p in providers:  # their connections and threads, before the error goes up
            p.close()
        raise


_CHAINS: dict[SpaceConfig, ProviderChain] = {}


def chain_for(space: SpaceConfig) -> ProviderChain:
    """The provider chain of a configured space (``SpaceConfig.chain``), built once per process
    so that breakers and the probe check hold across a run's batches."""
    chain = _CHAINS.get(space)
    if chain is None:
        chain = _CHAINS[space] = build_chain(space, space.chain)
    return chain


#: what each provider (by name) of each space has cost
Spending = dict[tuple[SpaceConfig, str], Usage]


def spent(spaces: Sequence[SpaceConfig]) -> Spending:
    """What each provider of each space's chain has cost this process so far; the difference
    of two readings is what the work between them cost."""
    return {(space, p.name): p.usage_total for space in spaces for p in chain_for(space).providers}


def spent_since(before: Spending) -> Spending:
    """The usage since ``before`` (a ``spent`` reading), for the providers that did anything."""
    now = spent([space for space, _ in before])
    out = {}
    for key, usage in now.items():
        delta = usage - before.get(key, Usage())
        if delta.texts or delta.requests:
            out[key] = delta
    return out


def forget_chains() -> None:
    """Close and forget every chain built so far: the next use starts with closed breakers and
    a fresh probe check, as a new process would."""
    for chain in _CHAINS.values():
        chain.close()
    _CHAINS.clear()
