"""Text files in legacy encodings are read as what they say; binary content is still refused."""

from __future__ import annotations

import codecs
import random
from pathlib import Path

import duckdb
import pytest

import kbguard.manifest.migrations
from kbguard.errors import ParseError
from kbguard.ingest.parse import parse_document, parse_file
from kbguard.ingest.scan import file_md5
from kbguard.manifest import Manifest, now
from tests.kbtest import make_kb, manifest_sql

CP1252_TEXT = ("Quarterly report\n\nThe \u201cnet\u201d margin rose to 12 \u20ac per unit \u2014 "
               "the best since 2019, and it\u2019s still rising.\n")
LATIN1_TEXT = ("# Caf\u00e9s de Montr\u00e9al\n\nLe gar\u00e7on du caf\u00e9 \u00e0 Montr\u00e9al "
               "sert un cr\u00e8me br\u00fbl\u00e9e tr\u00e8s r\u00e9put\u00e9e. D\u00e9j\u00e0 "
               "vu, na\u00efve fa\u00e7ade.\n")
# Bytes with no NUL (so not refused by the cheap test) that read as no text encoding.
NOISE = random.Random(7).randbytes(3000).replace(b"\x00", b"\x01")


def test_a_cp1252_text_file_is_read_with_its_quotes_and_euro_sign(tmp_path: Path) -> None:
    p = tmp_path / "report.txt"
    p.write_bytes(CP1252_TEXT.encode("cp1252"))
    doc = parse_document(p)
    assert doc.encoding == "cp1252"
    assert [e.text for e in doc.elements] == [
        "Quarterly report",
        ("The \u201cnet\u201d margin rose to 12 \u20ac per unit \u2014 the best since 2019, and "
         "it\u2019s still rising.")]


def test_a_latin1_markdown_file_is_read_with_its_accents(tmp_path: Path) -> None:
    p = tmp_path / "cafes.md"
    p.write_bytes(LATIN1_TEXT.encode("latin-1"))
    doc = parse_document(p)
    # Windows-1252 prints every printable Latin-1 character the same: one name for both
    assert doc.encoding == "cp1252"
    assert [(e.kind, e.text) for e in doc.elements] == [
        ("title", "Caf\u00e9s de Montr\u00e9al"),
        ("text", LATIN1_TEXT.split("\n\n")[1].strip())]


@pytest.mark.parametrize("name, data, encoding, text", [
    ("plain.txt", "Gr\u00fc\u00dfe aus M\u00fcnchen.\n".encode(), "utf-8",
     "Gr\u00fc\u00dfe aus M\u00fcnchen."),
    ("bom.txt", codecs.BOM_UTF8 + "Caf\u00e9 cr\u00e8me.\n".encode(), "utf-8",
     "Caf\u00e9 cr\u00e8me."),
    ("wide.txt", "Caf\u00e9 cr\u00e8me, \u20ac 5.\n".encode("utf-16"), "utf-16",
     "Caf\u00e9 cr\u00e8me, \u20ac 5."),
    ("polish.txt", "Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144, "
     "dzie\u0144 dobry.\n".encode("cp1250"), "cp1250",
     "Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144, dzie\u0144 dobry."),
    ("turkish.txt", "T\u00fcrk\u00e7e metin: \u0131\u011fd\u0131r, \u015fi\u015fe, "
     "\u0130stanbul, \u00c7a\u011fr\u0131.\n".encode("cp1254"), "cp1254",
     ("T\u00fcrk\u00e7e metin: \u0131\u011fd\u0131r, \u015fi\u015fe, \u0130stanbul, "
     "\u00c7a\u011fr\u0131.")),
    ("declared.html", '<html><head><meta charset="iso-8859-15"></head><body><p>Prix : 5 \u20ac'
     "</p></body></html>".encode("iso-8859-15"), "iso8859-15", "Prix : 5 \u20ac"),
    ("undeclared.html", "<html><body><p>\u201cSmart\u201d quotes \u2013 na\u00efve.</p>"
     "</body></html>".encode("cp1252"), "cp1252", "\u201cSmart\u201d quotes \u2013 na\u00efve."),
])
def test_text_is_decoded_with_the_encoding_it_was_written_in(
        tmp_path: Path, name: str, data: bytes, encoding: str, text: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    doc = parse_document(p)
    assert (doc.encoding, [e.text for e in doc.elements]) == (encoding, [text])


@pytest.mark.parametrize("name, data, reason", [
    ("blob.txt", NOISE, "not text: the bytes read as neither UTF-8 nor a legacy encoding"),
    ("blob.md", b"\x1b[1m caf\xe9 \x01\x02\x03\x04\x05\x06\n" * 40,
     "not text: the bytes read as neither UTF-8 nor a legacy encoding"),
    ("blob.txt", b"\x00\x01binary\x00" * 50,
     "binary content in a .txt file (NUL byte at offset 0)"),
    # a declared charset reads any byte: the control characters give the binary away
    ("blob.html", b'<meta charset="iso-8859-1">' + b"\x01\x02\x03\x04\xff" * 40,
     "binary content in a .html file (160 control characters in 227)"),
    ("blob.txt", codecs.BOM_UTF8 + b"fine\nthen \xe9", ("starts with a UTF-8 byte order mark "
     "but is not valid UTF-8 at byte offset 10 (line 2)")),
    ("blob.txt", codecs.BOM_UTF16_LE + b"\x00\xd8" * 10, ("starts with a UTF-16 byte order mark "
     "but is not valid UTF-16")),
])
def test_binary_content_with_a_text_name_is_still_refused(tmp_path: Path, name: str,
                                                          data: bytes, reason: str) -> None:
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(ParseError) as err:
        parse_file(p)
    assert str(err.value).startswith(f"{name}: {reason}")


def _documents(manifest: Path) -> dict[str, tuple[str, str | None]]:
    return {p: (s, e) for p, s, e in manifest_sql(
        manifest, "SELECT path, status, encoding FROM documents")}


def test_a_rebuild_indexes_legacy_files_and_records_their_encoding(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=1, max_tokens=256)
    kb.write("report.txt", CP1252_TEXT.encode("cp1252"))
    kb.write("cafes.md", LATIN1_TEXT.encode("latin-1"))
    kb.write("blob.txt", NOISE)

    report = kb.cli_json("rebuild")
    assert report["documents"]["added"] == 3
    assert [(f["path"], f["error"][:24]) for f in report["failures"]] == [
        ("blob.txt", "blob.txt: not text: the ")]
    assert _documents(kb.cfg.manifest) == {
        "doc0.md": ("ok", "utf-8"), "report.txt": ("ok", "cp1252"),
        "cafes.md": ("ok", "cp1252"), "blob.txt": ("failed", None)}
    chunks = dict(manifest_sql(
        kb.cfg.manifest, "SELECT path, string_agg(text, '\n' ORDER BY seq) FROM chunks "
        "WHERE path <> 'doc0.md' GROUP BY path"))
    assert chunks == {
        "report.txt": "Quarterly report\n\n" + CP1252_TEXT.split("\n\n")[1].strip(),
        "cafes.md": "Caf\u00e9s de Montr\u00e9al\n\n" + LATIN1_TEXT.split("\n\n")[1].strip()}

    hits = kb.cli_json("search", "Montr\u00e9al gar\u00e7on cr\u00e8me", "-k", "1")["results"]
    assert hits[0]["path"] == "cafes.md"
    assert "Montr\u00e9al sert un cr\u00e8me br\u00fbl\u00e9e" in hits[0]["snippet"]

    st = kb.cli_json("status")
    assert st["encodings"] == {"cp1252": 2, "utf-8": 1}
    assert "  encodings  2 cp1252, 1 utf-8" in kb.cli("status").stdout.splitlines()


def test_files_refused_as_not_utf8_before_are_parsed_again_after_the_upgrade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest written before encodings were read holds the legacy file as failed, with the
    hash that would stop it being retried: the migration lets the next rebuild read it."""
    kb = make_kb(tmp_path, docs=1)
    legacy = kb.write("cafes.md", LATIN1_TEXT.encode("latin-1"))
    migrations = kbguard.manifest.migrations
    with monkeypatch.context() as old:
        old.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        old.setattr(migrations, "SCHEMA_VERSION", 2)
        Manifest.open(kb.cfg.manifest, kb=kb.cfg.kb).close()
    st = legacy.stat()
    manifest_sql(
        kb.cfg.manifest, "INSERT INTO documents VALUES (?, ?, ?, ?, NULL, 'failed', ?, 0, ?)",
        ["cafes.md", file_md5(legacy), st.st_size, st.st_mtime_ns,
         ("cafes.md: invalid UTF-8 at byte offset 6 (line 1, byte 0xe9); kbguard reads "
          "text files as UTF-8. Convert the file, e.g. `iconv -f WINDOWS-1252 -t UTF-8` "
          "if it came from Windows."), now()], write=True)
    con = duckdb.connect(str(kb.cfg.manifest), read_only=True)
    assert con.execute("SELECT max(version) FROM migrations").fetchone() == (2,)
    con.close()

    report = kb.cli_json("rebuild")
    assert report["failures"] == []
    assert report["documents"]["added"] == 2
    assert _documents(kb.cfg.manifest) == {"doc0.md": ("ok", "utf-8"),
                                           "cafes.md": ("ok", "cp1252")}
