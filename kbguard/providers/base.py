"""What every provider returns: vectors, who made them, and what they cost.

A ``Provider`` is an ``Embedder`` (``embed_batch``, ``count_tokens``, ``max_input_tokens``) that
also answers ``embed(texts) -> Embedded``: the vectors with the provider's name and the usage of
the call, so a caller can record which provider produced each vector and what it cost.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kbguard.embed import Embedder
from kbguard.errors import TextTooLong


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

    def __init__(self, space: Any, name: str):
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
