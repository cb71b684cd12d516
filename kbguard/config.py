"""The KB config: one TOML file per knowledge base.

Relative paths resolve against the config file's folder, so a config works from any current
directory. ``load_config`` validates everything up front and raises ``ConfigError`` naming the
key and the fix; nothing downstream re-checks the config.
"""

from __future__ import annotations

import os

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbguard.errors import ConfigError

DEFAULT_CONFIG = "kbguard.toml"
DEFAULT_INCLUDE = ("**/*.md", "**/*.markdown", "**/*.txt", "**/*.rst", "**/*.html", "**/*.htm",
                   "**/*.pdf", "**/*.docx")
PROVIDERS = ("sentence-transformers", "fake")
BACKENDS = ("edge", "qdrant")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class SpaceConfig:
    """One embedding space: a named vector on every point, filled by one model."""

    name: str
    provider: str
    model: str
    dim: int
    normalize: bool = True
    batch_size: int = 32
    model_path: Path | None = None

    @property
    def space_id(self) -> str:
        """Provider-independent identity of the vectors: the embedding cache key's first half."""
        return f"{self.model}@{self.dim}{'/norm' if self.normalize else ''}"


@dataclass(frozen=True)
class Canary:
    """A query whose expected documents must be among the top ``k`` results (`kbguard verify`)."""

    query: str
    expect: tuple[str, ...]
    k: int = 5
    space: str | None = None


@dataclass(frozen=True)
class Config:
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
    upsert_batch: int = 256
    parse_workers: int = 2
    read_as: dict[str, str] = field(default_factory=dict)   # suffix -> format suffix
    extra: dict[str, Any] = field(default_factory=dict)
    canaries: tuple[Canary, ...] = ()
    store_api_key_env: str | None = None   # the NAME of the variable holding the API key

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
    return _parse(path.resolve(), data)


def _parse(path: Path, data: dict[str, Any]) -> Config:
    root = path.parent
    r = _Reader(path, data)
    kb = r.get("kb.name", str, path.stem)
    if not _NAME.match(kb):
        raise ConfigError(f"{path}: kb.name {kb!r} must start with a letter and use only "
                          "letters, digits, '-' and '_'.")
    corpus = r.path("corpus.path", root, required=True)
    spaces_raw = data.get("spaces")
    if not spaces_raw or not isinstance(spaces_raw, list):
        raise ConfigError(f"{path}: at least one [[spaces]] table is required "
                          '(e.g. name = "local", provider = "sentence-transformers").')
    spaces = tuple(_space(path, i, s, root) for i, s in enumerate(spaces_raw))
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: space names must be unique, got {names}.")
    backend = r.get("store.backend", str, "edge")
    if backend not in BACKENDS:
        raise ConfigError(f"{path}: store.backend {backend!r} is unknown; use one of {BACKENDS}.")
    store_url = r.get("store.url", str, "") or None
    store_path = r.path("store.path", root, default=f".kbguard/{kb}/store")
    if backend == "qdrant" and store_url:
        store_path = None
    api_key_env = _api_key_env(path, r, backend, store_url)
    cfg = Config(
        path=path,
        kb=kb,
        corpus=corpus,
        include=tuple(r.get("corpus.include", list, list(DEFAULT_INCLUDE))),
        exclude=tuple(r.get("corpus.exclude", list, [])),
        max_file_mb=float(r.get("corpus.max_file_mb", (int, float), 20)),
        max_tokens=r.get("chunking.max_tokens", int, 256),
        spaces=spaces,
        store_backend=backend,
        store_path=store_path,
        store_url=store_url,
        collection=r.get("store.collection", str, kb),
        manifest=r.path("manifest.path", root, default=f"manifests/{kb}.duckdb"),
        snapshot_root=r.path("snapshots.root", root, default=f".kbguard/{kb}/snapshots"),
        upsert_batch=r.get("rebuild.upsert_batch", int, 256),
        parse_workers=r.get("rebuild.parse_workers", int, 2),
        read_as=_read_as(path, r.get("parsing.read_as", dict, {})),
        extra={k: v for k, v in data.items()
               if k not in ("kb", "corpus", "chunking", "parsing", "spaces", "store",
                            "manifest", "snapshots", "rebuild", "canaries")},
        canaries=_canaries(path, data.get("canaries", []), names),
        store_api_key_env=api_key_env,
    )
    if cfg.max_tokens < 16:
        raise ConfigError(f"{path}: chunking.max_tokens must be at least 16, got {cfg.max_tokens}.")
    if cfg.upsert_batch < 1 or cfg.parse_workers < 1:
        raise ConfigError(f"{path}: rebuild.upsert_batch and rebuild.parse_workers must be >= 1.")
    return cfg


def _api_key_env(path: Path, r: _Reader, backend: str, url: str | None) -> str | None:
    """``store.api_key_env``: the name of the environment variable holding the Qdrant API key.
    A key written into the config would end up in version control and backups."""
    store = r.data.get("store")
    if isinstance(store, dict) and "api_key" in store:
        raise ConfigError(f"{path}: store.api_key is not read from the config file, where it "
                          "would be copied with it; put the key in an environment variable and "
                          'name it with store.api_key_env = "QDRANT_API_KEY".')
    name = r.get("store.api_key_env", str, "") or None
    if name is None:
        return None
    if not _ENV_NAME.match(name):
        # not echoed: a value that is no variable name may be the key itself
        raise ConfigError(f"{path}: store.api_key_env must be the NAME of an environment "
                          'variable (letters, digits and _, e.g. "QDRANT_API_KEY"), not the key.')
    if backend != "qdrant" or not url:
        raise ConfigError(f"{path}: store.api_key_env only applies to a Qdrant server "
                          '(store.backend = "qdrant" with store.url); remove it.')
    return name


def _read_as(path: Path, raw: dict[str, Any]) -> dict[str, str]:
    """``parsing.read_as``: parse files of one suffix as another format (Sphinx's .txt is reST)."""
    from kbguard.parse import SUPPORTED_SUFFIXES

    out: dict[str, str] = {}
    for suffix, fmt in raw.items():
        if not isinstance(fmt, str) or not suffix.startswith(".") or fmt not in SUPPORTED_SUFFIXES:
            raise ConfigError(
                f"{path}: parsing.read_as maps a suffix to a format suffix, e.g. "
                f'{{ ".txt" = ".rst" }}; got {suffix!r} = {fmt!r}. Formats: '
                f"{', '.join(sorted(SUPPORTED_SUFFIXES))}.")
        out[suffix.lower()] = fmt
    return out


def _space(path: Path, i: int, raw: Any, root: Path) -> SpaceConfig:
    where = f"{path}: [[spaces]] #{i + 1}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table.")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: name must be a short identifier such as \"local\".")
    provider = raw.get("provider", "sentence-transformers")
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}: provider {provider!r} is unknown; use one of {PROVIDERS}.")
    default_model = "all-MiniLM-L6-v2" if provider != "fake" else "fake-hash"
    model = raw.get("model", default_model)
    dim = raw.get("dim", 384)
    batch = raw.get("batch_size", 32)
    if not isinstance(dim, int) or not 1 <= dim <= 65536:
        raise ConfigError(f"{where}: dim must be a positive integer, got {dim!r}.")
    if not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"{where}: batch_size must be a positive integer, got {batch!r}.")
    mp = raw.get("model_path")
    return SpaceConfig(
        name=name, provider=provider, model=str(model), dim=dim,
        normalize=bool(raw.get("normalize", True)), batch_size=batch,
        model_path=(root / mp).resolve() if mp else None,
    )


def _canaries(path: Path, raw: Any, spaces: list[str]) -> tuple[Canary, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: canaries must be [[canaries]] tables.")
    out = []
    for i, c in enumerate(raw):
        where = f"{path}: [[canaries]] #{i + 1}"
        if not isinstance(c, dict):
            raise ConfigError(f"{where} must be a table.")
        query, expect = c.get("query"), c.get("expect")
        if not isinstance(query, str) or not query.strip():
            raise ConfigError(f"{where}: query must be the text to search for.")
        if isinstance(expect, str):
            expect = [expect]
        if not isinstance(expect, list) or not expect or \
                not all(isinstance(e, str) and e for e in expect):
            raise ConfigError(f"{where}: expect must list corpus-relative document paths, "
                              'e.g. expect = ["guide/install.md"].')
        k = c.get("k", 5)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"{where}: k must be a positive integer, got {k!r}.")
        space = c.get("space")
        if space is not None and space not in spaces:
            raise ConfigError(f"{where}: space {space!r} is not one of {spaces}.")
        if len(expect) > k:
            raise ConfigError(f"{where}: {len(expect)} expected documents cannot all be in the "
                              f"top {k}; raise k.")
        out.append(Canary(query=query, expect=tuple(expect), k=k, space=space))
    return tuple(out)


class _Reader:
    """Typed access to dotted keys with errors that name the key."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.file, self.data = path, data

    def get(self, key: str, typ: Any, default: Any = None, required: bool = False) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                if required:
                    raise ConfigError(f"{self.file}: missing required key {key}.")
                return default
            node = node[part]
        if not isinstance(node, typ) or isinstance(node, bool) and typ is not bool:
            raise ConfigError(f"{self.file}: {key} has the wrong type ({type(node).__name__}).")
        return node

    def path(self, key: str, root: Path, default: str | None = None,
             required: bool = False) -> Path:
        value = self.get(key, str, default, required)
        return (root / Path(value).expanduser()).resolve()


def render_config(*, kb: str, corpus: Path, config_dir: Path, provider: str = "sentence-transformers",
                  backend: str = "edge") -> str:
    """A working config for ``kbguard init``; paths are written relative to the config folder."""
    # relative, so the config and its corpus can move together; absolute across drives
    try:
        corpus_s = Path(os.path.relpath(corpus.resolve(), config_dir.resolve())).as_posix()
    except ValueError:
        corpus_s = corpus.resolve().as_posix()
    model = "all-MiniLM-L6-v2" if provider == "sentence-transformers" else "fake-hash"
    include = ", ".join(f'"{g}"' for g in DEFAULT_INCLUDE)
    return f"""\
# kbguard KB config. Relative paths resolve against this file's folder.
[kb]
name = "{kb}"

[corpus]
path = "{corpus_s}"
include = [{include}]
exclude = []
max_file_mb = 20          # larger files are recorded as failed, not parsed

[chunking]
max_tokens = 256          # cap per chunk, in the first space's model tokens

[[spaces]]
name = "local"            # the named vector on each point
provider = "{provider}"
model = "{model}"
dim = 384
batch_size = 32

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
upsert_batch = 256
parse_workers = 2
"""
