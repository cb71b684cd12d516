"""The incremental rebuild on real DuckDB manifests and real stores (both adapters)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.kbtest import (
    KB,
    long_markdown,
    make_kb,
    manifest_chunk_ids,
    manifest_sql,
    store_contents,
    write_config,
)


def test_first_build_then_noop_embeds_and_writes_nothing(tmp_path: Path, backend: str) -> None:
    kb = make_kb(tmp_path, backend=backend)
    first = kb.cli_json("rebuild")
    assert first["documents"]["added"] == 3
    assert first["chunks"]["embedded"] > 0
    assert first["chunks"]["written"] == first["chunks"]["total"]

    again = kb.cli_json("rebuild")
    assert again["documents"] == {"added": 0, "changed": 0, "removed": 0, "unchanged": 3,
                                  "failed": 0}
    assert again["chunks"]["embedded"] == 0
    assert again["chunks"]["written"] == 0
    assert again["chunks"]["deleted"] == 0
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)


def test_json_report_has_the_documented_keys(kb: KB) -> None:
    report = kb.cli_json("rebuild")
    # README: "at least documents.{...}, chunks.{...}, failures, stages and seconds"
    assert set(report["documents"]) >= {"added", "changed", "removed", "unchanged", "failed"}
    assert set(report["chunks"]) >= {"total", "embedded", "reused", "written", "deleted"}
    assert report["failures"] == []
    assert set(report["stages"]) >= {"scan", "parse", "embed", "store"}
    assert isinstance(report["seconds"], float)


def test_editing_one_paragraph_embeds_only_its_section(tmp_path: Path, backend: str) -> None:
    kb = make_kb(tmp_path / "a", backend=backend, docs=0)
    original = long_markdown("Long", sections=12, paragraphs=4)
    kb.write("long.md", original)
    kb.cli_json("rebuild")
    before = dict(manifest_sql(kb.cfg.manifest, "SELECT point_id, section FROM chunks"))

    edited = original.replace("Paragraph 2 of part 6 in Long",
                              "Paragraph 2 of part 6, rewritten entirely, in Long")
    assert edited != original
    kb.write("long.md", edited)
    report = kb.cli_json("rebuild")

    after = dict(manifest_sql(kb.cfg.manifest, "SELECT point_id, section FROM chunks"))
    new_ids = set(after) - set(before)
    assert new_ids, "the edit must change at least one chunk"
    assert {after[i] for i in new_ids} == {"Long > Long part 6"}
    section_chunks = sum(1 for s in before.values() if s == "Long > Long part 6")
    assert 1 <= report["chunks"]["embedded"] <= section_chunks
    assert report["chunks"]["deleted"] == len(set(before) - set(after))

    # The store holds exactly the chunks of the new text, equal to a clean build's.
    clean = make_kb(tmp_path / "b", backend=backend, docs=0)
    clean.write("long.md", edited)
    clean.cli_json("rebuild")
    assert store_contents(kb.cfg) == store_contents(clean.cfg)


def test_deleting_a_document_deletes_its_points(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    (kb.corpus / "doc1.md").unlink()
    report = kb.cli_json("rebuild")
    assert report["documents"]["removed"] == 1
    assert report["chunks"]["deleted"] > 0
    points = store_contents(kb.cfg)
    assert set(points) == manifest_chunk_ids(kb.cfg)
    assert not [p for p in points.values() if p[1]["path"] == "doc1.md"]


def test_renaming_a_document_embeds_nothing_and_leaves_no_orphan(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    (kb.corpus / "sub").mkdir()
    shutil.move(kb.corpus / "doc2.md", kb.corpus / "sub" / "renamed.md")
    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == 0
    assert report["documents"]["added"] == 1 and report["documents"]["removed"] == 1
    points = store_contents(kb.cfg)
    assert set(points) == manifest_chunk_ids(kb.cfg)
    paths = {p[1]["path"] for p in points.values()}
    assert "doc2.md" not in paths and "sub/renamed.md" in paths


def test_full_rebuild_recreates_the_store_from_the_cache(built_kb) -> None:
    kb = built_kb()
    before = store_contents(kb.cfg)
    report = kb.cli_json("rebuild", "--full")
    assert report["chunks"]["embedded"] == 0
    assert report["chunks"]["written"] == len(before)
    assert store_contents(kb.cfg) == before


def test_a_lost_store_is_rebuilt_from_the_cache_without_embedding(built_kb) -> None:
    kb = built_kb()
    before = store_contents(kb.cfg)
    shutil.rmtree(kb.cfg.store_path)
    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == 0
    assert report["chunks"]["written"] == len(before)
    assert any("store was missing" in n for n in report["notes"])
    assert store_contents(kb.cfg) == before


def test_touching_a_file_refreshes_the_stat_cache_without_parsing(built_kb) -> None:
    kb = built_kb()
    p = kb.corpus / "doc0.md"
    p.write_text(p.read_text())  # same bytes, new mtime
    report = kb.cli_json("rebuild")
    assert report["documents"]["unchanged"] == 3
    assert report["chunks"]["embedded"] == 0
    [(mtime,)] = manifest_sql(kb.cfg.manifest,
                              "SELECT mtime_ns FROM documents WHERE path = 'doc0.md'")
    assert mtime == p.stat().st_mtime_ns


@pytest.mark.slow  # starts a pool of parser processes
def test_parallel_parsing_gives_the_same_manifest_as_serial(tmp_path: Path) -> None:
    serial = make_kb(tmp_path / "s", docs=8, workers=1)
    parallel = make_kb(tmp_path / "p", docs=8, workers=2)
    serial.cli_json("rebuild")
    parallel.cli_json("rebuild")
    assert store_contents(serial.cfg) == store_contents(parallel.cfg)


def test_changed_chunking_settings_rechunk_every_document(built_kb) -> None:
    kb = built_kb(docs=2)  # max_tokens = 64
    coarse = manifest_chunk_ids(kb.cfg)
    write_config(kb.config_path, kb.corpus, max_tokens=32)
    report = kb.cli_json("rebuild")
    assert report["documents"]["changed"] == 2
    assert any("settings changed" in n for n in report["notes"])
    fine = manifest_chunk_ids(kb.cfg)
    assert fine != coarse and set(store_contents(kb.cfg)) == fine
    assert kb.cli_json("rebuild")["documents"]["changed"] == 0


def test_read_as_indexes_sphinx_txt_sources_as_rst(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=0, extra='[parsing]\nread_as = { ".txt" = ".rst" }\n')
    kb.write("page.txt", "=====\nGuide\n=====\n\nIntro text.\n\nInstall\n=======\n\n"
                         "Run ``pip install`` first.\n")
    kb.cli_json("rebuild")
    sections = {r[0] for r in manifest_sql(kb.cfg.manifest, "SELECT section FROM chunks")}
    assert "Guide > Install" in sections


def test_an_empty_corpus_says_that_nothing_matched(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=0)
    kb.write("notes.odt", b"not a supported format")
    report = kb.cli_json("rebuild")
    assert report["documents"]["added"] == 0
    assert any("matches corpus.include" in n for n in report["notes"])


def test_a_new_parser_version_rechunks_every_document(built_kb, monkeypatch) -> None:
    kb = built_kb(docs=2)
    import kbguard.ingest.parse

    monkeypatch.setattr(kbguard.ingest.parse, "PARSER_VERSION", kbguard.ingest.parse.PARSER_VERSION + 1)
    report = kb.cli_json("rebuild")
    assert report["documents"]["changed"] == 2 and report["chunks"]["embedded"] == 0
    assert kb.cli_json("rebuild")["documents"]["changed"] == 0
