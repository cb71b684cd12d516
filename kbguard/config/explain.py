"""Validation errors of a config file, explained in the file's own words.

Each pydantic error becomes one line that names the key as written in TOML (``spaces.dim``),
where it is among arrays of tables (``in [[spaces]] #2``), what was expected and what was found;
for a typo, the nearest valid key.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kbguard.config.schema import NAME_PATTERN, ConfigFile, inner_models
from kbguard.errors import ConfigError


def config_error(path: Path, exc: ValidationError) -> ConfigError:
    """One ``ConfigError`` naming every problem ``exc`` found in the config file at ``path``."""
    errors = exc.errors(include_url=False)
    # an item that failed also makes its list "too short": say only what is wrong
    problems = [_explain(err) for err in errors
                if not (err["type"] == "too_short" and any(
                    len(o["loc"]) > len(err["loc"]) and o["loc"][:len(err["loc"])] == err["loc"]
                    for o in errors))]
    return ConfigError(f"{path} has {'an error' if len(problems) == 1 else 'errors'}:\n  "
                       + "\n  ".join(problems) + "\nFix the file and run again.")


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "bool_type": "true or false",
    "string_type": "a string in quotes", "float_type": "a number",
    "list_type": "a list, e.g. [\"a\", \"b\"]", "tuple_type": "a list, e.g. [\"a\", \"b\"]",
    "dict_type": "a table", "model_type": "a table", "model_attributes_type": "a table",
    "path_type": "a path in quotes",
}


def _explain(err: Any) -> str:
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
    models = inner_models(field.annotation) if field is not None else []
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
        candidates = inner_models(field.annotation)
    where = f" (in {', '.join(arrays)})" if arrays else ""
    return field, ".".join(keys), where


def _tag(model: Any) -> Any:
    field = getattr(model, "model_fields", {}).get("type")
    return field.default if field is not None else None


def _inner_model(annotation: Any) -> Any:
    """The model class inside ``X``, ``X | None``, ``tuple[X, ...]`` or ``Annotated[...]``."""
    models = inner_models(annotation)
    return models[0] if models else None


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

