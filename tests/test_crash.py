"""A rebuild killed with SIGKILL at any moment: the next one completes, embeds no cached text,
and the store equals a clean build's."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import long_markdown, make_kb, manifest_chunk_ids, store_contents

from kbguard.errors import ManifestError
from kbguard.manifest import Manifest


def _cached(cfg) -> set[str]:
    if not cfg.manifest.exists():
        return set()
    try:
        m = Manifest.open(cfg.manifest, read_only=True)
    except ManifestError as exc:
        # killed while the manifest was being created or migrated (the next rebuild finishes
        # the migrations): nothing can have been cached yet
        assert ("interrupted before it wrote anything" in str(exc)
                or "run any writing command" in str(exc)), exc
        return set()
    with m:
        return {r[0] for r in m.con.execute("SELECT content_hash FROM embeddings").fetchall()}


def _distinct_hashes(cfg) -> set[str]:
    with Manifest.open(cfg.manifest, read_only=True) as m:
        return {r[0] for r in m.con.execute("SELECT DISTINCT content_hash FROM chunks").fetchall()}


@pytest.fixture(scope="module")
def clean_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    kb = make_kb(root, docs=8)
    _edit_corpus(kb)
    kb.cli_json("rebuild")
    return store_contents(kb.cfg)


def _edit_corpus(kb) -> None:
    """The second-phase corpus: one edited, one removed, one added document."""
    p = kb.corpus / "doc3.md"
    p.write_text(p.read_text().replace("Paragraph 1 of part 1", "Paragraph 1 (edited) of part 1"))
    (kb.corpus / "doc5.md").unlink()
    kb.write("new.md", "# New\n\nA brand new document about zebras and their stripes.\n")
    for i in range(3):
        kb.write(f"added/extra{i}.md", long_markdown(f"Extra {i}", sections=3))


CRASH_POINTS = ["parse-commit:1", "embed-batch:3", "store-upsert:2", "store-delete:1"]


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_at_a_crash_point_then_rerun(tmp_path: Path, crash_at: str, clean_build) -> None:
    kb = make_kb(tmp_path, docs=8)
    # Build the original corpus, change it, then kill the update at the crash point. For the
    # delete point there must be something to delete, which only the update has.
    kb.cli_json("rebuild")
    _edit_corpus(kb)
    killed = kb.subprocess("rebuild", "--quiet", env={"KBGUARD_CRASH_AT": crash_at})
    assert killed.returncode == -signal.SIGKILL, (killed.stdout, killed.stderr)

    cached = _cached(kb.cfg)
    report = kb.cli_json("rebuild")
    assert report["chunks"]["embedded"] == len(_distinct_hashes(kb.cfg) - cached)
    assert set(store_contents(kb.cfg)) == manifest_chunk_ids(kb.cfg)
    assert store_contents(kb.cfg) == clean_build

    again = kb.cli_json("rebuild")
    assert again["chunks"]["embedded"] == 0 and again["chunks"]["written"] == 0


@pytest.mark.parametrize("delay", [0.4, 1.2, 2.5])
def test_sigkill_at_arbitrary_moments_of_a_first_build(tmp_path: Path, delay: float,
                                                        clean_build) -> None:
    kb = make_kb(tmp_path, docs=8)
    _edit_corpus(kb)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kbguard", "rebuild", "--quiet", "--config", str(kb.config_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    cached = _cached(kb.cfg)
    done = kb.subprocess("rebuild", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["chunks"]["embedded"] == len(_distinct_hashes(kb.cfg) - cached)
    assert store_contents(kb.cfg) == clean_build
