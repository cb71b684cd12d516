"""What a config must know about providers, models and formats, as plain data.

The config validates against these facts and ``kbguard init`` writes from them; the providers
and the parsers read them from here too, so the config never imports an implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the provider kinds a space can name, in the order ``kbguard init --help`` lists them
PROVIDERS = ("sentence-transformers", "fake", "openai")
#: the model a local provider fills a space with when the space names none
DEFAULT_MODEL = {"sentence-transformers": "all-MiniLM-L6-v2", "fake": "fake-hash"}
#: models that ship inside a Python package, so they need no model_path
BUNDLED_MODELS = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})


@dataclass(frozen=True)
class OpenAIModel:
    """One of OpenAI's embedding models."""

    dim: int                          # the size of its vectors
    shortens: bool                    # a request may ask for fewer dimensions
    max_input_tokens: int             # the longest input it reads, in cl100k_base tokens
    price_per_million_tokens: float   # USD, public price pages late 2026


#: the model of the API space ``kbguard init --provider openai`` writes when none is named
DEFAULT_API_MODEL = "text-embedding-3-small"
OPENAI_MODELS = {
    "text-embedding-3-small": OpenAIModel(1536, True, 8191, 0.02),
    "text-embedding-3-large": OpenAIModel(3072, True, 8191, 0.13),
    "text-embedding-ada-002": OpenAIModel(1536, False, 8191, 0.10),
}
#: what another model behind the same API is assumed to read, unless its entry says
OPENAI_MAX_INPUT_TOKENS = 8191
#: OpenAI's own limits for one embeddings request
MAX_BATCH_TEXTS = 2048
MAX_BATCH_TOKENS = 300_000

#: the formats kbguard parses, by file suffix; text formats are read with a detected encoding
TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".html", ".htm"})
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".docx"}
