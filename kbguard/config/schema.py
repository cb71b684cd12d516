"""The schema of a KB config file: one pydantic model per TOML table.

Every table has ``extra="forbid"`` and strict types, so a mistyped key or a value of the wrong
type fails validation (``explain`` turns that into a ``ConfigError`` that names the key). Every
default is written once, here: the field's default, or for the paths that follow the KB's name
a ``*_for(kb)`` method of its table. A field's ``description`` (and ``examples``) is what
``kbguard init`` writes beside it.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kbguard.config.catalog import BUNDLED_MODELS, DEFAULT_MODEL, SUPPORTED_SUFFIXES
from kbguard.config.provider_settings import (
    EnvName,
    FakeProviderSettings,
    ProviderEntry,
    ProviderSettings,
    SentenceTransformersProviderSettings,
)

DEFAULT_INCLUDE = ("**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.html", "**/*.htm",
                   "**/*.pdf", "**/*.docx")

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NonEmpty = Annotated[str, Field(min_length=1)]
# TOML arrays arrive as lists: a tuple field takes them (strict mode alone would refuse them)
Strings = Annotated[tuple[NonEmpty, ...], Field(strict=False)]


def valid_name(name: str) -> bool:
    """Whether ``name`` can name a KB, a space or a collection."""
    return re.fullmatch(NAME_PATTERN, name) is not None


def inner_models(annotation: Any) -> list[Any]:
    """Every model class inside an annotation (several for a union of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is None and not isinstance(annotation, types.UnionType):
        return []
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out += [m for m in inner_models(arg) if m not in out]
    return out


class Table(BaseModel):
    """The base of every TOML table: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    def toml_keys(self) -> tuple[str, ...]:
        """The keys this table is written with, in order."""
        return tuple(type(self).model_fields)


class KbTable(Table):
    # None: the config file's name
    name: Annotated[Name | None, Field(description="the KB's name; part of every point id")] = None


class CorpusTable(Table):
    path: Annotated[NonEmpty, Field(description="the folder of source documents")]
    include: Annotated[Strings, Field(description="globs on corpus-relative paths")] = \
        DEFAULT_INCLUDE
    exclude: Annotated[Strings, Field(description="globs of files to leave out")] = ()
    max_file_mb: Annotated[float, Field(
        gt=0, le=100_000, description="larger files are recorded as failed, not parsed")] = 20.0


class ChunkingTable(Table):
    max_tokens: Annotated[int, Field(
        ge=16, le=100_000, description="cap per chunk, in the first space's model tokens")] = 256


class ParsingTable(Table):
    read_as: dict[str, str] = Field(  # suffix -> format suffix
        default_factory=dict, description="parse one suffix as another format",
        examples=[{".txt": ".rst"}])

    @field_validator("read_as")
    @classmethod
    def _known_formats(cls, value: dict[str, str]) -> dict[str, str]:
        out = {}
        for suffix, fmt in value.items():
            if not suffix.startswith(".") or fmt not in SUPPORTED_SUFFIXES:
                raise ValueError(
                    f'maps a suffix to a format suffix, e.g. {{ ".txt" = ".rst" }}; got '
                    f"{suffix!r} = {fmt!r}. Formats: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
            out[suffix.lower()] = fmt
        return out


class SpaceConfig(Table):
    """One embedding space: a named vector on every point, filled by one model.

    Its providers are tried in order (``[[spaces.providers]]``); a space written with the single
    ``provider`` key (and ``model_path``) is a chain of that one provider."""

    #: how a space with one provider may name it, instead of a [[spaces.providers]] entry
    SHORT_FORM: ClassVar[tuple[str, ...]] = ("provider", "model_path")

    name: Annotated[Name, Field(description="the named vector on each point")]
    # the first provider's type; for a one-provider space, the provider
    provider: Annotated[Literal["sentence-transformers", "fake", "openai"], Field(
        description="the space's one provider, written the short way")] = "sentence-transformers"
    # "" until validated: the provider's default model
    model: Annotated[NonEmpty, Field(description="the model identity of the space's vectors")] = ""
    dim: Annotated[int, Field(ge=1, le=65536, description="the size of its vectors")] = 384
    normalize: Annotated[bool, Field(description="L2-normalise its vectors")] = True
    batch_size: Annotated[int, Field(ge=1, le=4096, description="texts per embedding call")] = 32
    model_path: Annotated[Path | None, Field(
        strict=False, description="a local sentence-transformers model folder")] = None
    providers: Annotated[tuple[ProviderSettings, ...], Field(
        strict=False, description="tried in order: the first healthy one embeds")] = ()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_providers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        entries = data.get("providers")
        if entries is not None:
            if any(key in data for key in cls.SHORT_FORM):
                raise ValueError("a space with [[spaces.providers]] names its providers there; "
                                 "remove provider and model_path from the [[spaces]] table")
            if isinstance(entries, list) and not entries:
                raise ValueError("providers is empty, and a space needs at least one provider: "
                                 "add a [[spaces.providers]] entry, or remove providers and "
                                 'name the one provider with provider = "..."')
            first = entries[0] if isinstance(entries, list) and entries else {}
            if not isinstance(first, dict):
                return data
            kind = first.get("type")
            data = {**data, "provider": kind} if isinstance(kind, str) else data
            if "model" not in data:
                model = first.get("model") or DEFAULT_MODEL.get(str(kind))
                if model is None:
                    raise ValueError("model is required: the space's model identity, e.g. "
                                     'model = "text-embedding-3-small"')
                data = {**data, "model": model}
        elif "model" not in data:
            provider = data.get("provider", "sentence-transformers")
            if isinstance(provider, str) and provider in DEFAULT_MODEL:
                data = {**data, "model": DEFAULT_MODEL[provider]}
        return data

    @model_validator(mode="after")
    def _models_available(self) -> SpaceConfig:
        if not self.providers and self.provider == "openai":
            raise ValueError('an "openai" provider is written as a [[spaces.providers]] entry '
                             "(with base_url and api_key_env)")
        # a model that cannot be loaded would fail every document of a rebuild: refuse it here
        for entry in self.chain:
            if not isinstance(entry, SentenceTransformersProviderSettings):
                continue
            model = entry.model or self.model
            if entry.model_path is None and model.lower() not in BUNDLED_MODELS:
                hint = ('; for the deterministic test embedder set provider = "fake"'
                        if model == DEFAULT_MODEL["fake"] else "")
                raise ValueError(
                    f"model {model!r} of space {self.name!r} has no local copy: kbguard "
                    "bundles only all-MiniLM-L6-v2. Set model_path to a folder holding the "
                    f"sentence-transformers model{hint}")
        return self

    def toml_keys(self) -> tuple[str, ...]:
        keys = super().toml_keys()
        return tuple(k for k in keys if k not in self.SHORT_FORM) if self.providers else keys

    @property
    def chain(self) -> tuple[ProviderEntry, ...]:
        """The provider entries in the order they are tried."""
        if self.providers:
            return self.providers
        if self.provider == "fake":
            return (FakeProviderSettings(model=self.model),)
        return (SentenceTransformersProviderSettings(model=self.model,
                                                     model_path=self.model_path),)

    @property
    def space_id(self) -> str:
        """Provider-independent identity of the vectors: the embedding cache key's first half."""
        return f"{self.model}@{self.dim}{'/norm' if self.normalize else ''}"


class StoreTable(Table):
    backend: Annotated[Literal["edge", "qdrant"], Field(
        description="edge (embedded Qdrant Edge) | qdrant (server url or local path)")] = "edge"
    path: Annotated[NonEmpty | None, Field(description="where the vectors live")] = None
    url: Annotated[NonEmpty | None, Field(  # qdrant only: a server instead of a local path
        description="a Qdrant server, instead of path", examples=["http://127.0.0.1:6333"])] = None
    collection: Annotated[Name | None, Field(description="the collection the points go to")] = None
    api_key_env: Annotated[EnvName | None, Field(
        description="the NAME of the variable holding the server's key",
        examples=["QDRANT_API_KEY"])] = None

    def path_for(self, kb: str) -> str | None:
        """Where the vectors of KB ``kb`` live on disk; None for a server."""
        return None if self.url else self.path or f".kbguard/{kb}/store"

    def collection_for(self, kb: str) -> str:
        return self.collection or kb

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        # a key written into the config would be copied with it into git and backups
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("store.api_key is not read from the config file, where it would be "
                             "copied with it; put the key in an environment variable and name "
                             'it with store.api_key_env = "QDRANT_API_KEY"')
        return data


class ManifestTable(Table):
    path: Annotated[NonEmpty | None, Field(description="the DuckDB manifest")] = None

    def path_for(self, kb: str) -> str:
        return self.path or f"manifests/{kb}.duckdb"


class SnapshotsTable(Table):
    root: Annotated[NonEmpty | None, Field(
        description="where `kbguard snapshot create` writes")] = None

    def root_for(self, kb: str) -> str:
        return self.root or f".kbguard/{kb}/snapshots"


class RebuildTable(Table):
    upsert_batch: Annotated[int, Field(ge=1, le=65536, description="points per store write")] = 256
    parse_workers: Annotated[int, Field(ge=1, le=256, description="parser processes")] = 2


class SearchTable(Table):
    query_timeout_s: Annotated[float, Field(gt=0, le=600, description=(
        "how long search waits for a space's API before asking the next space"))] = 5.0


class RecoveryTable(Table):
    """Objectives `kbguard drill` measures recovery against, in seconds."""

    rto_single_failure_s: Annotated[float, Field(
        gt=0, le=10_000_000, description="one store, manifest or provider lost")] = 900.0
    rto_full_rebuild_s: Annotated[float, Field(
        gt=0, le=10_000_000, description="everything but git and the DVC remote lost")] = 3600.0


class Canary(Table):
    """A query whose expected documents must be among the top ``k`` results (`kbguard verify`)."""

    query: Annotated[str, Field(min_length=1, pattern=r"\S")]
    expect: Annotated[Strings, Field(min_length=1)]
    k: Annotated[int, Field(ge=1, le=1000)] = 5
    space: Name | None = None

    @model_validator(mode="after")
    def _fits_in_k(self) -> Canary:
        if len(self.expect) > self.k:
            raise ValueError(f"{len(self.expect)} expected documents cannot all be in the top "
                             f"{self.k}; raise k")
        return self


class ConfigFile(Table):
    """A kbguard KB config. Relative paths resolve against this file's folder."""

    kb: KbTable = KbTable()
    corpus: CorpusTable
    chunking: ChunkingTable = ChunkingTable()
    parsing: ParsingTable = ParsingTable()
    spaces: Annotated[tuple[SpaceConfig, ...], Field(strict=False, min_length=1)]
    store: StoreTable = StoreTable()
    manifest: ManifestTable = ManifestTable()
    snapshots: SnapshotsTable = SnapshotsTable()
    rebuild: RebuildTable = RebuildTable()
    search: SearchTable = SearchTable()
    recovery: RecoveryTable = RecoveryTable()
    canaries: Annotated[tuple[Canary, ...], Field(strict=False)] = ()

    @model_validator(mode="after")
    def _cross_checks(self) -> ConfigFile:
        names = [s.name for s in self.spaces]
        if len(set(names)) != len(names):
            raise ValueError(f"space names must be unique, got {names}")
        for i, c in enumerate(self.canaries):
            if c.space is not None and c.space not in names:
                raise ValueError(f"canaries.space (in [[canaries]] #{i + 1}): {c.space!r} is "
                                 f"not one of the spaces {names}")
        if self.store.api_key_env and not (self.store.backend == "qdrant" and self.store.url):
            raise ValueError("store.api_key_env only applies to a Qdrant server (store.backend "
                             '= "qdrant" with store.url); remove it')
        if self.store.url and self.store.backend != "qdrant":
            raise ValueError('store.url needs backend = "qdrant" (Qdrant Edge is embedded and '
                             "has only a path)")
        return self

    def for_kb(self, kb: str) -> ConfigFile:
        """This file for KB ``kb``, with the defaults that follow the KB's name written out."""
        return self.model_copy(update={
            "kb": KbTable(name=kb),
            "store": self.store.model_copy(update={"path": self.store.path_for(kb),
                                                   "collection": self.store.collection_for(kb)}),
            "manifest": ManifestTable(path=self.manifest.path_for(kb)),
            "snapshots": SnapshotsTable(root=self.snapshots.root_for(kb)),
        })
