"""Local embedders (sentence-transformers, fake) as chain entries, checked like any provider."""

from __future__ import annotations

import time
from collections.abc import Sequence

from kbguard.embed import Embedder
from kbguard.errors import EmbedError, ProviderUnavailable
from kbguard.providers.answer import check_vectors
from kbguard.providers.base import Embedded, Provider, Usage


class LocalProvider(Provider):
    """An in-process ``Embedder`` as a provider: its answers are checked, its failures are
    ``EmbedError``s, its tokens are counted with its own tokenizer and cost nothing."""

    def __init__(self, embedder: Embedder, name: str | None = None):
        space = embedder.space
        super().__init__(space, name or f"{getattr(space, 'provider', 'local')}:{space.model}")
        self.embedder = embedder
        self.max_input_tokens = embedder.max_input_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.embedder.count_tokens(texts)

    def _embed_texts(self, texts: list[str]) -> Embedded:
        started = time.perf_counter()
        try:
            vectors = self.embedder.embed_batch(texts)
        except EmbedError:
            raise
        except Exception as exc:  # a local model failing mid-call (OOM, torch) is a dead provider
            raise ProviderUnavailable(
                f"{self.name} failed: {type(exc).__name__}: {exc}. Check the model files and "
                "the memory available.") from exc
        check_vectors(vectors, len(texts), self.space.dim, self.name)
        usage = Usage(texts=len(texts), tokens=sum(self.count_tokens(texts)), requests=0,
                      seconds=time.perf_counter() - started)
        self._spent(usage)
        return Embedded(vectors, self.name, usage)
