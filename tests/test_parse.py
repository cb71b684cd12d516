"""Parsing: every supported format yields its headings and text, offline; bad files say why."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from kbguard.errors import ParseError
from kbguard.ingest.parse import Element, parse_file

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "corpus"


def _titles(elements: list[Element]) -> list[str]:
    return [e.text for e in elements if e.kind == "title"]


def _text(elements: list[Element]) -> str:
    return "\n".join(e.text for e in elements)


def test_markdown_headings_keep_their_levels(tmp_path: Path) -> None:
    p = tmp_path / "a.md"
    p.write_text("# Top\n\nIntro text here.\n\n## Child\n\nChild text here.\n\n### Grandchild\n\n"
                 "Deep text.\n")
    els = parse_file(p)
    assert [(e.text, e.level) for e in els if e.kind == "title"] == [
        ("Top", 1), ("Child", 2), ("Grandchild", 3)]
    assert "Child text here." in _text(els)


def test_rst_with_sphinx_markup_reads_as_its_text(tmp_path: Path) -> None:
    p = tmp_path / "a.rst"
    p.write_text(
        "=====\nTitle\n=====\n\nSee :doc:`the guide </topics/x>` and :class:`~django.db.Model`.\n"
        "Status codes are in :rfc:`HTTP semantics <9110#section-15>`.\n\n"
        "Section\n=======\n\n.. versionadded:: 5.0\n\n    The new thing.\n\n"
        ".. code-block:: python\n    :caption: example\n\n    x = 1\n")
    els = parse_file(p)
    text = _text(els)
    assert _titles(els)[:2] == ["Title", "Section"]
    assert "the guide" in text and "Model" in text and "HTTP semantics" in text
    assert ":rfc:" not in text and ":doc:" not in text and "System Message" not in text
    assert "Added in version 5.0" in text and "x = 1" in text


def test_read_as_parses_a_txt_file_as_rst(tmp_path: Path) -> None:
    p = tmp_path / "page.txt"
    p.write_text("=====\nTitle\n=====\n\nBody with ``literal`` text.\n\nPart\n====\n\nMore.\n")
    assert _titles(parse_file(p, {".txt": ".rst"})) == ["Title", "Part"]
    assert "=====" in _text(parse_file(p))  # as plain text the underline is just text


@pytest.mark.parametrize("name, title, phrase", [
    ("formats/security.md", "Security in Django", "Cross site scripting"),
    ("formats/conditional-view-processing.html", "Conditional View Processing", "ETag"),
    ("formats/async.docx", "Asynchronous support", "async"),
    ("formats/pagination.pdf", None, "Paginator"),
    ("formats/signing.txt", None, "signing"),
    ("topics/testing/tools.rst", "Testing tools", "test client"),
])
def test_every_bundled_format_parses(name: str, title: str | None, phrase: str) -> None:
    els = parse_file(SAMPLES / name)
    assert len(els) > 5
    if title is not None:
        assert any(title.lower() in t.lower() for t in _titles(els)), _titles(els)[:5]
    assert phrase.lower() in _text(els).lower()


def test_parsing_downloads_nothing(tmp_path: Path) -> None:
    """unstructured would fetch a spaCy model for plain text; kbguard's parser never needs one."""
    import importlib.util

    p = tmp_path / "a.txt"
    p.write_text("A SHORT TITLE\n\nThis is a paragraph of plain text. It has two sentences.\n")
    els = parse_file(p)
    assert "paragraph of plain text" in _text(els)
    assert importlib.util.find_spec("en_core_web_sm") is None


def test_short_code_lines_in_plain_text_are_not_titles(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("Paginator objects\n\n>>> p.count\n\nmodel = Contact\n\np.page(2)\n\n"
                 "The paginator splits a list into pages of a given size for display.\n")
    els = parse_file(p)
    assert _titles(els) == ["Paginator objects"]
    assert ">>> p.count" in _text(els) and "model = Contact" in _text(els)


def _docx_without_document_part() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
    return buf.getvalue()


# The reason is what follows "<file name>: ": matching it from there means no part of the file
# name can pass for it.
@pytest.mark.parametrize("name, data, reason", [
    ("empty.md", b"", "empty file (0 bytes), nothing to index"),
    ("binary.txt", b"\x00\x01binary\x00" * 50,
     "binary content in a .txt file (NUL byte at offset 0)"),
    ("noise.md", bytes(range(128, 256)) * 8,
     "not text: the bytes read as neither UTF-8 nor a legacy encoding such as Windows-1252"),
    ("fake.pdf", b"hello, not a pdf", "not a PDF (no %PDF- header)"),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj garbage\n", "damaged or unreadable PDF ("),
    ("old.docx", b"\xd0\xcf\x11\xe0 an OLE file", "not a DOCX file (a DOCX is a ZIP container"),
    ("hollow.docx", _docx_without_document_part(), "the .docx parser failed ("),
    ("image.png", b"\x89PNG\r\n", "unsupported file type ('.png'); kbguard parses .docx, "),
])
def test_bad_files_raise_parse_error_with_a_reason(tmp_path: Path, name: str, data: bytes,
                                                   reason: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ParseError) as err:
        parse_file(p)
    assert str(err.value).startswith(f"{name}: {reason}"), str(err.value)
