"""A document whose chunks hold much less text than its source is reported by the rebuild."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbguard.config import SpaceConfig
from kbguard.ingest.chunk import chunk_elements
from kbguard.ingest.fidelity import LOW_TEXT_SHARE, low_text, source_text_chars, text_chars
from kbguard.ingest.parse import parse_document
from kbguard.providers.local import FakeEmbedder
from tests.kbtest import make_kb

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "corpus"
COUNT = FakeEmbedder(SpaceConfig(name="t", provider="fake", model="fake-hash", dim=8)).count_tokens
PROSE = ("Every account keeps its own settings for notifications, privacy and billing. "
         "Changes take effect at once and are recorded in the audit log of the account. ") * 4

# unstructured's HTML partitioning drops everything inside a <form>, and ASP.NET WebForms pages
# wrap their whole body in one: the text is really lost.
FORM_PAGE = f"""<html><head><title>Settings</title></head><body>
<h1>Account settings</h1>
<p>Sign in first.</p>
<form action="/save" method="post"><p>{PROSE}</p><p>{PROSE}</p></form>
</body></html>
"""


def test_a_document_whose_text_is_lost_is_in_the_rebuild_summary(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=1)
    kb.write("settings.html", FORM_PAGE)
    res = kb.cli("rebuild")
    assert res.code == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if "low text" in line]
    assert len(lines) == 1 and "settings.html: its chunks hold" in lines[0], res.stdout

    kb.write("settings.html", FORM_PAGE.replace("Account settings", "Your account settings"))
    report = kb.cli_json("rebuild")
    [low] = report["low_text"]
    assert low["path"] == "settings.html"
    assert 0 < low["chunk_chars"] < low["source_chars"] * LOW_TEXT_SHARE
    assert low["source_chars"] > text_chars(PROSE) * 2  # both paragraphs are counted
    # a document is checked when it is parsed: a no-op run lists nothing
    assert kb.cli_json("rebuild")["low_text"] == []


def test_a_document_with_text_whose_parse_is_empty_says_so(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=1)
    kb.write("form.html", f"<html><body><form><p>{PROSE}</p></form></body></html>")
    kb.write("title-only.html", FORM_PAGE.replace("<p>Sign in first.</p>", ""))
    failures = {f["path"]: f["error"] for f in kb.cli_json("rebuild")["failures"]}
    assert failures["form.html"].startswith(  # the parser found nothing at all
        f"form.html: no extractable text found, though the file holds about "
        f"{text_chars(PROSE):,} letters and digits of text: the .html parser lost them.")
    assert failures["title-only.html"].startswith(  # a heading alone makes no chunk
        f"no text found in the document, though the file holds about "
        f"{text_chars('Account settings' + PROSE * 2):,} letters and digits of text")


@pytest.mark.parametrize("suffix, source", [
    (".md", f"---\ntitle: skipped\n---\n# Intro\n\n<!-- not shown -->\n<div class='x'>{PROSE}</div>"
            f"\n\nSee [the guide](https://example.com/a/very/long/path/to/a/guide).\n"),
    (".html", f"<html><head><style>p {{ color: red }}</style></head><body><h1>Intro</h1>"
              f"<p class='lead'>{PROSE}</p><script>var x = 1;</script>"
              f"<p>See <a href='https://example.com/a/long/path'>the guide</a>.</p></body></html>"),
    (".rst", f"Intro\n=====\n\n.. toctree::\n   :maxdepth: 2\n\n   some/page\n\n{PROSE}\n\n"
             f"See :doc:`the </topics/guide>` :meth:`~django.db.models.Model.guide`.\n"),
    (".txt", f"Intro\n\n{PROSE}\n\nSee the guide.\n"),
])
def test_the_source_measure_counts_only_what_a_reader_sees(suffix: str, source: str) -> None:
    shown = text_chars(f"Intro {PROSE} See the guide")
    assert source_text_chars(suffix, source) == shown
    assert source_text_chars(".pdf", source) is None


@pytest.mark.parametrize("name", [
    "formats/security.md", "formats/conditional-view-processing.html", "formats/signing.txt",
    "topics/db/queries.rst",
])
def test_no_sample_document_is_reported(name: str) -> None:
    parsed = parse_document(SAMPLES / name)
    chunks = chunk_elements(parsed.elements, kb="k", path=name, max_tokens=256,
                            count_tokens=COUNT)
    assert parsed.source_chars
    assert low_text(name, parsed.source_chars, chunks) is None
