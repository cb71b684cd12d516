"""What ``kbguard init`` writes: a working config for a corpus, rendered from the schema.

``render_config`` builds the ``ConfigFile`` that ``init`` means (the KB's name, its corpus, the
spaces the chosen provider needs, every other table at its defaults) and ``to_toml`` writes it
by walking the schema: each key with its value and its field's description as a comment, each
table under its header, and a key with no value but an example as a commented-out line. So no
default is written here a second time, and a new key shows up in new configs by itself.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

from kbguard.config.catalog import DEFAULT_API_MODEL, DEFAULT_MODEL, OPENAI_MODELS, PROVIDERS
from kbguard.config.load import DEFAULT_CONFIG, Config, load_config
from kbguard.config.provider_settings import OpenAIProviderSettings
from kbguard.config.schema import (
    ConfigFile,
    CorpusTable,
    SpaceConfig,
    StoreTable,
    Table,
    inner_models,
    valid_name,
)
from kbguard.core.durable import atomic_write_text
from kbguard.errors import ConfigError, CorpusError


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
    if not valid_name(kb):
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
    # ASCII only: a KB name is part of every point id and of file names
    raw = "".join(c if c.isascii() and c.isalnum() or c in "-_" else "-"
                  for c in corpus.resolve().name)
    return raw if raw[:1].isalpha() else f"kb-{raw}" if raw else "kb"


def render_config(*, kb: str, corpus: Path, config_dir: Path, provider: str = "sentence-transformers",
                  backend: str = "edge", model: str = "", base_url: str = "",
                  api_key_env: str = "", dim: int = 0) -> str:
    """A working config for ``kbguard init``; paths are written relative to the config folder.

    Every value written is the schema's default unless an argument chose it, so a rendered
    config and one that leaves the keys out mean the same."""
    # relative, so the config and its corpus can move together; absolute across drives
    try:
        corpus_s = Path(os.path.relpath(corpus.resolve(), config_dir.resolve())).as_posix()
    except ValueError:
        corpus_s = corpus.resolve().as_posix()
    if provider == "openai":
        spaces = _api_spaces(model or DEFAULT_API_MODEL, api_entry(base_url, api_key_env), dim)
        notes = {"primary": "searched first: the API model",
                 "local": "the warm standby: search answers from it when the API is down"}
    else:
        spaces = (_space(name="local", provider=provider, model=model or DEFAULT_MODEL[provider],
                         **({"dim": dim} if dim else {})),)
        notes = {}
    file = ConfigFile(corpus=CorpusTable(path=corpus_s), spaces=spaces,
                      store=StoreTable.model_validate({"backend": backend}))
    return to_toml(file.for_kb(kb), notes)


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


def _api_spaces(model: str, api: OpenAIProviderSettings, dim: int) -> tuple[SpaceConfig, ...]:
    """An API primary space and the bundled MiniLM as its local standby."""
    known = OPENAI_MODELS.get(model.rsplit("/", 1)[-1])
    if not (dim or known):
        raise ConfigError(f"kbguard does not know the vector size of {model!r}; pass --dim N.")
    # the list price of OpenAI's own model; a gateway's name for it may cost something else
    price = OPENAI_MODELS[model].price_per_million_tokens if model in OPENAI_MODELS else 0.0
    entry = api.model_copy(update={"price_per_million_tokens": price})
    primary = _space(name="primary", provider="openai", model=model,
                     dim=dim or (known.dim if known else 0),
                     batch_size=entry.max_batch_texts, providers=(entry,))
    local = _space(name="local", provider="sentence-transformers",
                   model=DEFAULT_MODEL["sentence-transformers"])
    return primary, local


def _space(**values: Any) -> SpaceConfig:
    # Not validated here: a local model with no bundled copy is written all the same, and
    # loading the written file then names what the space lacks (model_path).
    return SpaceConfig.model_construct(**values)


# -- TOML from the schema ------------------------------------------------------------------

def to_toml(file: ConfigFile, notes: Mapping[str, str] | None = None) -> str:
    """``file`` as TOML, commented from the schema; ``notes`` are comments for the
    ``[[spaces]]`` tables, by space name."""
    out = [f"# {_summary(file)}"]
    for key in file.toml_keys():
        value = getattr(file, key)
        if isinstance(value, BaseModel):
            out += ["", *_table(key, value, f"[{key}]")]
            continue
        for entry in value:
            note = (notes or {}).get(entry.name, "") if isinstance(entry, SpaceConfig) else ""
            out += ["", *_table(key, entry, f"[[{key}]]", note)]
    return "\n".join(out) + "\n"


def _table(prefix: str, table: BaseModel, header: str, note: str = "") -> list[str]:
    """One table's lines: its header, its keys, then its arrays of tables."""
    about = note or _summary(table)
    lines = [f"# {about}", header] if about else [header]
    arrays: list[tuple[str, tuple[BaseModel, ...]]] = []
    keys = table.toml_keys() if isinstance(table, Table) else tuple(type(table).model_fields)
    for key in keys:
        field = type(table).model_fields[key]
        value = getattr(table, key)
        if isinstance(value, tuple) and inner_models(field.annotation):
            arrays.append((key, value))
        elif value is not None and value != {}:
            lines.append(_commented(f"{_key(key)} = {_value(value)}", field.description))
        elif field.examples:  # unset: show how it is written
            lines.append(_commented(f"# {_key(key)} = {_value(field.examples[0])}",
                                    field.description))
    for key, entries in arrays:
        for entry in entries:
            lines += ["", *_table(f"{prefix}.{key}", entry, f"[[{prefix}.{_key(key)}]]")]
    return lines


def _summary(table: BaseModel) -> str:
    """The first line of the table's own docstring: what the table is, to the reader."""
    doc = type(table).__dict__.get("__doc__") or ""
    return doc.strip().split("\n", 1)[0]


def _commented(line: str, comment: str | None) -> str:
    """``line`` with ``comment`` beside it, or above it when the line is long."""
    if not comment:
        return line
    return f"{line:<30}  # {comment}" if len(line) <= 40 else f"# {comment}\n{line}"


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, (str, Path)):
        return _string(value.as_posix() if isinstance(value, Path) else value)
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {value!r}")


def _string(text: str) -> str:
    # JSON's escapes are TOML's; TOML also wants DEL escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
