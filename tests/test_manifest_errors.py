"""A statement DuckDB refuses on an open manifest is a ManifestError that names the file and
what to do, never an internal error with a traceback; the work committed before it is kept."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from kbguard.errors import ManifestError
from kbguard.ingest.rebuild import rebuild
from kbguard.manifest import Manifest
from tests.kbtest import make_kb, manifest_sql

OTTERS = "# Changed\n\nA new text about otters and the rivers they live in.\n"


def _alter(path: Path, sql: str) -> None:
    con = duckdb.connect(str(path))
    con.execute(sql)
    con.close()


def test_a_rebuild_on_a_manifest_whose_table_was_altered_stops_with_a_manifest_error(
        tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    kb.cli_json("rebuild")
    path = kb.cfg.manifest
    # a column dropped outside kbguard: the rebuild fails at its store stage, recording the
    # state of the points it is about to write
    _alter(path, "ALTER TABLE store_state DROP COLUMN written_at")
    kb.write("doc0.md", OTTERS)
    expected = (f"Writing the manifest {path} failed: Binder Error: table \"store_state\" has 5 "
                "columns but 6 values were supplied. What was committed before is kept. Run "
                "`kbguard verify`: if it reports manifest damage, or the manifest's tables were "
                "changed outside kbguard, bring it back with `kbguard restore --latest` (or move "
                "it aside and run `kbguard rebuild --full`); otherwise run the command again.")

    with pytest.raises(ManifestError) as info:
        rebuild(kb.cfg)
    assert str(info.value) == expected
    assert isinstance(info.value.__cause__, duckdb.BinderException)

    res = kb.cli("rebuild")
    assert res.code == 2
    assert res.stderr.splitlines()[-1] == f"Error: {expected}"
    assert "Traceback" not in res.stderr and "Internal error" not in res.stderr
    res = kb.cli("rebuild", "--json")
    assert res.code == 2
    assert json.loads(res.stdout) == {"error": expected, "error_type": "ManifestError",
                                      "exit_code": 2}

    # the parse and the embedding were committed, the run is recorded as failed
    hashes = [h for h, in manifest_sql(path, "SELECT content_hash FROM chunks "
                                       "WHERE path = 'doc0.md'")]
    with Manifest.open(path, read_only=True) as m:
        texts = list(m.chunks.texts(hashes).values())
        assert len(texts) == 1 and "otters" in texts[0]
        cached = m.cache.vectors(kb.cfg.spaces[0].space_id, hashes)
        assert [h for h, _, _ in cached] == hashes
        assert m.points.pending_count() == 0  # the failed batch rolled back
        last = m.runs.last()
        assert last is not None and last["status"] == "failed"
        assert last["summary"] == {"error": expected}

    # once the table is put back, the same command finishes without embedding anything again
    _alter(path, "ALTER TABLE store_state ADD COLUMN written_at TIMESTAMPTZ")
    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == 0
    assert report["chunks"]["written"] == 1


def test_a_read_that_duckdb_refuses_is_a_manifest_error(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=1)
    kb.cli_json("rebuild")
    _alter(kb.cfg.manifest, "ALTER TABLE documents RENAME COLUMN encoding TO charset")
    res = kb.cli("status")
    assert res.code == 2
    assert res.stderr.startswith(f"Error: Reading the manifest {kb.cfg.manifest} failed: "
                                 "Binder Error: ")
    assert "Traceback" not in res.stderr
