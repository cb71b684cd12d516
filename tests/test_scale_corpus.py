"""The scale benchmark's corpus generator: same spec, same bytes; the 1 % update touches exactly
its plan and never the original of a hard-linked copy. Runs on a small built-in pool, so it
needs none of the downloaded documentation."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scale_corpus import (
    MARKER,
    CorpusSpec,
    TextPool,
    apply_update,
    document,
    estimate_chunks,
    extract_prose,
    link_copy,
    render,
    sections_for_points,
    update_plan,
    write_corpus,
)

POOL = TextPool(
    paragraphs=tuple(
        f"Paragraph {i} explains how the planner picks an index. It reads the statistics "
        f"first. Then it compares the cost of scan number {i} with a sequential scan. "
        f"Rust's borrow checker rejects aliasing of mutable references in case {i}."
        for i in range(60)),
    titles=tuple(f"Heading {i}: indexes and lifetimes" for i in range(25)),
    code=("fn main() {\n    println!(\"hello\");\n}", "SELECT *\nFROM t\nWHERE id = 1;"),
)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MARKER}


def test_same_spec_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    spec = CorpusSpec(docs=60, seed=7)
    write_corpus(POOL, spec, tmp_path / "a")
    write_corpus(POOL, spec, tmp_path / "b")
    write_corpus(POOL, CorpusSpec(docs=60, seed=8), tmp_path / "c")
    a, b, c = (digests(tmp_path / x) for x in "abc")
    assert len(a) == 60
    assert a == b
    assert set(a.values()).isdisjoint(c.values())


def test_same_bytes_in_another_process_whatever_its_hash_seed(tmp_path: Path) -> None:
    write_corpus(POOL, CorpusSpec(docs=30, seed=5), tmp_path / "here")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.test_scale_corpus import POOL, digests\n"
        "from benchmarks.scale_corpus import CorpusSpec, write_corpus\n"
        "write_corpus(POOL, CorpusSpec(docs=30, seed=5), Path(sys.argv[1]))\n"
        "print(json.dumps(digests(Path(sys.argv[1]))))\n")
    root = Path(__file__).resolve().parent.parent
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / hash_seed)], cwd=root,
            env={**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)},
            capture_output=True, text=True, check=True)
        assert json.loads(done.stdout) == digests(tmp_path / "here")


def test_markdown_and_html_mixed_with_real_structure(tmp_path: Path) -> None:
    spec = CorpusSpec(docs=200, seed=1)
    write_corpus(POOL, spec, tmp_path)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != MARKER]
    html = [p for p in files if p.suffix == ".html"]
    md = [p for p in files if p.suffix == ".md"]
    assert len(html) + len(md) == 200
    assert 20 <= len(html) <= 60            # about one in five
    text = md[0].read_text()
    assert text.startswith("# ") and "\n## " in text
    page = html[0].read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h1>" in page and "<p>" in page
    # the same paragraph recurs across documents, as boilerplate does in real corpora
    paragraphs = [p for f in md for p in f.read_text().split("\n\n") if p.startswith("Para")]
    assert len(set(paragraphs)) < len(paragraphs)


def test_the_update_touches_exactly_its_plan_and_spares_the_original(tmp_path: Path) -> None:
    spec = CorpusSpec(docs=500, seed=3)
    original, copy = tmp_path / "original", tmp_path / "copy"
    write_corpus(POOL, spec, original)
    before = digests(original)
    assert link_copy(original, copy) == 500

    summary = apply_update(POOL, spec, copy)
    after = digests(copy)

    plan = update_plan(spec)
    assert summary == {"edited": 3, "added": 1, "removed": 1}   # 1 % of 500
    path = {i: document(POOL, spec, i).path for i in (*plan.edited, *plan.removed, *plan.added)}
    assert {k for k in before if after.get(k) != before[k]} == \
        {path[i] for i in (*plan.edited, *plan.removed)}
    assert set(after) - set(before) == {path[i] for i in plan.added}
    assert all(path[i] not in after for i in plan.removed)
    assert digests(original) == before      # hard links replaced, never written through
    for i in plan.edited:                    # an edit rewrites one paragraph, not the page
        old = (original / path[i]).read_text().split("\n")
        new = (copy / path[i]).read_text().split("\n")
        assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1


def test_a_later_update_never_edits_a_removed_document() -> None:
    spec = CorpusSpec(docs=400, seed=0)
    first, second = update_plan(spec, 1), update_plan(spec, 2)
    assert not set(first.removed) & (set(second.edited) | set(second.removed))
    assert set(second.added).isdisjoint(first.added)


def test_an_interrupted_write_is_finished_and_a_different_corpus_refused(tmp_path: Path) -> None:
    spec = CorpusSpec(docs=40, seed=2)
    write_corpus(POOL, spec, tmp_path)
    full = digests(tmp_path)
    (tmp_path / MARKER).unlink()
    victim = sorted(tmp_path.rglob("*.md"))[0]
    victim.unlink()

    summary = write_corpus(POOL, spec, tmp_path)

    assert digests(tmp_path) == full
    assert summary["kept_from_interrupted_write"] == 39
    with pytest.raises(RuntimeError, match="holds a different corpus"):
        write_corpus(POOL, CorpusSpec(docs=41, seed=2), tmp_path)


def test_longer_documents_for_a_points_target() -> None:
    sections = sections_for_points(POOL, docs=100, points=2000)
    spec = CorpusSpec(docs=100, sections=sections)
    points = sum(estimate_chunks(document(POOL, spec, i)) for i in range(100))
    assert sections > 4
    assert 1800 <= points <= 2200


def test_prose_extraction_keeps_paragraphs_headings_and_code() -> None:
    page = """<html><head><script>var x = "<p>not prose</p>";</script></head><body>
    <nav><p>Home · Next · Previous, the navigation of every page of the manual</p></nav>
    <h2>5.2. Indexes and &amp; Keys</h2>
    <p>An index lets the server find rows without reading
       the whole table, at the cost of slower writes.</p>
    <pre>CREATE INDEX ON t (id);
SELECT * FROM t WHERE id = 1;</pre>
    <p>Too short.</p></body></html>"""
    pool = extract_prose([page, page])
    assert pool.paragraphs == ("An index lets the server find rows without reading the whole "
                               "table, at the cost of slower writes.",)
    assert pool.titles == ("Indexes and & Keys",)
    assert pool.code == ("CREATE INDEX ON t (id);\nSELECT * FROM t WHERE id = 1;",)
    assert render(document(pool, CorpusSpec(docs=1), 0)).count("An index lets") >= 1
