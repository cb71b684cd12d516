"""Turn one document into a flat list of structural elements (titles and text), offline.

Routes, by suffix:

    .md .markdown  markdown-it-py's CommonMark tokens, read directly (parse_markdown.py). Not
                   unstructured's ``partition_md``: it renders Markdown to HTML first, where
                   ``Vec<T>`` or ``<Form as Widget>`` reads as an element and swallows the text
                   after it, whole paragraphs included. About 4x faster too, and no NLP.
    .html .htm     unstructured ``partition_html``. It drops the text inside ``<form>``, ``<nav>``,
                   ``<figure>``, ``<dialog>``, ``<noscript>`` and ``<object>``; a page that
                   loses most of its text this way shows in the rebuild's low-text report.
    .rst           docutils -> HTML5 -> ``partition_html``. unstructured's ``partition_rst``
                   shells out to pandoc, which is not installed here; docutils is pure Python.
                   Sphinx roles and directives (``:doc:``, ``.. versionadded::``, ...), unknown
                   to plain docutils, are rendered as their text instead of as error messages.
    .txt           unstructured ``partition_text``
    .docx          unstructured ``partition_docx``
    .pdf           pdfminer.six text extraction, then ``partition_text``. unstructured's own
                   ``partition_pdf`` needs its ``[pdf]`` extra, which pulls a CUDA build of
                   torchvision that breaks sentence-transformers (and even its "fast" strategy
                   imports unstructured_inference); pdfminer.six is what that strategy uses to
                   read text anyway. Scanned PDFs (images only) have no text: kbguard does no OCR.

Why unstructured's NLP is replaced. unstructured 0.27 classifies every paragraph that markup
does not already classify (not a heading, list item, code block or table) with spaCy sentence
splitting and part-of-speech tags (``partition.text_type``), and loads the ``en_core_web_sm``
model for it, downloading the wheel from GitHub into site-packages when it is missing
(``nlp.tokenize._load_spacy_model``). That happens in ``partition_html`` (so for .rst too),
``partition_text`` and ``partition_docx``; no parameter turns it off. On first use kbguard
points unstructured's model loader at a model-free spaCy pipeline (tokenizer plus rule-based
sentencizer) and its installer at a function that refuses. No download can happen, and a file
parses to the same elements on every machine whether or not the model is installed, which keeps
chunk boundaries, and so point ids, stable. The cost: without POS tags unstructured cannot tell a
one-sentence paragraph from a title in plain text, so in .txt and .pdf a "title" that ends like
a sentence is kept as text. The patch is process-wide; it only changes how unstructured splits
and tags words.

Heavy imports (unstructured, spaCy, docutils, pdfminer, markdown-it) happen once per process,
on first use: ``parse_file`` runs in worker processes, and a no-op rebuild never imports them;
Markdown needs none but markdown-it.

Each text file's ``source_chars`` (letters and digits a reader sees, estimated without the
parser: fidelity.py) lets a rebuild report a document whose chunks hold much less text than its
source, whatever lost it.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import importlib
import io
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# the formats, by suffix, are the config's to know: it checks parsing.read_as against them
from kbguard.config.catalog import SUPPORTED_SUFFIXES, TEXT_SUFFIXES
from kbguard.errors import ParseError
from kbguard.ingest.elements import Element as Element  # parsing's result type, re-exported
from kbguard.ingest.fidelity import source_text_chars, text_lost
from kbguard.ingest.parse_markdown import markdown_elements

# unstructured pings its servers when imported and on every partition call, and prints a sales
# notice (to stdout on a terminal, where it would corrupt `--json`) unless these are set. They
# must be in the environment before the first `import unstructured` of a process.
OFFLINE_ENV = {"DO_NOT_TRACK": "1", "SCARF_NO_ANALYTICS": "1", "UNSTRUCTURED_DISABLE_NOTICE": "1"}

# Bump when a change here changes the elements of a file that parsed before: a rebuild then
# re-chunks every document (chunks whose text is unchanged keep their vectors).
PARSER_VERSION = 3

# Page furniture and pictures: repeated or empty text that would only pollute chunks.
_SKIPPED_CATEGORIES = frozenset({"PageBreak", "Header", "Footer", "PageNumber", "Image"})

_PARTITIONERS = {
    "html": ("unstructured.partition.html", "partition_html"),
    "text": ("unstructured.partition.text", "partition_text"),
    "docx": ("unstructured.partition.docx", "partition_docx"),
}

# unstructured accepts "" to mean "do not detect languages": detection costs time per element
# and kbguard does not use the result.
_NO_LANGUAGE = [""]


@dataclass(frozen=True)
class ParsedDocument:
    elements: list[Element]
    encoding: str | None  # the text encoding the bytes were read with; None for PDF and DOCX
    # letters and digits a reader sees in the source, estimated without the parser (fidelity.py);
    # None for PDF and DOCX
    source_chars: int | None = None


def parse_file(path: Path, read_as: Mapping[str, str] | None = None) -> list[Element]:
    """Parse one file into elements; raise ``ParseError`` with a reason the user can act on.

    ``read_as`` maps a suffix to the format to parse it as (``{".txt": ".rst"}`` for Sphinx
    sources). Never raises anything else for a bad file, so a pipeline can record the reason
    and go on.
    """
    return parse_document(path, read_as).elements


def parse_document(path: Path, read_as: Mapping[str, str] | None = None) -> ParsedDocument:
    """``parse_file``, and the encoding a text file was read with."""
    path = Path(path)
    suffix = path.suffix.lower()
    suffix = (read_as or {}).get(suffix, suffix)
    if suffix not in SUPPORTED_SUFFIXES:
        shown = f"'{suffix}'" if suffix else "no suffix"
        raise ParseError(
            f"{path.name}: unsupported file type ({shown}); kbguard parses "
            f"{', '.join(sorted(SUPPORTED_SUFFIXES))}. Convert it to one of these or exclude it "
            "from the corpus.")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"{path.name}: cannot read the file ({exc.strerror or exc}); "
                         "check that it exists and is readable.") from exc
    if not data:
        raise ParseError(f"{path.name}: empty file (0 bytes), nothing to index; add content "
                         "or remove the file from the corpus.")
    encoding = source_chars = None
    try:
        if suffix in TEXT_SUFFIXES:
            text, encoding = _decode_text(path, data, html=suffix in (".html", ".htm"))
            elements = _TEXT_ROUTES[suffix](path, text)
            source_chars = source_text_chars(suffix, text)
        else:
            elements = _BINARY_ROUTES[suffix](path, data)
    except ParseError:
        raise
    except Exception as exc:  # a parser bug on one file must surface as that file's reason
        raise ParseError(f"{path.name}: the {suffix} parser failed ({type(exc).__name__}: "
                         f"{exc}); check that the file opens in its usual application, or "
                         "exclude it.") from exc
    if not elements and text_lost(source_chars, elements):
        raise ParseError(f"{path.name}: no extractable text found, though the file holds about "
                         f"{source_chars:,} letters and digits of text: the {suffix} parser "
                         "lost them. Check the markup around that text, or report the file as "
                         "a kbguard bug.")
    if not elements:
        hint = (" A scanned PDF holds only images; kbguard does no OCR, so convert it with an "
                "OCR tool first." if suffix == ".pdf" else "")
        raise ParseError(f"{path.name}: no extractable text found.{hint} Add text or remove "
                         "the file from the corpus.")
    return ParsedDocument(elements, encoding, source_chars)


# -- routes -----------------------------------------------------------------------------------


def _parse_markdown(path: Path, text: str) -> list[Element]:
    return markdown_elements(text)


def _parse_html(path: Path, text: str) -> list[Element]:
    return _from_markup(_partitioner("html")(text=text, languages=_NO_LANGUAGE))


def _parse_rst(path: Path, text: str) -> list[Element]:
    html = _rst_to_html(text, source_path=str(path))
    if not html.strip():
        return []
    return _from_markup(_partitioner("html")(text=html, languages=_NO_LANGUAGE))


def _parse_txt(path: Path, text: str) -> list[Element]:
    return _from_plain_text(text)


def _parse_pdf(path: Path, data: bytes) -> list[Element]:
    # The header may sit after some junk bytes, but within the first KiB (PDF 1.7, annex H).
    if b"%PDF-" not in data[:1024]:
        raise ParseError(f"{path.name}: not a PDF (no %PDF- header); it may be another format "
                         "with a .pdf name: rename it with the right suffix or re-export it.")
    text = _pdf_text(path, data)
    if not text.strip():
        return []
    # A bare number on its own is a page number; pdfminer cannot tell it from content.
    return [e for e in _from_plain_text(text) if not e.text.isdigit()]


def _parse_docx(path: Path, data: bytes) -> list[Element]:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ParseError(f"{path.name}: not a DOCX file (a DOCX is a ZIP container, this is "
                         "not one); an old binary .doc renamed to .docx? Re-save it from Word "
                         "or LibreOffice as .docx.")
    try:
        parts = _partitioner("docx")(file=io.BytesIO(data), languages=_NO_LANGUAGE)
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        # python-docx: KeyError for a missing part, ValueError/PackageNotFoundError for a ZIP
        # that is not a Word package.
        raise ParseError(f"{path.name}: damaged or not a Word document ({type(exc).__name__}: "
                         f"{exc}); re-save it from Word or LibreOffice as .docx.") from exc
    return _from_docx(parts)


_TEXT_ROUTES: dict[str, Callable[[Path, str], list[Element]]] = {
    ".md": _parse_markdown,
    ".markdown": _parse_markdown,
    ".html": _parse_html,
    ".htm": _parse_html,
    ".rst": _parse_rst,
    ".txt": _parse_txt,
}
_BINARY_ROUTES: dict[str, Callable[[Path, bytes], list[Element]]] = {
    ".pdf": _parse_pdf,
    ".docx": _parse_docx,
}


# -- turning unstructured's elements into kbguard's -------------------------------------------


def _content(parts: Sequence[Any]) -> Iterator[tuple[Any, str]]:
    for part in parts:
        if part.category in _SKIPPED_CATEGORIES:
            continue
        text = (part.text or "").strip()
        if text:
            yield part, text


def _title(text: str, level: int) -> Element:
    return Element("title", " ".join(text.split()), level)


def _from_markup(parts: Sequence[Any]) -> list[Element]:
    """HTML-derived elements: a Title's category_depth is its heading tag (h1 -> 0)."""
    out = []
    for part, text in _content(parts):
        if part.category == "Title":
            depth = part.metadata.category_depth
            out.append(_title(text, depth + 1 if depth is not None else 0))
        else:
            out.append(Element("text", text))
    return out


# Headings do not end like sentences; without POS tags unstructured's title test lets short
# one-sentence paragraphs through, and these endings catch them.
_SENTENCE_END = re.compile(r"[.,;:]$")
# Short code lines in plain text (a prompt, an assignment, a call) look like titles too; taking
# them for headings would cut code samples into sections of their own.
_CODE_LINE = re.compile(r"^(>>>|\.\.\.|\$\s)|[=;{}]|^[a-z_][\w.]*\(.*\)$")


def _from_plain_text(text: str) -> list[Element]:
    parts = _partitioner("text")(text=text, languages=_NO_LANGUAGE)
    out = []
    for part, body in _content(parts):
        if (part.category == "Title" and not _SENTENCE_END.search(body)
                and not _CODE_LINE.search(body)):
            out.append(_title(body, 0))  # plain text says nothing about heading depth
        else:
            out.append(Element("text", body))
    return out


def _from_docx(parts: Sequence[Any]) -> list[Element]:
    """Word styles: "Title" is the document title, "Heading N" sits under it at level N + 1."""
    parts = list(_content(parts))
    has_title = any(p.metadata.style_name == "Title" for p, _ in parts)
    out = []
    for part, text in parts:
        style = part.metadata.style_name or ""
        if part.category != "Title" or style == "Subtitle":  # a subtitle heads no section
            out.append(Element("text", text))
        elif style == "Title":
            out.append(_title(text, 1))
        else:
            depth = part.metadata.category_depth or 0
            out.append(_title(text, depth + 1 + has_title))
    return out


# -- decoding text formats --------------------------------------------------------------------

_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_HTML_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.I)
# Control characters text does not hold (tab, line ends, form feed and DOS's end-of-file mark
# are allowed): above this share of the characters, the bytes are binary read as text.
_BINARY_CONTROLS = re.compile("[\x00-\x08\x0e-\x19\x1b-\x1f\x7f-\x9f]")
_MAX_CONTROL_SHARE = 0.01
# charset-normalizer rates how messy each decoding reads ("chaos"); on short texts its first
# pick among the single-byte code pages is often a rarer one that reads most letters the same
# (Baltic cp1257 for French: "garēon" for "garçon"). Windows-1252, the commonest legacy encoding
# and a superset of Latin-1's printable characters, wins when it reads about as cleanly, unless
# it would need the letters only Icelandic uses (ÐðÝýÞþ): those bytes are another code page's
# own letters (Turkish ğ ı ş in cp1254, Czech ý in cp1250).
_CP1252_CHAOS_MARGIN = 0.1
_CP1252_ICELANDIC = re.compile(rb"[\xd0\xdd\xde\xf0\xfd\xfe]")


def _decode_text(path: Path, data: bytes, *, html: bool = False) -> tuple[str, str]:
    """The text of a text file and the encoding it was read with.

    Strict UTF-8 first (a BOM is dropped); then UTF-16 by its BOM, an HTML file's declared
    charset, and a legacy encoding detected by charset-normalizer. Bytes that read as none of
    these, or only as control characters, are binary and raise ``ParseError``.
    """
    if data.startswith(codecs.BOM_UTF8):
        body = data[len(codecs.BOM_UTF8):]
        try:
            return body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            line = body.count(b"\n", 0, exc.start) + 1
            raise ParseError(
                f"{path.name}: starts with a UTF-8 byte order mark but is not valid UTF-8 at "
                f"byte offset {exc.start} (line {line}); the file is damaged or mixes "
                "encodings. Re-save it as UTF-8.") from exc
    if data.startswith(_UTF16_BOMS):
        try:
            return _checked(path, data.decode("utf-16")), "utf-16"
        except UnicodeDecodeError as exc:
            raise ParseError(f"{path.name}: starts with a UTF-16 byte order mark but is not "
                             "valid UTF-16; the file is damaged. Re-save it as UTF-8.") from exc
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ParseError(f"{path.name}: binary content in a {path.suffix} file (NUL byte at "
                         f"offset {nul}); is it really text? Give it its real suffix or "
                         "remove it from the corpus.")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    declared = _declared_charset(data) if html else None
    if declared is not None:
        with contextlib.suppress(UnicodeDecodeError):
            return _checked(path, data.decode(declared)), codecs.lookup(declared).name
    detected = _legacy_encoding(data)
    if detected is not None:
        with contextlib.suppress(UnicodeDecodeError):
            return _checked(path, data.decode(detected)), codecs.lookup(detected).name
    raise ParseError(f"{path.name}: not text: the bytes read as neither UTF-8 nor a legacy "
                     f"encoding such as Windows-1252; is it a binary file with a {path.suffix} "
                     "name? Give it its real suffix or remove it from the corpus.")


def _legacy_encoding(data: bytes) -> str | None:
    """The likeliest legacy encoding of bytes that are not UTF-8, or None if none fits."""
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    # UTF-16/32 without a byte order mark: text in them has NUL bytes, refused before this
    if best is None or str(best.encoding).startswith(("utf_16", "utf_32")):
        return None
    if "cp1252" in best.could_be_from_charset:
        return "cp1252"
    if not _CP1252_ICELANDIC.search(data) and any(
            "cp1252" in m.could_be_from_charset and m.chaos <= best.chaos + _CP1252_CHAOS_MARGIN
            for m in matches):
        return "cp1252"
    return str(best.encoding)


def _checked(path: Path, text: str) -> str:
    """``text`` unless control characters say it is binary content read as text."""
    controls = len(_BINARY_CONTROLS.findall(text))
    if controls > len(text) * _MAX_CONTROL_SHARE:
        raise ParseError(f"{path.name}: binary content in a {path.suffix} file ({controls} "
                         f"control characters in {len(text)}); is it really text? Give it its "
                         "real suffix or remove it from the corpus.")
    return text


def _declared_charset(data: bytes) -> str | None:
    match = _HTML_CHARSET.search(data[:4096])
    if not match:
        return None
    name = match.group(1).decode("ascii")
    try:
        codecs.lookup(name)
    except LookupError:
        return None
    return name


# -- PDF --------------------------------------------------------------------------------------


@functools.cache
def _pdfminer() -> Any:
    return importlib.import_module("pdfminer.high_level")


def _pdf_text(path: Path, data: bytes) -> str:
    high_level = _pdfminer()
    try:
        text = high_level.extract_text(io.BytesIO(data))
    except Exception as exc:  # pdfminer raises a dozen unrelated types for damaged files
        name = type(exc).__name__
        if "Password" in name or "Encryption" in name:
            raise ParseError(f"{path.name}: encrypted PDF ({name}); decrypt it (e.g. "
                             "`qpdf --decrypt`) or remove it from the corpus.") from exc
        raise ParseError(f"{path.name}: damaged or unreadable PDF ({name}: {exc}); re-export "
                         "it, or repair it (e.g. `qpdf in.pdf out.pdf`).") from exc
    # pdfminer ends each page with a form feed: make page ends paragraph ends.
    return str(text).replace("\x0c", "\n\n")


# -- unstructured, offline --------------------------------------------------------------------


@functools.cache
def _partitioner(name: str) -> Callable[..., list[Any]]:
    _offline_nlp()
    module, function = _PARTITIONERS[name]
    partition: Callable[..., list[Any]] = getattr(importlib.import_module(module), function)
    return partition


def _refuse_model_download() -> None:
    raise ParseError("unstructured tried to download a spaCy model; kbguard never downloads at "
                     "run time. Report this as a kbguard bug.")


@functools.cache
def _offline_nlp() -> None:
    os.environ.update(OFFLINE_ENV)
    import spacy
    from unstructured.nlp import tokenize

    if not (hasattr(tokenize, "_get_nlp") and hasattr(tokenize, "_install_spacy_model")):
        raise ParseError("this version of unstructured loads its NLP model differently from "
                         "0.27, so kbguard cannot keep parsing offline; install "
                         "'unstructured<0.28' (the version kbguard pins).")
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    tokenize._get_nlp = lambda: nlp  # type: ignore[assignment]
    tokenize._install_spacy_model = _refuse_model_download


# -- reStructuredText -------------------------------------------------------------------------

_DOCUTILS_SETTINGS = {
    "_disable_config": True,  # a docutils.conf in the cwd or home must not change the result
    "doctitle_xform": False,  # keep the top section a section, so h1 is level 1 in every file
    "initial_header_level": 1,
    "report_level": 5,  # drop every system message from the output
    "halt_level": 5,  # and never stop on one
    "warning_stream": False,
    "file_insertion_enabled": False,  # `.. include::` must not read files outside the corpus
    "raw_enabled": False,
    "syntax_highlight": "none",  # Pygments would fail on Sphinx lexer names like `pycon`
    "smart_quotes": False,
    "embed_stylesheet": False,
    "input_encoding": "unicode",
    "output_encoding": "unicode",
}

# Sphinx directives with nothing for a reader: navigation, index entries, cross-reference
# targets (Django's among them), and file inclusions.
_NO_TEXT_DIRECTIVES = frozenset({
    "toctree", "index", "highlight", "currentmodule", "module", "default-domain",
    "tabularcolumns", "sectionauthor", "moduleauthor", "codeauthor", "literalinclude",
    "automodule", "autoclass", "autofunction", "automethod", "autoattribute", "autodata",
    "autoexception", "autosummary", "setting", "templatetag", "templatefilter", "fieldlookup",
})
_CODE_DIRECTIVES = frozenset({"code", "code-block", "sourcecode", "console", "productionlist"})
# Sphinx's meaning wins where docutils has a directive of the same name, as in Sphinx itself:
# `.. class:: Paginator(object_list)` documents a class; Sphinx's code-block takes options
# (`:caption:`, `:emphasize-lines:`) that docutils' code directive rejects with its content.
_SPHINX_OVERRIDES = frozenset({"class"}) | _CODE_DIRECTIVES
# Sphinx accepts `:rfc:`Title <9110#section-15>``; docutils' own rfc/pep roles reject the
# titled form and leave the raw markup in the text, so Sphinx's reading wins here too.
_SPHINX_ROLE_OVERRIDES = frozenset({"rfc", "rfc-reference", "pep", "pep-reference"})
_CONDITION_DIRECTIVES = frozenset({"only", "ifconfig"})
_PROSE_ARGUMENT_DIRECTIVES = frozenset({"seealso", "centered"})
_VERSION_LABELS = {
    "versionadded": "Added in version",
    "versionchanged": "Changed in version",
    "versionremoved": "Removed in version",
    "deprecated": "Deprecated since version",
}
_TITLE_AND_TARGET = re.compile(r"^(.+?)\s*<[^<>]+>$", re.S)


@functools.cache
def _docutils() -> Any:
    """Import docutils and build the Sphinx-tolerant role and directive once per process."""
    from docutils import nodes, utils
    from docutils.core import publish_parts
    from docutils.parsers.rst import Directive, directives, roles

    class AnyOptions(dict[str, Callable[[str], str]]):
        """Accepts every option: Sphinx directives have dozens kbguard does not know."""

        def __missing__(self, key: str) -> Callable[[str], str]:
            unchanged: Callable[[str], str] = directives.unchanged
            return unchanged

        def __bool__(self) -> bool:  # docutils parses options only when the spec is truthy
            return True

    class SphinxDirective(Directive):  # type: ignore[misc]  # docutils ships no types
        """Any Sphinx directive, reduced to the text a reader of the built docs would see."""

        optional_arguments = 1
        final_argument_whitespace = True
        option_spec = AnyOptions()
        has_content = True

        def run(self) -> list[Any]:
            name = self.name.lower().rpartition(":")[2]  # py:function -> function
            if name in _NO_TEXT_DIRECTIVES:
                return []
            if name in _CODE_DIRECTIVES:
                code = "\n".join(self.content)
                return [nodes.literal_block(code, code)] if code.strip() else []
            out: list[Any] = []
            argument = self.arguments[0] if self.arguments else ""
            if name in _VERSION_LABELS:
                version, _, rest = argument.partition(" ")
                inline, _ = self.state.inline_text(rest.strip(), self.lineno)
                out.append(nodes.paragraph("", f"{_VERSION_LABELS[name]} {version}. ", *inline))
            elif argument and name in _PROSE_ARGUMENT_DIRECTIVES:
                inline, _ = self.state.inline_text(argument, self.lineno)
                out.append(nodes.paragraph("", "", *inline))
            elif argument and name not in _CONDITION_DIRECTIVES:
                # a signature, option or command name: verbatim, `*args` is not emphasis
                out.append(nodes.paragraph("", "", nodes.literal(argument, argument)))
            if self.content:
                holder = nodes.Element()
                self.state.nested_parse(self.content, self.content_offset, holder)
                out.extend(holder.children)
            return out

    def sphinx_role(name: str, rawtext: str, text: str, lineno: int, inliner: Any,
                    options: Any = None, content: Any = None) -> tuple[list[Any], list[Any]]:
        """`:doc:`, `:ref:`, `:class:`, ...: the text Sphinx would show, without the link."""
        text = utils.unescape(text)
        titled = _TITLE_AND_TARGET.match(text)
        if titled:
            shown = titled.group(1)
        else:
            shown = text.lstrip("!")
            if shown.startswith("~"):  # Sphinx shows only the last dotted part
                shown = shown[1:].rpartition(".")[2]
        return [nodes.literal(rawtext, shown)], []

    @contextlib.contextmanager
    def sphinx_tolerance() -> Iterator[None]:
        # Sphinx swaps docutils' lookups the same way (sphinx.util.docutils.sphinx_domains);
        # swapping them only for the call leaves docutils untouched for anyone else.
        original_directive, original_role = directives.directive, roles.role

        def directive(name: str, language: Any, document: Any) -> tuple[Any, list[Any]]:
            if name.lower() in _SPHINX_OVERRIDES:
                return SphinxDirective, []
            found, messages = original_directive(name, language, document)
            return (found, messages) if found else (SphinxDirective, [])

        def role(name: str, language: Any, lineno: int, reporter: Any) -> tuple[Any, list[Any]]:
            if name.lower() in _SPHINX_ROLE_OVERRIDES:
                return sphinx_role, []
            found, messages = original_role(name, language, lineno, reporter)
            return (found, messages) if found else (sphinx_role, [])

        directives.directive, roles.role = directive, role
        try:
            yield
        finally:
            directives.directive, roles.role = original_directive, original_role

    return publish_parts, sphinx_tolerance


def _rst_to_html(source: str, source_path: str) -> str:
    publish_parts, sphinx_tolerance = _docutils()
    with sphinx_tolerance():
        parts = publish_parts(source=source, source_path=source_path, writer="html5",
                              settings_overrides=_DOCUTILS_SETTINGS)
    return str(parts["body"])
