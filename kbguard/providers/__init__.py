"""Embedding providers and provider chains.

    Provider (an Embedder that also says who embedded and what it cost)
     ├── OpenAIProvider   any OpenAI-compatible /v1/embeddings endpoint (openai_api)
     ├── LocalProvider    an in-process Embedder: sentence-transformers or fake (local)
     └── ProviderChain    a space's providers in order, with failover and breakers (chain)

``build_chain(space, entries)`` turns a space and its provider entries (``settings``) into a
chain; a one-entry chain is what today's single ``provider =`` key means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from kbguard.providers.base import Embedded, Failover, Provider, Usage
from kbguard.providers.breaker import CircuitBreaker
from kbguard.providers.chain import MIN_PROBE_COSINE, PROBE_TEXTS, ProviderChain
from kbguard.providers.local import LocalProvider
from kbguard.providers.openai_api import OpenAIProvider, read_api_key
from kbguard.providers.settings import (
    FakeProviderSettings,
    OpenAIProviderSettings,
    ProviderSettings,
    SentenceTransformersProviderSettings,
    parse_provider_settings,
)

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


def build_provider(space: Any, settings: Any, env: Mapping[str, str] | None = None) -> Provider:
    """The provider one entry describes, filling ``space`` (name, model, dim, normalize)."""
    from kbguard.embed import local_embedder

    if isinstance(settings, OpenAIProviderSettings):
        return OpenAIProvider(space, settings, env=env)
    if isinstance(settings, SentenceTransformersProviderSettings):
        local = _space_with(space, provider="sentence-transformers",
                            model=settings.model or space.model,
                            model_path=settings.model_path or getattr(space, "model_path", None))
        return LocalProvider(local_embedder(local), f"sentence-transformers:{local.model}")
    if isinstance(settings, FakeProviderSettings):
        local = _space_with(space, provider="fake", model=settings.model or space.model)
        return LocalProvider(local_embedder(local), f"fake:{local.model}")
    raise TypeError(f"not a provider entry: {type(settings).__name__}")


def build_chain(space: Any, entries: Sequence[Any], env: Mapping[str, str] | None = None,
                **options: Any) -> ProviderChain:
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


_CHAINS: dict[Any, ProviderChain] = {}


def chain_for(space: Any) -> ProviderChain:
    """The provider chain of a configured space (``SpaceConfig.chain``), built once per process
    so that breakers and the probe check hold across a run's batches."""
    chain = _CHAINS.get(space)
    if chain is None:
        chain = _CHAINS[space] = build_chain(space, space.chain)
    return chain


def spent(spaces: Sequence[Any]) -> dict[tuple[Any, str], Usage]:
    """What each provider of each space's chain has cost this process so far; the difference
    of two readings is what the work between them cost."""
    return {(space, p.name): p.usage_total for space in spaces for p in chain_for(space).providers}


def spent_since(before: dict[tuple[Any, str], Usage]) -> dict[tuple[Any, str], Usage]:
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


def _space_with(space: Any, **changes: Any) -> Any:
    """A copy of a space config with some fields changed (a dataclass or a pydantic model)."""
    if dataclasses.is_dataclass(space):
        return dataclasses.replace(space, **changes)  # type: ignore[type-var]
    return space.model_copy(update=changes)
