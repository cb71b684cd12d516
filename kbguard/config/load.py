"""Loading a KB config: the validated file and where it lives, which is all a ``Config`` is.

Relative paths resolve against the config file's folder, so a config works from any current
directory. ``load_config`` validates everything up front; nothing downstream re-checks it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kbguard.config.explain import config_error
from kbguard.config.schema import Canary, ConfigFile, SpaceConfig, valid_name
from kbguard.errors import ConfigError

DEFAULT_CONFIG = "kbguard.toml"


@dataclass(frozen=True)
class Config:
    """A KB config: the validated ``file`` and its ``path``. What the rest of kbguard reads are
    views of the two: the file's values, with the defaults that follow the KB's name filled in
    and every path resolved against the file's folder."""

    path: Path
    file: ConfigFile

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def kb(self) -> str:
        return self.file.kb.name or self.path.stem

    def _resolve(self, value: str | Path) -> Path:
        return (self.root / Path(value).expanduser()).resolve()

    # -- the corpus and how it is read -------------------------------------------------------
    @cached_property
    def corpus(self) -> Path:
        return self._resolve(self.file.corpus.path)

    @property
    def include(self) -> tuple[str, ...]:
        return self.file.corpus.include

    @property
    def exclude(self) -> tuple[str, ...]:
        return self.file.corpus.exclude

    @property
    def max_file_mb(self) -> float:
        return self.file.corpus.max_file_mb

    @property
    def read_as(self) -> dict[str, str]:
        return dict(self.file.parsing.read_as)

    @property
    def max_tokens(self) -> int:
        return self.file.chunking.max_tokens

    @property
    def parse_workers(self) -> int:
        return self.file.rebuild.parse_workers

    # -- embedding ----------------------------------------------------------------------------
    @cached_property
    def spaces(self) -> tuple[SpaceConfig, ...]:
        return tuple(self._resolve_space(s) for s in self.file.spaces)

    def space(self, name: str) -> SpaceConfig:
        for s in self.spaces:
            if s.name == name:
                return s
        raise ConfigError(f"No embedding space named {name!r}; the config has "
                          f"{', '.join(s.name for s in self.spaces)}.")

    def _resolve_space(self, space: SpaceConfig) -> SpaceConfig:
        """The space with its model paths and key files resolved."""
        entries = tuple(
            e.model_copy(update={k: self._resolve(v) for k in ("model_path", "api_key_file")
                                 if (v := getattr(e, k, None)) is not None})
            for e in space.providers)
        update: dict[str, Any] = {"providers": entries}
        if space.model_path is not None:
            update["model_path"] = self._resolve(space.model_path)
        return space.model_copy(update=update)

    # -- where the KB lives -------------------------------------------------------------------
    @property
    def store_backend(self) -> str:
        return self.file.store.backend

    @cached_property
    def store_path(self) -> Path | None:
        path = self.file.store.path_for(self.kb)
        return None if path is None else self._resolve(path)

    @property
    def store_url(self) -> str | None:
        return self.file.store.url

    @property
    def store_api_key_env(self) -> str | None:
        """The NAME of the variable holding the Qdrant server's API key."""
        return self.file.store.api_key_env

    @property
    def collection(self) -> str:
        return self.file.store.collection_for(self.kb)

    @property
    def upsert_batch(self) -> int:
        return self.file.rebuild.upsert_batch

    @cached_property
    def manifest(self) -> Path:
        return self._resolve(self.file.manifest.path_for(self.kb))

    @cached_property
    def snapshot_root(self) -> Path:
        return self._resolve(self.file.snapshots.root_for(self.kb))

    # -- checks and objectives ----------------------------------------------------------------
    @property
    def canaries(self) -> tuple[Canary, ...]:
        return self.file.canaries

    @property
    def query_timeout_s(self) -> float:
        return self.file.search.query_timeout_s

    @property
    def rto_single_failure_s(self) -> float:
        """One component lost or damaged: store, manifest, API."""
        return self.file.recovery.rto_single_failure_s

    @property
    def rto_full_rebuild_s(self) -> float:
        """Everything but git and the DVC remote lost."""
        return self.file.recovery.rto_full_rebuild_s

    def with_store(self, path: Path, collection: str) -> Config:
        """This KB with its vectors in a local store at ``path``, under ``collection``."""
        store = self.file.store.model_copy(update={"path": str(path), "url": None,
                                                   "api_key_env": None,
                                                   "collection": collection})
        return replace(self, file=self.file.model_copy(update={"store": store}))


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
    """Validate the TOML ``data`` of the config file at ``path``."""
    try:
        file = ConfigFile.model_validate(data)
    except ValidationError as exc:
        raise config_error(path, exc) from None
    if file.kb.name is None and not valid_name(path.stem):
        raise ConfigError(f"{path}: the config has no kb.name and its file name {path.stem!r} "
                          "is not a valid KB name; add [kb] name = \"...\" (a letter, then "
                          "letters, digits, '-' or '_').")
    return Config(path, file)
