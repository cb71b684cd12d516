"""The manifest file: migrations, KB binding, and what a damaged or foreign file says."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from kbguard.errors import ManifestError
from kbguard.manifest import SCHEMA_VERSION, Manifest


def _duckdb_file(path: Path, *sql: str) -> Path:
    con = duckdb.connect(str(path))
    for statement in sql:
        con.execute(statement)
    con.close()
    return path


@pytest.mark.parametrize("sql", [
    (),  # killed before the first statement: an empty database file
    ("CREATE TABLE migrations (version INTEGER PRIMARY KEY, name VARCHAR NOT NULL, "
     "applied_at TIMESTAMPTZ NOT NULL)",),  # killed after the bootstrap, before migration 1
])
def test_a_first_build_killed_early_says_rebuild_and_rebuild_migrates(tmp_path: Path,
                                                                       sql: tuple) -> None:
    path = _duckdb_file(tmp_path / "m.duckdb", *sql)
    with pytest.raises(ManifestError, match="interrupted before it wrote anything"):
        Manifest.open(path, read_only=True)
    Manifest.open(path, kb="kb").close()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT max(version) FROM migrations").fetchone() == (SCHEMA_VERSION,)
    con.close()
    with Manifest.open(path, read_only=True) as m:
        assert m.get_meta("kb") == "kb"


def test_a_foreign_duckdb_file_is_named_as_such(tmp_path: Path) -> None:
    path = _duckdb_file(tmp_path / "other.duckdb", "CREATE TABLE sales (id INTEGER)")
    with pytest.raises(ManifestError, match="not a kbguard manifest"):
        Manifest.open(path, read_only=True)


def test_a_manifest_belongs_to_one_kb(tmp_path: Path) -> None:
    path = tmp_path / "m.duckdb"
    Manifest.open(path, kb="docs").close()
    with pytest.raises(ManifestError, match="belongs to KB 'docs', but the config names KB 'wiki'"):
        Manifest.open(path, kb="wiki")
