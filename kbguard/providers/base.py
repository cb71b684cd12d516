"""What every embedder and provider is, and what a provider returns.

An ``Embedder`` turns texts into float32 vectors of its space's dimension, L2-normalised when the
space says so (normalised float32 vectors round-trip bit-exact through Qdrant, so checksums of
stored vectors can be exact). A ``Provider`` is an ``Embedder`` (``embed_batch``,
``count_tokens``, ``max_input_tokens``) that also answers ``embed(texts) -> Embedded``: the
vectors with the provider's name and the usage of the call, so a caller can record which provider
produced each vector and what it cost.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kbguard.config import SpaceConfig
from kbguard.errors import EmbedError, TextTooLong


class Embedder(ABC):
    """Base of all embedders. Subclasses implement ``_embed`` and ``count_tokens``."""

    def __init__(self, space: SpaceConfig):
        self.space = space
        self.texts_embedded = 0

    #: the longest input (in tokens, without special tokens) the model reads in full
    max_input_tokens: int = 512

    @abstractmethod
    def _embed(self, texts: Sequence[str]) -> np.ndarray: ...

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts``, shape (len(texts), dim), float32, normalised if the space is."""
        if not texts:
            return np.zeros((0, self.space.dim), dtype=np.float32)
        vectors = np.asarray(self._embed(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.space.dim):
            raise EmbedError(
                f"{self.space.provider} model {self.space.model} returned vectors of shape "
                f"{vectors.shape}, expected ({len(texts)}, {self.space.dim}). Fix `dim` of space "
                f"{self.space.name!r} in the config."
            )
        if self.space.normalize:
            vectors = normalize(vectors)
        self.texts_embedded += len(texts)
        return vectors


def normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True).astype(np.float32)
    norms[norms == 0] = 1.0
    unit: np.ndarray = (vectors / norms).astype(np.float32)
    return unit


@dataclass(frozen=True)
class Usage:
    """What one call (or a sum of calls) cost: texts, tokens, HTTP requests, seconds, dollars."""

    texts: int = 0
    tokens: int = 0
    requests: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.texts + other.texts, self.tokens + other.tokens,
                     self.requests + other.requests, self.seconds + other.seconds,
                     self.cost_usd + other.cost_usd)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.texts - other.texts, self.tokens - other.tokens,
                     self.requests - other.requests, self.seconds - other.seconds,
                     self.cost_usd - other.cost_usd)

    def as_dict(self) -> dict[str, Any]:
        return {"texts": self.texts, "tokens": self.tokens, "requests": self.requests,
                "seconds": round(self.seconds, 6), "cost_usd": self.cost_usd}


@dataclass(frozen=True)
class Failover:
    """A provider that was passed over for one call, and why (the error's message)."""

    provider: str
    provider_index: int
    reason: str


@dataclass(frozen=True)
class Embedded:
    """Valid vectors for a call's texts, in order, and where they came from."""

    vectors: np.ndarray
    provider: str
    usage: Usage
    provider_index: int = 0
    failovers: tuple[Failover, ...] = field(default=())


class Provider(Embedder):
    """Base of the providers a chain is built from."""

    #: tokens are counted with the model's own tokenizer (not an estimate)
    exact_tokens: bool = True
    #: texts over ``max_input_tokens`` are refused (``TextTooLong``), never truncated
    enforces_limit: bool = False

    def __init__(self, space: SpaceConfig, name: str):
        super().__init__(space)
        self.name = name
        self._usage_lock = threading.Lock()
        self._usage_total = Usage()

    def embed(self, texts: Sequence[str]) -> Embedded:
        """Valid vectors for ``texts`` or an ``EmbedError``; never a partial or invalid answer."""
        if not texts:
            return self.empty()
        result = self._embed_texts(list(texts))
        with self._usage_lock:
            self.texts_embedded += len(texts)
        return result

    @abstractmethod
    def _embed_texts(self, texts: list[str]) -> Embedded: ...

    def check_lengths(self, texts: Sequence[str]) -> None:
        """Raise ``TextTooLong`` if this provider refuses a text for its length."""
        if not self.enforces_limit:
            return
        limit = self.max_input_tokens
        # A token is at least one byte of UTF-8 (byte-level BPE, WordPiece), so only texts
        # longer than the limit in bytes need counting: the check costs next to nothing.
        suspects = [i for i, t in enumerate(texts) if len(t) > limit and len(t.encode()) > limit]
        counts = self.count_tokens([texts[i] for i in suspects]) if suspects else []
        over = [(i, n) for i, n in zip(suspects, counts, strict=True) if n > limit]
        if over:
            i, n = over[0]
            raise TextTooLong(
                f"Text {i} of the batch has {n} tokens, over the {limit} that "
                f"{self.space.model} reads ({len(over)} such text(s)); nothing was sent. Lower "
                "chunking.max_tokens so every chunk fits the model.")

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts).vectors

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts).vectors

    @property
    def usage_total(self) -> Usage:
        """Everything this provider was paid for so far, including requests of failed calls."""
        with self._usage_lock:
            return self._usage_total

    def _spent(self, usage: Usage) -> None:
        with self._usage_lock:
            self._usage_total = self._usage_total + usage

    def close(self) -> None:
        """Release connections and threads; the provider is not used afterwards."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def empty(self) -> Embedded:
        return Embedded(np.zeros((0, self.space.dim), dtype=np.float32), self.name, Usage())
