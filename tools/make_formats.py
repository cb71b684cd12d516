"""One-off fixture generator, kept so the sample files can be made again: not part of kbguard.

Make the files in samples/corpus/formats/ from Django's documentation sources.

Each format file is one page of the Django 5.1.4 docs (reStructuredText, BSD-3-Clause; see
samples/LICENSES/Django-LICENSE), converted by the small reST reader below into the same
sections, paragraphs, lists and code blocks, written as:

    topics/security.txt                     -> security.md                         (Markdown)
    topics/signing.txt                      -> signing.txt                         (plain text)
    topics/conditional-view-processing.txt  -> conditional-view-processing.html    (HTML)
    topics/pagination.txt                   -> pagination.pdf                      (PDF)
    topics/async.txt                        -> async.docx                          (Word)

Headings stay headings in every format that has them (``#`` in Markdown, ``<h1>``.. in HTML,
Title/Heading N styles in Word; bold Helvetica in the PDF, a line of its own in plain text).
Sphinx cross-references are rendered as their text, the way Sphinx shows them.

The PDF is written by hand (no PDF library needed): text-only pages using the standard
Helvetica, Helvetica-Bold and Courier fonts with WinAnsiEncoding, and a correct xref table.
The .docx needs python-docx, which kbguard's environment already has.

Usage, from the repository root:

    pip download --no-deps --no-binary :all: django==5.1.4 -d /tmp/django
    tar xzf /tmp/django/Django-5.1.4.tar.gz -C /tmp/django
    .venv/bin/python tools/make_formats.py /tmp/django/Django-5.1.4/docs

The output is deterministic: the same sources give the same bytes.
"""

from __future__ import annotations

import argparse
import html
import io
import re
import sys
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

SOURCES = [
    ("topics/security.txt", "security.md"),
    ("topics/signing.txt", "signing.txt"),
    ("topics/conditional-view-processing.txt", "conditional-view-processing.html"),
    ("topics/pagination.txt", "pagination.pdf"),
    ("topics/async.txt", "async.docx"),
]
SOURCE_NOTE = ("From the Django 5.1.4 documentation ({path}), (c) Django Software Foundation "
               "and individual contributors, BSD-3-Clause licence.")


# -- document model ---------------------------------------------------------------------------

# Inline text is a list of (kind, text, url) segments; kind is plain, code, em, strong or link.
Inline = list[tuple[str, str, str]]


@dataclass
class Heading:
    level: int
    text: Inline


@dataclass
class Para:
    text: Inline


@dataclass
class Code:
    text: str


@dataclass
class ListBlock:
    ordered: bool
    items: list[list] = field(default_factory=list)  # each item: a list of blocks


@dataclass
class Note:
    """An admonition (note, warning, versionadded, ...): a label and its blocks."""
    label: str
    blocks: list


@dataclass
class Signature:
    """An API description (``.. class::``, ``.. function::``): signature, then its text."""
    kind: str
    signature: str
    blocks: list


# -- a small reStructuredText reader (the subset Django's topic pages use) --------------------

_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+:.])\1{2,}\s*$")
_LIST_ITEM = re.compile(r"^(\*|-|\+|#\.|\d+\.)( +)\S")
_DIRECTIVE = re.compile(r"^\.\.\s+([\w:-]+)::\s*(.*)$")
_TARGET = re.compile(r"^\.\.\s+_([^:]+|`[^`]+`):\s*(.*)$")
_CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "console"}
_SKIP_DIRECTIVES = {"module", "currentmodule", "index", "toctree", "highlight", "envvar"}
_API_DIRECTIVES = {"class", "function", "method", "attribute", "exception", "data",
                   "decorator", "classmethod", "staticmethod"}
_NOTE_LABELS = {"note": "Note", "warning": "Warning", "seealso": "See also", "tip": "Tip",
                "important": "Important", "hint": "Hint", "caution": "Caution"}
_VERSION_LABELS = {"versionadded": "Added in version", "versionchanged": "Changed in version",
                   "deprecated": "Deprecated since version"}


class RstReader:
    def __init__(self, source: str):
        self.lines = source.expandtabs(4).splitlines()
        self.links: dict[str, str] = {}
        for line in self.lines:  # named hyperlink targets: .. _name: https://...
            m = _TARGET.match(line.strip())
            if m and m.group(2).startswith(("http://", "https://")):
                self.links[m.group(1).strip("`").lower()] = m.group(2).strip()
        self.labels = self.section_labels(self.lines)
        self.styles: list[tuple[str, bool]] = []  # heading adornments, in order of appearance

    @staticmethod
    def section_labels(lines: list[str]) -> dict[str, str]:
        """``.. _label:`` right above a section title: the title, which :ref:`label` shows."""
        labels: dict[str, str] = {}
        pending: list[str] = []
        for k, line in enumerate(lines):
            m = _TARGET.match(line)
            if m and not m.group(2):
                pending.append(m.group(1).lower())
            elif line.strip() and not _ADORNMENT.match(line):
                below = lines[k + 1] if k + 1 < len(lines) else ""
                if pending and _ADORNMENT.match(below):
                    title = re.sub(r"``(.+?)``", r"\1", line.strip())
                    labels.update(dict.fromkeys(pending, title))
                pending = []
        return labels

    def read(self) -> list:
        return self.blocks(self.lines)

    # block level

    def blocks(self, lines: list[str]) -> list:
        out: list = []
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            stripped = line.strip()
            if not stripped:
                i += 1
                continue
            nxt = lines[i + 1] if i + 1 < n else ""
            if (_ADORNMENT.match(line) and i + 2 < n and lines[i + 1].strip()
                    and _ADORNMENT.match(lines[i + 2])):
                out.append(self.heading(lines[i + 1].strip(), line.strip()[0], True))
                i += 3
                continue
            if (not line[0].isspace() and _ADORNMENT.match(nxt)
                    and len(nxt.rstrip()) >= len(line.rstrip())):
                out.append(self.heading(stripped, nxt.strip()[0], False))
                i += 2
                continue
            if line.startswith(".."):
                body, i = self.indented(lines, i + 1)
                out.extend(self.explicit(line, body))
                continue
            if _LIST_ITEM.match(line):
                i = self.list_block(lines, i, out)
                continue
            if line[0].isspace():  # block quote or definition: its content, flattened
                body, i = self.indented(lines, i)
                out.extend(self.blocks(body))
                continue
            para = [stripped]
            i += 1
            while i < n and lines[i].strip() and not lines[i][0].isspace():
                para.append(lines[i].strip())
                i += 1
            text = " ".join(para)
            if text.endswith("::"):  # a literal block follows
                text = text[:-2].rstrip() if text == "::" or text.endswith(" ::") else text[:-1]
                if text:
                    out.append(Para(self.inline(text)))
                body, i = self.indented(lines, i)
                if body:
                    out.append(Code("\n".join(body).strip("\n")))
                continue
            out.append(Para(self.inline(text)))
        return out

    def heading(self, text: str, char: str, overline: bool) -> Heading:
        style = (char, overline)
        if style not in self.styles:
            self.styles.append(style)
        return Heading(self.styles.index(style) + 1, self.inline(text))

    @staticmethod
    def indented(lines: list[str], i: int) -> tuple[list[str], int]:
        """The indented lines from i on (blank lines included), dedented; and the next index."""
        start = i
        while i < len(lines) and (not lines[i].strip() or lines[i][0].isspace()):
            i += 1
        while i > start and not lines[i - 1].strip():
            i -= 1
        body = textwrap.dedent("\n".join(lines[start:i])).splitlines()
        return body, i

    def explicit(self, line: str, body: list[str]) -> list:
        m = _DIRECTIVE.match(line.strip())
        if not m:
            return []  # a hyperlink target or a comment
        name, argument = m.group(1), m.group(2).strip()
        # A directive's argument may go on over following lines; its options come next.
        content = list(body)
        while content and content[0].strip() and not content[0].startswith(":"):
            if name in _CODE_DIRECTIVES:
                break
            argument = f"{argument} {content.pop(0).strip()}".strip()
        while content and content[0].startswith(":"):
            content.pop(0)
        if name in _CODE_DIRECTIVES:
            return [Code("\n".join(content).strip("\n"))]
        if name in _SKIP_DIRECTIVES:
            return []
        if name in _API_DIRECTIVES:
            return [Signature(name, argument, self.blocks(content))]
        if name in _VERSION_LABELS:
            return [Note(f"{_VERSION_LABELS[name]} {argument}", self.blocks(content))]
        if name == "admonition":
            return [Note(argument, self.blocks(content))]
        if name in _NOTE_LABELS:
            inner = ([Para(self.inline(argument))] if argument else []) + self.blocks(content)
            return [Note(_NOTE_LABELS[name], inner)]
        return self.blocks(content)  # anything else: keep its text

    def list_block(self, lines: list[str], i: int, out: list) -> int:
        marker = _LIST_ITEM.match(lines[i]).group(1)
        ordered = marker not in "*-+"
        block = ListBlock(ordered)
        n = len(lines)
        while i < n:
            m = _LIST_ITEM.match(lines[i])
            if not m or (m.group(1) not in "*-+") == (not ordered) or lines[i][0].isspace():
                break
            width = len(m.group(1)) + len(m.group(2))
            item = [lines[i][width:]]
            i += 1
            while i < n and (not lines[i].strip() or lines[i].startswith(" " * width)):
                item.append(lines[i][width:])
                i += 1
            while item and not item[-1].strip():
                item.pop()
                i -= 1
            block.items.append(self.blocks(item))
            while i < n and not lines[i].strip():  # blank lines between items
                i += 1
        out.append(block)
        return i

    # inline markup

    _INLINE = re.compile(
        r"``(?P<code>.+?)``"
        r"|:(?P<role>[\w:.-]+):`(?P<roletext>.+?)`"
        r"|`(?P<ltext>[^`]+?)\s*<(?P<url>[^>`]+)>`__?"
        r"|`(?P<ref>[^`]+)`__?"
        r"|(?<![\w*])\*\*(?P<strong>\S(?:.*?\S)?)\*\*(?![\w*])"
        r"|(?<![\w*])\*(?P<em>[^\s*](?:[^*]*?[^\s*])?)\*(?![\w*])"
        r"|`(?P<plain>[^`]+)`"
        r"|(?<![\w`])(?P<bare>[A-Za-z][\w.-]*\w)__?(?![\w`])", re.S)

    def inline(self, text: str) -> Inline:
        text = text.replace("\\ ", "")
        out: Inline = []
        pos = 0
        for m in self._INLINE.finditer(text):
            if m.start() > pos:
                out.append(("plain", text[pos:m.start()], ""))
            pos = m.end()
            if m.group("code") is not None:
                out.append(("code", m.group("code"), ""))
            elif m.group("role") is not None:
                out.append(self.role(m.group("role"), m.group("roletext")))
            elif m.group("ltext") is not None:
                url = m.group("url")
                kind = "link" if url.startswith(("http://", "https://")) else "plain"
                out.append((kind, m.group("ltext"), url if kind == "link" else ""))
            elif m.group("ref") is not None:
                name = m.group("ref")
                url = self.links.get(name.lower(), "")
                out.append(("link" if url else "plain", name, url))
            elif m.group("strong") is not None:
                out.append(("strong", m.group("strong"), ""))
            elif m.group("em") is not None:
                out.append(("em", m.group("em"), ""))
            elif m.group("plain") is not None:
                out.append(("plain", m.group("plain"), ""))
            else:  # a one-word reference, name_: a link when its target is known
                name = m.group("bare")
                url = self.links.get(name.lower(), "")
                out.append(("link" if url else "plain", name, url))
        if pos < len(text):
            out.append(("plain", text[pos:], ""))
        return out

    def role(self, role: str, text: str) -> tuple[str, str, str]:
        """Sphinx's rendering of a cross-reference: its title, or its target (``~`` shortens)."""
        role = role.rsplit(":", 1)[-1]
        m = re.match(r"^(.+?)\s*<([^<>]+)>$", text, re.S)
        if m:
            title, target = m.group(1), m.group(2)
        else:
            title, target = None, text.lstrip("!")
            title = target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip(".")
        if role == "rfc":
            number = target.split("#")[0]
            url = f"https://datatracker.ietf.org/doc/html/rfc{number}.html"
            if "#" in target:
                url += "#" + target.split("#", 1)[1]
            return ("link", title if m else f"RFC {target}", url)
        if role == "ref" and not m:
            return ("plain", self.labels.get(target.lower(), title), "")
        if role in {"doc", "ref", "term"}:
            return ("plain", title, "")
        if role in {"func", "meth"} and not title.endswith(")"):
            title += "()"
        return ("code", title, "")


def plain(inline: Inline) -> str:
    return " ".join("".join(text for _, text, _ in inline).split())


# -- Markdown ---------------------------------------------------------------------------------


def md_inline(inline: Inline) -> str:
    out = []
    for kind, text, url in inline:
        text = " ".join(text.split()) if kind != "plain" else re.sub(r"\s+", " ", text)
        if kind == "code":
            fence = "``" if "`" in text else "`"
            out.append(f"{fence}{text}{fence}" if fence == "`" else f"`` {text} ``")
        elif kind == "em":
            out.append(f"*{text}*")
        elif kind == "strong":
            out.append(f"**{text}**")
        elif kind == "link":
            out.append(f"[{text}]({url})")
        else:
            out.append(re.sub(r"([\\`*_<\[\]])", r"\\\1", text))
    return "".join(out)


def md_blocks(blocks: list, prefix: str = "") -> list[str]:
    """Markdown lines; ``prefix`` indents (list items) or quotes (admonitions) them."""
    out: list[str] = []

    def emit(lines: list[str]) -> None:
        if out:
            out.append(prefix.rstrip())
        out.extend(f"{prefix}{line}".rstrip() if line else prefix.rstrip() for line in lines)

    for block in blocks:
        if isinstance(block, Heading):
            emit([f"{'#' * block.level} {md_inline(block.text)}"])
        elif isinstance(block, Para):
            emit(textwrap.wrap(md_inline(block.text), 90, break_long_words=False,
                               break_on_hyphens=False))
        elif isinstance(block, Code):
            emit(["```", *block.text.splitlines(), "```"])
        elif isinstance(block, ListBlock):
            lines: list[str] = []
            for number, item in enumerate(block.items, 1):
                marker = f"{number}. " if block.ordered else "- "
                body = md_blocks(item, " " * len(marker))
                body[0] = marker + body[0][len(marker):]
                if lines and any(len(i) > 1 for i in block.items):
                    lines.append("")
                lines.extend(body)
            emit(lines)
        elif isinstance(block, Note):
            inner = [f"**{block.label}**", "", *md_blocks(block.blocks)] if block.blocks \
                else [f"**{block.label}.**"]
            emit([f"> {line}".rstrip() for line in inner])
        elif isinstance(block, Signature):
            emit([f"`{block.kind} {block.signature}`"])
            inner = md_blocks(block.blocks)
            if inner:
                emit(inner)
    return out


def write_md(blocks: list, source: str) -> str:
    return f"<!-- {SOURCE_NOTE.format(path=source)} -->\n\n" + "\n".join(md_blocks(blocks)) + "\n"


# -- plain text -------------------------------------------------------------------------------


def txt_blocks(blocks: list, indent: str = "") -> list[str]:
    out: list[str] = []
    width = 79 - len(indent)
    for block in blocks:
        lines: list[str]
        if isinstance(block, Heading):
            lines = [plain(block.text)]
        elif isinstance(block, Para):
            lines = textwrap.wrap(plain(block.text), width, break_on_hyphens=False)
        elif isinstance(block, Code):
            lines = ["    " + line if line.strip() else "" for line in block.text.splitlines()]
        elif isinstance(block, ListBlock):
            lines = []
            for number, item in enumerate(block.items, 1):
                marker = f"{number}. " if block.ordered else "* "
                body = txt_blocks(item, " " * len(marker))
                while body and not body[0]:
                    body.pop(0)
                body[0] = marker + body[0].lstrip()
                lines.extend([*body, ""])
            lines.pop()
            out.extend(["", *[indent + line if line else "" for line in lines]])
            continue
        elif isinstance(block, Note):
            inner = txt_blocks(block.blocks)
            first = next((k for k, line in enumerate(inner) if line), None)
            if first is None:
                lines = [f"{block.label}."]
            else:
                text = f"{block.label}: {inner[first]}"
                inner[first] = text
                lines = inner[first:]
        else:  # Signature
            lines = [f"{block.kind} {block.signature}", *txt_blocks(block.blocks, "    ")]
        out.append("")
        out.extend(indent + line if line else "" for line in lines)
    return out


def write_txt(blocks: list, source: str) -> str:
    lines = txt_blocks(blocks)
    while lines and not lines[0]:
        lines.pop(0)
    note = textwrap.wrap(SOURCE_NOTE.format(path=source), 79)
    return "\n".join([*lines, "", *note]) + "\n"


# -- HTML -------------------------------------------------------------------------------------


def html_inline(inline: Inline) -> str:
    out = []
    for kind, text, url in inline:
        text = html.escape(" ".join(text.split()) if kind != "plain" else text, quote=False)
        if kind == "code":
            out.append(f"<code>{text}</code>")
        elif kind in {"em", "strong"}:
            out.append(f"<{kind}>{text}</{kind}>")
        elif kind == "link":
            out.append(f'<a href="{html.escape(url)}">{text}</a>')
        else:
            out.append(text)
    return re.sub(r"\s+", " ", "".join(out)).strip()


def html_blocks(blocks: list) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{html_inline(block.text)}</p>")
        elif isinstance(block, Code):
            out.append(f"<pre><code>{html.escape(block.text, quote=False)}</code></pre>")
        elif isinstance(block, ListBlock):
            tag = "ol" if block.ordered else "ul"
            out.append(f"<{tag}>")
            for item in block.items:
                if len(item) == 1 and isinstance(item[0], Para):
                    out.append(f"<li>{html_inline(item[0].text)}</li>")
                else:
                    out.extend(["<li>", *html_blocks(item), "</li>"])
            out.append(f"</{tag}>")
        elif isinstance(block, Note):
            out.append('<div class="admonition">')
            out.append(f'<p class="admonition-title"><strong>{html.escape(block.label)}'
                       "</strong></p>")
            out.extend(html_blocks(block.blocks))
            out.append("</div>")
        elif isinstance(block, Signature):
            out.append(f'<dl class="{block.kind}">')
            out.append(f"<dt><code>{html.escape(block.kind)} "
                       f"{html.escape(block.signature)}</code></dt>")
            out.extend(["<dd>", *html_blocks(block.blocks), "</dd>", "</dl>"])
    return out


def write_html(blocks: list, source: str) -> str:
    title = next((plain(b.text) for b in blocks if isinstance(b, Heading)), "Django")
    body = "\n".join(html_blocks(blocks))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)} | Django documentation</title>\n"
        "</head>\n<body>\n<main>\n"
        f"{body}\n"
        "</main>\n"
        f"<footer><p>{html.escape(SOURCE_NOTE.format(path=source))}</p></footer>\n"
        "</body>\n</html>\n")


# -- PDF (hand-written) -----------------------------------------------------------------------

_PAGE_W, _PAGE_H, _MARGIN = 612, 792, 72  # US Letter, one-inch margins
_FONTS = {"F1": "Helvetica", "F2": "Helvetica-Bold", "F3": "Courier"}


def pdf_lines(blocks: list, indent: int = 0) -> list[tuple[str, float, int, str, float]]:
    """(font, size, x offset, text, space before) for every line, in reading order."""
    out: list[tuple[str, float, int, str, float]] = []
    sizes = {1: 16.0, 2: 13.0, 3: 11.5}
    for block in blocks:
        if isinstance(block, Heading):
            size = sizes.get(block.level, 11.0)
            for k, line in enumerate(textwrap.wrap(plain(block.text), 60)):
                out.append(("F2", size, indent, line, size if k == 0 else 0))
            out.append(("F1", 0.0, indent, "", 6))  # a gap, so pdfminer keeps it a line apart
        elif isinstance(block, Para):
            for k, line in enumerate(textwrap.wrap(plain(block.text), 92 - indent // 5,
                                                   break_on_hyphens=False)):
                out.append(("F1", 10.0, indent, line, 6 if k == 0 else 0))
        elif isinstance(block, Code):
            for k, line in enumerate(block.text.splitlines()):
                for j, part in enumerate(textwrap.wrap(line, 90 - indent // 5,
                                                       drop_whitespace=False) or [""]):
                    out.append(("F3", 8.5, indent + 12, part.rstrip(), 5 if k == j == 0 else 0))
        elif isinstance(block, ListBlock):
            for number, item in enumerate(block.items, 1):
                marker = f"{number}." if block.ordered else "-"
                body = pdf_lines(item, indent + 16)
                font, size, x, text, before = body[0]
                out.append((font, size, indent + 4, f"{marker} ", before))  # marker, then text
                out.append((font, size, x, text, -1))  # -1: same baseline as the marker
                out.extend(body[1:])
        elif isinstance(block, Note):
            out.append(("F2", 10.0, indent + 12, block.label, 8))
            out.extend(pdf_lines(block.blocks, indent + 12))
        elif isinstance(block, Signature):
            sig = f"{block.kind} {block.signature}"
            for k, line in enumerate(textwrap.wrap(sig, 86)):
                out.append(("F3", 9.0, indent, line, 8 if k == 0 else 0))
            out.extend(pdf_lines(block.blocks, indent + 18))
    return out


def _pdf_string(text: str) -> str:
    data = text.encode("cp1252", "replace").decode("latin-1")
    return "(" + data.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def write_pdf(blocks: list, source: str) -> bytes:
    lines = pdf_lines(blocks)
    for k, line in enumerate(textwrap.wrap(SOURCE_NOTE.format(path=source), 105)):
        lines.append(("F1", 8.0, 0, line, 14 if k == 0 else 0))
    pages: list[list[str]] = [[]]
    y = _PAGE_H - _MARGIN
    for font, size, x, text, before in lines:
        if before >= 0:
            y -= before + size * 1.25
        if y < _MARGIN:
            pages.append([])
            y = _PAGE_H - _MARGIN - size * 1.25
        if text:
            pages[-1].append(f"BT /{font} {size:g} Tf {_MARGIN + x} {y:.2f} Td "
                             f"{_pdf_string(text)} Tj ET")
    for number, page in enumerate(pages, 1):  # page numbers, centred at the foot
        page.append(f"BT /F1 8 Tf {_PAGE_W / 2 - 3:g} 40 Td ({number}) Tj ET")

    # Objects: 1 catalog, 2 page tree, 3-5 fonts, 6 info, then a (page, content) pair per page.
    n_pages = len(pages)
    page_ids = [7 + 2 * k for k in range(n_pages)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: (f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] "
            f"/Count {n_pages} >>").encode(),
    }
    for number, base in enumerate(_FONTS.values(), 3):
        objects[number] = (f"<< /Type /Font /Subtype /Type1 /BaseFont /{base} "
                           "/Encoding /WinAnsiEncoding >>").encode()
    title = next((plain(b.text) for b in blocks if isinstance(b, Heading)), "Django")
    objects[6] = (f"<< /Title {_pdf_string(title)} /Author (Django Software Foundation) "
                  "/Producer (kbguard samples/make_formats.py) >>").encode("latin-1")
    fonts = " ".join(f"/{name} {k} 0 R" for k, name in enumerate(_FONTS, 3))
    for page_id, page in zip(page_ids, pages, strict=True):
        content = ("\n".join(page) + "\n").encode("latin-1")
        objects[page_id] = (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {_PAGE_W} {_PAGE_H}] "
                            f"/Resources << /Font << {fonts} >> >> "
                            f"/Contents {page_id + 1} 0 R >>").encode()
        objects[page_id + 1] = (f"<< /Length {len(content)} >>\nstream\n".encode() + content
                                + b"endstream")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    for number in range(1, size):
        out += f"{offsets[number]:010d} 00000 n \n".encode()
    out += (f"trailer\n<< /Size {size} /Root 1 0 R /Info 6 0 R >>\n"
            f"startxref\n{xref}\n%%EOF\n").encode()
    return bytes(out)


# -- Word -------------------------------------------------------------------------------------


def write_docx(blocks: list, source: str, path: Path) -> None:
    import datetime

    from docx import Document
    from docx.shared import Pt

    document = Document()
    title = next((plain(b.text) for b in blocks if isinstance(b, Heading)), "Django")
    props = document.core_properties
    props.title = title
    props.author = "Django Software Foundation"
    props.comments = SOURCE_NOTE.format(path=source)
    props.created = props.modified = datetime.datetime(2024, 12, 4, tzinfo=datetime.UTC)
    props.last_modified_by = "kbguard samples/make_formats.py"  # as in the committed files
    props.revision = 1

    def runs(paragraph, inline: Inline) -> None:
        for kind, text, _ in inline:
            run = paragraph.add_run(re.sub(r"\s+", " ", text))
            if kind == "code":
                run.font.name = "Courier New"
            run.italic = kind == "em" or None
            run.bold = kind == "strong" or None

    def code(text: str, left: float = 0) -> None:
        paragraph = document.add_paragraph()
        paragraph.paragraph_format.left_indent = Pt(18 + left)
        for k, line in enumerate(text.splitlines()):
            run = paragraph.add_run(line)
            run.font.name = "Courier New"
            run.font.size = Pt(9)
            if k < len(text.splitlines()) - 1:
                run.add_break()

    def emit(items: list, left: float = 0) -> None:
        for block in items:
            if isinstance(block, Heading):  # Title for the page title, then Heading 1, 2, ...
                heading = document.add_heading(level=block.level - 1)
                runs(heading, block.text)
            elif isinstance(block, Para):
                paragraph = document.add_paragraph()
                paragraph.paragraph_format.left_indent = Pt(left) if left else None
                runs(paragraph, block.text)
            elif isinstance(block, Code):
                code(block.text, left)
            elif isinstance(block, ListBlock):
                style = "List Number" if block.ordered else "List Bullet"
                for item in block.items:
                    first, rest = item[0], item[1:]
                    paragraph = document.add_paragraph(style=style)
                    runs(paragraph, first.text if isinstance(first, Para) else [])
                    emit(rest, left + 18)
            elif isinstance(block, Note):
                paragraph = document.add_paragraph()
                paragraph.paragraph_format.left_indent = Pt(left + 18)
                label = paragraph.add_run(block.label + (": " if block.blocks else "."))
                label.bold = True
                inner = list(block.blocks)
                if inner and isinstance(inner[0], Para):
                    runs(paragraph, inner.pop(0).text)
                emit(inner, left + 18)
            elif isinstance(block, Signature):
                paragraph = document.add_paragraph()
                paragraph.paragraph_format.left_indent = Pt(left) if left else None
                run = paragraph.add_run(f"{block.kind} {block.signature}")
                run.font.name = "Courier New"
                run.bold = True
                emit(block.blocks, left + 18)

    emit(blocks)
    note = document.add_paragraph()
    note.add_run(SOURCE_NOTE.format(path=source)).italic = True
    buffer = io.BytesIO()
    document.save(buffer)
    # Same bytes on every run: rewrite the ZIP with fixed member timestamps.
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w") as target:
        for member in source.infolist():
            info = zipfile.ZipInfo(member.filename, date_time=(2024, 12, 4, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(info, source.read(member))


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("docs", type=Path, help="the docs/ folder of the Django 5.1.4 sdist")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "corpus" / "formats")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for source, name in SOURCES:
        blocks = RstReader((args.docs / source).read_text(encoding="utf-8")).read()
        target = args.out / name
        suffix = target.suffix
        if suffix == ".md":
            target.write_text(write_md(blocks, source), encoding="utf-8")
        elif suffix == ".txt":
            target.write_text(write_txt(blocks, source), encoding="utf-8")
        elif suffix == ".html":
            target.write_text(write_html(blocks, source), encoding="utf-8")
        elif suffix == ".pdf":
            target.write_bytes(write_pdf(blocks, source))
        else:
            write_docx(blocks, source, target)
        print(f"{source} -> {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
