"""The settings of one provider entry (``[[spaces.providers]]``), one model per ``type``.

The key names are what users write in a KB config; a typo is an error naming the key. Inputs are
hidden from validation errors: a key pasted where the NAME of its environment variable belongs
must not be repeated back in an error message.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from kbguard.config.catalog import MAX_BATCH_TEXTS, MAX_BATCH_TOKENS
from kbguard.errors import ConfigError

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _variable_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        # never echoed: a value that is no variable name may be the key itself
        raise ValueError("must be the NAME of an environment variable (letters, digits, _), "
                         "e.g. OPENAI_API_KEY, never the key itself")
    return value


#: where a config names the environment variable that holds a key
EnvName = Annotated[str, AfterValidator(_variable_name)]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class OpenAIProviderSettings(_Entry):
    """Any endpoint that speaks the OpenAI embeddings API (OpenAI, gateways, TEI, vLLM, ...)."""

    type: Literal["openai"] = "openai"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: EnvName | None = Field(None, description=(
        "the NAME of the variable that holds the key, never the key"),
        examples=["EMBEDDINGS_API_KEY"])
    api_key_file: Path | None = Field(None, description=(
        "a file holding the key, readable by its owner only"))
    model: str | None = Field(None, description=(
        "what the endpoint expects; defaults to the space's"))
    timeout_s: float = Field(30.0, gt=0, le=3600, description=(
        "the most one request may take, retries included"))
    max_retries: int = Field(2, ge=0, le=10)
    concurrency: int = Field(4, ge=1, le=64, description="requests in flight")
    max_batch_texts: int = Field(256, ge=1, le=MAX_BATCH_TEXTS, description="texts per request")
    max_batch_tokens: int = Field(100_000, ge=1, le=MAX_BATCH_TOKENS,
                                  description="tokens per request")
    tokens_per_minute: int = Field(0, ge=0, description="a client-side budget; 0: none")
    price_per_million_tokens: float = Field(0.0, ge=0, description=(
        "USD; what the cost ledger and estimates use"))
    # OpenAI's own models are known (8191 tokens, counted with their tokenizer)
    max_input_tokens: int | None = Field(None, ge=1, description=(
        "only for models that are not OpenAI's: their input limit in tokens"))

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        # no message here repeats the URL: what is wrong with it may be a key
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises for a port that is no number
        except ValueError:
            raise ValueError("must be an http:// or https:// URL, e.g. "
                             "https://api.openai.com/v1") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, e.g. https://api.openai.com/v1")
        if "@" in parts.netloc:
            raise ValueError("must not carry credentials (user:password@); put the key in an "
                             "environment variable and name it with api_key_env")
        if "?" in value or "#" in value:
            raise ValueError("must not have a query string or fragment ('?...' or '#...'): the "
                             "request path is appended to base_url. Remove them; a key goes in "
                             "an environment variable named by api_key_env")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_key_source(self) -> OpenAIProviderSettings:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        return self

    def key_in_clear(self) -> str | None:
        """A warning when this entry's key would travel over plain http to another machine."""
        if not (self.api_key_env or self.api_key_file) or not sends_in_clear(self.base_url):
            return None
        source = (f"the key in {self.api_key_env}" if self.api_key_env else
                  f"the key in {self.api_key_file}")
        return (f"Warning: {source} is sent over plain http to {urlsplit(self.base_url).hostname}, "
                "which is not this machine: anyone on the way can read it. Use an https:// "
                "base_url, or no key for an endpoint that needs none.")


def sends_in_clear(url: str) -> bool:
    """Plain http to a host other than this machine (loopback addresses and localhost)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme != "http" or host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


class SentenceTransformersProviderSettings(_Entry):
    """A local sentence-transformers model, from ``model_path`` or the bundled copy of ``model``."""

    type: Literal["sentence-transformers"] = "sentence-transformers"
    model: str | None = None
    model_path: Path | None = None


class FakeProviderSettings(_Entry):
    """The deterministic hashed bag-of-words embedder (tests and benchmarks)."""

    type: Literal["fake"] = "fake"
    model: str | None = None


ProviderEntry = OpenAIProviderSettings | SentenceTransformersProviderSettings | FakeProviderSettings
#: one ``[[spaces.providers]]`` entry: its ``type`` picks the model
ProviderSettings = Annotated[ProviderEntry, Field(discriminator="type")]
_ADAPTER: TypeAdapter[ProviderEntry] = TypeAdapter(ProviderSettings)


def parse_provider_settings(entry: Mapping[str, Any], where: str = "provider") -> ProviderEntry:
    """One provider entry, validated; ``ConfigError`` naming each bad key (never its value)."""
    try:
        return _ADAPTER.validate_python(dict(entry))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_input=False, include_url=False):
            # loc is () when the type itself is wrong, else (type, key...)
            loc = [str(p) for p in err["loc"]]
            key = ".".join(loc[1:]) or "entry" if loc else "type"
            # a validator's own message, without pydantic's "Value error, " before it
            problems.append(f"{key}: {(err.get('ctx') or {}).get('error', err['msg'])}")
        raise ConfigError(f"{where}: {'; '.join(problems)}. Fix the entry (type is one of "
                          "\"openai\", \"sentence-transformers\", \"fake\").") from None
