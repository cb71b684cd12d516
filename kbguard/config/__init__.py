"""The KB config: one TOML file per knowledge base.

    catalog            what a config knows of providers, models and formats, as plain data
    provider_settings  the schema of one ``[[spaces.providers]]`` entry, one model per ``type``
    schema             the schema of the file: one pydantic model per TOML table
    explain            validation errors as one line per problem, in the file's own words
    load               ``Config``: the validated file and where it lives; ``load_config``
    render             what ``kbguard init`` writes, rendered from the schema

The config builds on nothing in kbguard but its errors and ``core``: the providers and parsers
import their facts from ``catalog``, never the other way round.
"""

from __future__ import annotations

from kbguard.config.catalog import PROVIDERS
from kbguard.config.load import DEFAULT_CONFIG, Config, load_config, parse_config
from kbguard.config.render import api_entry, init_config, kb_name_for, key_warnings, render_config
from kbguard.config.schema import (
    Canary,
    ChunkingTable,
    ConfigFile,
    CorpusTable,
    KbTable,
    ManifestTable,
    ParsingTable,
    RebuildTable,
    RecoveryTable,
    SearchTable,
    SnapshotsTable,
    SpaceConfig,
    StoreTable,
)

__all__ = [
    "DEFAULT_CONFIG",
    "PROVIDERS",
    "Canary",
    "ChunkingTable",
    "Config",
    "ConfigFile",
    "CorpusTable",
    "KbTable",
    "ManifestTable",
    "ParsingTable",
    "RebuildTable",
    "RecoveryTable",
    "SearchTable",
    "SnapshotsTable",
    "SpaceConfig",
    "StoreTable",
    "api_entry",
    "init_config",
    "kb_name_for",
    "key_warnings",
    "load_config",
    "parse_config",
    "render_config",
]
