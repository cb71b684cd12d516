"""The KB config: one TOML file per knowledge base.

The file's schema is a tree of pydantic models, one per TOML table, each with ``extra="forbid"``
and strict types: a mistyped key or a value of the wrong type is a ``ConfigError`` that names
the key, says what it expected and, for a typo, the nearest valid key. Every default is written
once, in these models; ``render_config`` (what ``kbguard init`` writes) and the README's key
table are checked against them by the tests.

Relative paths resolve against the config file's folder, so a config works from any current
directory. ``load_config`` validates everything up front; nothing downstream re-checks it.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from kbguard.errors import ConfigError, CorpusError
from kbguard.providers.settings import (EnvName, FakeProviderSettings, OpenAIProviderSettings,
                                        ProviderSettings, SentenceTransformersProviderSettings)
from kbguard.core.durable import atomic_write_text
from kbguard.providers.openai_api import OPENAI_MODELS

DEFAULT_CONFIG = "kbguard.toml"
DEFAULT_INCLUDE = ("**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.html", "**/*.htm",
                   "**/*.pdf", "**/*.docx")
PROVIDERS = ("sentence-transformers", "fake", "openai")
BACKENDS = ("edge", "qdrant")
DEFAULT_MODEL = {"sentence-transformers": "all-MiniLM-L6-v2", "fake": "fake-hash"}
# models that ship inside a Python package, so they need no model_path
BUNDLED_MODELS = frozenset({"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
NonEmpty = Annotated[str, Field(min_length=1)]
# TOML arrays arrive as lists: a tuple field takes them (strict mode alone would refuse them)
Strings = Annotated[tuple[NonEmpty, ...], Field(strict=False)]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KbTable(_Table):
    name: Name | None = None   # None: the config file's name


class CorpusTable(_Table):
    path: NonEmpty
    include: Strings = DEFAULT_INCLUDE
    exclude: Strings = ()
    max_file_mb: Annotated[float, Field(gt=0, le=100_000)] = 20.0


class ChunkingTable(_Table):
    max_tokens: Annotated[int, Field(ge=16, le=100_000)] = 256


class ParsingTable(_Table):
    read_as: dict[str, str] = Field(default_factory=dict)   # suffix -> format suffix

    @field_validator("read_as")
    @classmethod
    def _known_formats(cls, value: dict[str, str]) -> dict[str, str]:
        from kbguard.ingest.parse import SUPPORTED_SUFFIXES

        out = {}
        for suffix, fmt in value.items():
            if not suffix.startswith(".") or fmt not in SUPPORTED_SUFFIXES:
                raise ValueError(
                    f'maps a suffix to a format suffix, e.g. {{ ".txt" = ".rst" }}; got '
                    f"{suffix!r} = {fmt!r}. Formats: {', '.join(sorted(SUPPORTED_SUFFIXES))}")
            out[suffix.lower()] = fmt
        return out


class SpaceConfig(_Table):
    """One embedding space: a named vector on every point, filled by one model.

    Its providers are tried in order (``[[spaces.providers]]``); a space written with the single
    ``provider`` key (and ``model_path``) is a chain of that one provider."""

    name: Name
    # the first provider's type; for a one-provider space, the provider
    provider: Literal["sentence-transformers", "fake", "openai"] = "sentence-transformers"
    model: NonEmpty = ""      # "" until validated: the provider's default model
    dim: Annotated[int, Field(ge=1, le=65536)] = 384
    normalize: bool = True
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
    model_path: Annotated[Path | None, Field(strict=False)] = None
    providers: Annotated[tuple[ProviderSettings, ...], Field(strict=False)] = ()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_providers(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        entries = data.get("providers")
        if entries is not None:
            if "provider" in data or "model_path" in data:
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

    @property
    def chain(self) -> tuple[Any, ...]:
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


class StoreTable(_Table):
    backend: Literal["edge", "qdrant"] = "edge"
    path: NonEmpty | None = None          # None: .kbguard/<kb>/store
    url: NonEmpty | None = None           # qdrant only: a server instead of a local path
    collection: Name | None = None        # None: the KB name
    api_key_env: EnvName | None = None    # the NAME of the variable holding the server's key

    @model_validator(mode="before")
    @classmethod
    def _no_literal_key(cls, data: Any) -> Any:
        # a key written into the config would be copied with it into git and backups
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("store.api_key is not read from the config file, where it would be "
                             "copied with it; put the key in an environment variable and name "
                             'it with store.api_key_env = "QDRANT_API_KEY"')
        return data


class ManifestTable(_Table):
    path: NonEmpty | None = None          # None: manifests/<kb>.duckdb


class SnapshotsTable(_Table):
    root: NonEmpty | None = None          # None: .kbguard/<kb>/snapshots


class RebuildTable(_Table):
    upsert_batch: Annotated[int, Field(ge=1, le=65536)] = 256
    parse_workers: Annotated[int, Field(ge=1, le=256)] = 2


class SearchTable(_Table):
    # how long search waits for a space's providers before answering from the next space
    query_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0


class RecoveryTable(_Table):
    # recovery time objectives that `kbguard drill` measures against
    rto_single_failure_s: Annotated[float, Field(gt=0, le=10_000_000)] = 900.0
    rto_full_rebuild_s: Annotated[float, Field(gt=0, le=10_000_000)] = 3600.0


class Canary(_Table):
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


class ConfigFile(_Table):
    """The whole TOML file, as written."""

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


@dataclass(frozen=True)
class Config:
    """A validated config with every path resolved: what the rest of kbguard reads."""

    path: Path
    kb: str
    corpus: Path
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    max_file_mb: float
    max_tokens: int
    spaces: tuple[SpaceConfig, ...]
    store_backend: str
    store_path: Path | None
    store_url: str | None
    collection: str
    manifest: Path
    snapshot_root: Path
    upsert_batch: int
    parse_workers: int
    read_as: dict[str, str]
    canaries: tuple[Canary, ...]
    store_api_key_env: str | None   # the NAME of the variable holding the server's API key
    query_timeout_s: float
    rto_single_failure_s: float = 900.0    # one component lost or damaged: store, manifest, API
    rto_full_rebuild_s: float = 3600.0     # everything but git and the DVC remote lost

    @property
    def root(self) -> Path:
        return self.path.parent

    def space(self, name: str) -> SpaceConfig:
        for s in self.spaces:
            if s.name == name:
                return s
        raise ConfigError(f"No embedding space named {name!r}; the config has "
                          f"{', '.join(s.name for s in self.spaces)}.")


def load_config(path: Path | str | None = None) -> Config:
    """Read and validate a KB config file."""
    path = Path(path or DEFAULT_CONFIG).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"No config at {path}. Create one with `kbguard init --corpus DIR --config {path}` "
            "or pass --config PATH."
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}. Fix the file and run again.") from exc
    return parse_config(path.resolve(), data)


def parse_config(path: Path, data: dict[str, Any]) -> Config:
    """Validate the TOML ``data`` of the config file at ``path`` and resolve its paths."""
    try:
        raw = ConfigFile.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # an item that failed also makes its list "too short": say only what is wrong
        problems = [_explain(err, data) for err in errors
                    if not (err["type"] == "too_short" and any(
                        len(o["loc"]) > len(err["loc"]) and o["loc"][:len(err["loc"])] == err["loc"]
                        for o in errors))]
        raise ConfigError(f"{path} has {'an error' if len(problems) == 1 else 'errors'}:\n  "
                          + "\n  ".join(problems)
                          + "\nFix the file and run again.") from None
    root = path.parent

    def resolve(value: str) -> Path:
        return (root / Path(value).expanduser()).resolve()

    kb = raw.kb.name or path.stem
    if raw.kb.name is None and not _valid_name(kb):
        raise ConfigError(f"{path}: the config has no kb.name and its file name {kb!r} is not a "
                          "valid KB name; add [kb] name = \"...\" (a letter, then letters, "
                          "digits, '-' or '_').")
    spaces = tuple(_resolve_space(s, resolve) for s in raw.spaces)
    store = raw.store
    return Config(
        path=path,
        kb=kb,
        corpus=resolve(raw.corpus.path),
        include=raw.corpus.include,
        exclude=raw.corpus.exclude,
        max_file_mb=raw.corpus.max_file_mb,
        max_tokens=raw.chunking.max_tokens,
        spaces=spaces,
        store_backend=store.backend,
        store_path=None if store.url else resolve(store.path or f".kbguard/{kb}/store"),
        store_url=store.url,
        collection=store.collection or kb,
        manifest=resolve(raw.manifest.path or f"manifests/{kb}.duckdb"),
        snapshot_root=resolve(raw.snapshots.root or f".kbguard/{kb}/snapshots"),
        upsert_batch=raw.rebuild.upsert_batch,
        parse_workers=raw.rebuild.parse_workers,
        read_as=dict(raw.parsing.read_as),
        canaries=raw.canaries,
        store_api_key_env=store.api_key_env,
        query_timeout_s=raw.search.query_timeout_s,
        rto_single_failure_s=raw.recovery.rto_single_failure_s,
        rto_full_rebuild_s=raw.recovery.rto_full_rebuild_s,
    )


def _resolve_space(space: SpaceConfig, resolve: Any) -> SpaceConfig:
    """The space with its model paths and key files resolved against the config's folder."""
    entries = tuple(
        e.model_copy(update={k: resolve(str(getattr(e, k))) for k in ("model_path", "api_key_file")
                             if getattr(e, k, None) is not None})
        for e in space.providers)
    update: dict[str, Any] = {"providers": entries}
    if space.model_path is not None:
        update["model_path"] = resolve(str(space.model_path))
    return space.model_copy(update=update)


def _valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


# -- error messages ------------------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "bool_type": "true or false",
    "string_type": "a string in quotes", "float_type": "a number",
    "list_type": "a list, e.g. [\"a\", \"b\"]", "tuple_type": "a list, e.g. [\"a\", \"b\"]",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
    "path_type": "a path in quotes",
}


def _explain(err: Any, data: dict[str, Any]) -> str:
    """One line for one validation error: the key as written in TOML, what it wanted, what it got."""
    loc = tuple(err["loc"])
    key, where = _key_name(loc)
    kind = err["type"]
    ctx = err.get("ctx") or {}
    got = err.get("input")
    if kind == "extra_forbidden":
        parent, leaf = loc[:-1], str(loc[-1])
        valid = _fields_at(ConfigFile, parent)
        near = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
        prefix = _key_name(parent)[0]
        what = "table" if isinstance(got, dict) and not parent else "key"
        shown = f"[{leaf}]" if what == "table" else key
        hint = (f"; did you mean [{near[0]}]?" if what == "table" else
                f"; did you mean {prefix + '.' if prefix else ''}{near[0]}?") if near else \
            f"; valid {'tables' if not parent else 'keys'} here: {', '.join(valid)}"
        return f"unknown {what} {shown}{where}{hint}"
    if kind == "missing":
        field = _field_at(ConfigFile, loc)
        inner = _inner_model(field.annotation) if field is not None else None
        if inner is not None:
            many = typing.get_origin(field.annotation) is not None and \
                "tuple" in str(field.annotation)
            needs = [n for n, f in inner.model_fields.items() if f.is_required()]
            return (f"missing {'[[' + key + ']]' if many else '[' + key + ']'} table{where}"
                    + (": at least one is required" if many else "")
                    + (f" (with {', '.join(needs)})" if needs else ""))
        return f"missing required key {key}{where}"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        if where and "." not in key:  # a whole [[table]] entry
            return f"{where.strip(' ()').removeprefix('in ')}: {msg}"
        return f"{key}{where}: {msg}" if key else msg
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        words = {"greater_than_equal": "at least", "greater_than": "greater than",
                 "less_than_equal": "at most", "less_than": "less than"}[kind]
        bound = next(iter(ctx.values()), "?")
        expected = f"{words} {bound}"
    elif kind == "literal_error":
        expected = f"one of {ctx.get('expected', '')}"
    elif kind == "string_too_short":
        expected = "a non-empty string"
    elif kind == "too_short":
        expected = "a non-empty list"
    elif kind == "string_pattern_mismatch":
        expected = ("a name that starts with a letter and uses only letters, digits, '-' and "
                    "'_' (at most 64)") if ctx.get("pattern") == NAME_PATTERN else \
            "a string with some text"
    else:
        expected = err["msg"].removeprefix("Input should be ").rstrip(".")
    return f"{key}{where} must be {expected}, got {_toml_repr(got)}"


def _key_name(loc: tuple[Any, ...]) -> tuple[str, str]:
    """``('spaces', 0, 'dim')`` -> (``spaces.dim``, `` (in [[spaces]] #1)``)."""
    return _walk(loc)[1:]


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys valid at ``loc`` (a path of table names and list indexes) of the schema."""
    if not loc:
        return list(model.model_fields)
    field = _field_at(model, loc)
    models = _inner_models(field.annotation) if field is not None else []
    if len(models) > 1 and isinstance(loc[-1], str):   # a tagged union: the tag picks one
        models = [m for m in models if _tag(m) == loc[-1]] or models
    return list(models[0].model_fields) if models else []


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The schema's field at ``loc``, or None."""
    return _walk(loc, model)[0]


def _walk(loc: tuple[Any, ...], model: type[BaseModel] | None = None) -> tuple[Any, str, str]:
    """Follow ``loc`` through the schema: (its field, its key as written, where in arrays).

    Validation paths hold list indexes and, inside a tagged union such as a provider entry,
    the tag (``"openai"``); neither is part of the key a user writes."""
    candidates: list[Any] = [model or ConfigFile]
    field: Any = None
    keys: list[str] = []
    arrays: list[str] = []
    for part in loc:
        if isinstance(part, int):
            arrays.append(f"[[{'.'.join(keys)}]] #{part + 1}")
            continue
        tagged = [m for m in candidates if _tag(m) == part]
        if len(candidates) > 1 and tagged:
            candidates = tagged
            continue
        field = next((m.model_fields[part] for m in candidates if part in m.model_fields), None)
        keys.append(str(part))
        if field is None:
            candidates = []
            continue
        candidates = _inner_models(field.annotation)
    where = f" (in {', '.join(arrays)})" if arrays else ""
    return field, ".".join(keys), where


def _tag(model: Any) -> Any:
    field = getattr(model, "model_fields", {}).get("type")
    return field.default if field is not None else None


def _inner_model(annotation: Any) -> Any:
    """The model class inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``Annotated[...]``."""
    models = _inner_models(annotation)
    return models[0] if models else None


def _inner_models(annotation: Any) -> list[Any]:
    """Every model class inside an annotation (several for a union of tables)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is None and not isinstance(annotation, types.UnionType):
        return []
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        out += [m for m in _inner_models(arg) if m not in out]
    return out


def _toml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}" (a string)'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"{value!r} (a list)"
    return repr(value)


# -- kbguard init ----------------------------------------------------------------------------

def init_config(corpus: Path | str, config: Path | str = DEFAULT_CONFIG, *, name: str = "",
                provider: str = "sentence-transformers", model: str = "", base_url: str = "",
                api_key_env: str = "", dim: int = 0, force: bool = False) -> Config:
    """Write a working config for the documents in ``corpus`` to ``config`` and load it back.

    The KB is named ``name`` or after the corpus folder; an existing config is kept unless
    ``force``. ``provider="openai"`` writes an API primary space (``model``, ``base_url``, the
    key's variable ``api_key_env``) and the bundled MiniLM as its local standby."""

    corpus, config = Path(corpus), Path(config)
    if not corpus.is_dir():
        raise CorpusError(f"The corpus folder {corpus} does not exist; create it or pass another.")
    if config.exists() and not force:
        raise ConfigError(f"{config} already exists; pass --force to overwrite it.")
    if provider not in PROVIDERS:
        raise ConfigError(f"provider {provider!r} is unknown; use one of {', '.join(PROVIDERS)}.")
    if api_key_env and provider != "openai":
        raise ConfigError("--api-key-env goes with --provider openai (a local model takes no "
                          "key). Nothing was written.")
    kb = name or kb_name_for(corpus)
    if not _valid_name(kb):
        raise ConfigError(f"KB name {kb!r} must start with a letter and use only letters, "
                          "digits, '-' and '_'.")
    text = render_config(kb=kb, corpus=corpus, config_dir=config.parent, provider=provider,
                         model=model, base_url=base_url, api_key_env=api_key_env, dim=dim)
    config.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config, text)
    return load_config(config)  # what init writes must load


def key_warnings(cfg: Config) -> list[str]:
    """A warning for each provider entry whose key would travel over plain http to a host that
    is not this machine."""
    return [warning for space in cfg.spaces for entry in space.chain
            if isinstance(entry, OpenAIProviderSettings) and (warning := entry.key_in_clear())]


def kb_name_for(corpus: Path) -> str:
    """A valid KB name made from the corpus folder's name."""
    raw = "".join(c if c.isalnum() or c in "-_" else "-" for c in corpus.resolve().name)
    return raw if raw[:1].isalpha() else f"kb-{raw}" if raw else "kb"


def render_config(*, kb: str, corpus: Path, config_dir: Path, provider: str = "sentence-transformers",
                  backend: str = "edge", model: str = "", base_url: str = "",
                  api_key_env: str = "", dim: int = 0) -> str:
    """A working config for ``kbguard init``; paths are written relative to the config folder.

    Every value written is the schema's default, so a rendered config and one that leaves the
    keys out mean the same."""
    # relative, so the config and its corpus can move together; absolute across drives
    try:
        corpus_s = Path(os.path.relpath(corpus.resolve(), config_dir.resolve())).as_posix()
    except ValueError:
        corpus_s = corpus.resolve().as_posix()
    corpus_t, rebuild_d, recovery_d = CorpusTable(path="."), RebuildTable(), RecoveryTable()
    include = ", ".join(f'"{g}"' for g in corpus_t.include)
    if provider == "openai":
        spaces = _api_spaces(model or "text-embedding-3-small", api_entry(base_url, api_key_env),
                             dim)
    else:
        space_d = _space_defaults()
        spaces = f"""\
[[spaces]]
name = "local"            # the named vector on each point
provider = "{provider}"
model = "{model or DEFAULT_MODEL[provider]}"
dim = {dim or space_d['dim']}
batch_size = {space_d['batch_size']}
"""
    return f"""\
# kbguard KB config. Relative paths resolve against this file's folder.
[kb]
name = "{kb}"

[corpus]
path = "{corpus_s}"
include = [{include}]
exclude = []
max_file_mb = {corpus_t.max_file_mb:g}          # larger files are recorded as failed, not parsed

[chunking]
max_tokens = {ChunkingTable().max_tokens}          # cap per chunk, in the first space's model tokens

{spaces}
[store]
backend = "{backend}"           # edge (embedded Qdrant Edge) | qdrant (server url or local path)
path = ".kbguard/{kb}/store"
# url = "http://127.0.0.1:6333"
collection = "{kb}"

[manifest]
path = "manifests/{kb}.duckdb"

[snapshots]
root = ".kbguard/{kb}/snapshots"

[rebuild]
upsert_batch = {rebuild_d.upsert_batch}
parse_workers = {rebuild_d.parse_workers}

[recovery]                  # objectives `kbguard drill` measures recovery against, in seconds
rto_single_failure_s = {recovery_d.rto_single_failure_s:g}
rto_full_rebuild_s = {recovery_d.rto_full_rebuild_s:g}
"""


def api_entry(base_url: str = "", api_key_env: str = "") -> OpenAIProviderSettings:
    """The provider entry ``kbguard init`` writes for an API. Its key variable is
    ``api_key_env``, else OpenAI's for OpenAI's own host and none for any other: a key must not
    travel to a host it was not made for."""
    default_url = OpenAIProviderSettings.model_fields["base_url"].default
    try:
        entry = OpenAIProviderSettings(base_url=base_url or default_url,
                                       api_key_env=api_key_env or None)
    except ValidationError as exc:
        flags = {"base_url": "--base-url", "api_key_env": "--api-key-env"}
        problems = "; ".join(
            f"{flags.get(str(err['loc'][0]) if err['loc'] else '', 'the API entry')}: "
            f"{(err.get('ctx') or {}).get('error', err['msg'])}"
            for err in exc.errors(include_input=False, include_url=False))
        raise ConfigError(f"{problems}. Nothing was written; run kbguard init again with a "
                          "corrected value.") from None
    if not api_key_env and urlsplit(entry.base_url).hostname == urlsplit(default_url).hostname:
        entry = entry.model_copy(update={"api_key_env": "OPENAI_API_KEY"})
    return entry


def _api_spaces(model: str, api: OpenAIProviderSettings, dim: int) -> str:
    """An API primary space and the bundled MiniLM as its local standby."""

    native = OPENAI_MODELS.get(model.rsplit("/", 1)[-1], (0, False))[0]
    if not (dim or native):
        raise ConfigError(f"kbguard does not know the vector size of {model!r}; pass --dim N.")
    price = _PRICES.get(model, 0.0)
    space_d = _space_defaults()
    key = (f'api_key_env = "{api.api_key_env}"       # the NAME of the variable that holds the key'
           if api.api_key_env else
           '# api_key_env = "NAME"              # the variable holding its key, if it takes one')
    return f"""\
[[spaces]]
name = "primary"          # searched first: the API model
model = "{model}"
dim = {dim or native}
batch_size = {api.max_batch_texts}

[[spaces.providers]]
type = "openai"
base_url = {json.dumps(api.base_url)}
{key}
timeout_s = {api.timeout_s:g}           # the most one request may take, retries included
max_retries = {api.max_retries}
concurrency = {api.concurrency}
max_batch_texts = {api.max_batch_texts}
price_per_million_tokens = {price:g}   # USD; what the cost ledger and estimates use

[[spaces]]
name = "local"            # the warm standby: search answers from it when the API is down
provider = "sentence-transformers"
model = "{DEFAULT_MODEL['sentence-transformers']}"
dim = {space_d['dim']}
batch_size = {space_d['batch_size']}
"""


# USD per million tokens, public price pages late 2026: the ledger's default for a new config
_PRICES = {"text-embedding-3-small": 0.02, "text-embedding-3-large": 0.13,
           "text-embedding-ada-002": 0.10}


def _space_defaults() -> dict[str, Any]:
    return {name: f.default for name, f in SpaceConfig.model_fields.items()}

