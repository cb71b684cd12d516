"""How much of a document's text reached its chunks: a cheap check that no parser dropped prose
without a word.

The measure is letters and digits ("text characters", every non-ASCII character counted as
one): whitespace, punctuation and markup differ with how a format writes the same words, letters
and digits do not. A source's text characters
are estimated from the decoded file with a few regular expressions that remove what a reader is
not shown (tags, comments, scripts, link targets, directive names), independently of the parser,
so a parser that loses text cannot vouch for itself. The chunks' text characters count every
chunk's text and each heading trail once (chunks repeat their trail). A document whose chunks
hold less than ``LOW_TEXT_SHARE`` of its source's is reported by the rebuild.

PDF and DOCX have no text without their parser, so they are not measured.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kbguard.ingest.parse_markdown import is_html_element

if TYPE_CHECKING:
    from kbguard.ingest.chunk import Chunk
    from kbguard.ingest.elements import Element

# Measured on 800 real pages (Django's reST docs, the Rust book and nomicon in Markdown, the
# samples), every page with body text kept at least 0.69 of it (a table of contents), nearly all
# over 0.95; a parser that swallows a document after its first paragraph keeps far less.
LOW_TEXT_SHARE = 0.5

# UTF-8 bytes to delete to keep one byte per text character: ASCII that is no letter or digit,
# and the continuation bytes of longer characters. Every non-ASCII character counts as text: a
# regular expression that asks Unicode is ten times slower, and the few non-ASCII punctuation
# marks count the same on both sides.
_NOT_TEXT_BYTES = bytes(c for c in range(0xC0) if c >= 0x80 or not chr(c).isalnum())
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_NO_TEXT_ELEMENTS = re.compile(r"<(script|style|svg|template|head)\b[^>]*>.*?</\1\s*>",
                               re.S | re.I)
_ANY_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)(?:\s[^<>]*)?/?>")
_MD_FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)[ \t]*\r?\n[\w-]+[ \t]*[:=].*?\r?\n"
                              r"(?:---|\+\+\+|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S)
_MD_LINK_TARGET = re.compile(r"\]\((?:[^()\s]|\([^()]*\))*(?:\s+[^)]*)?\)")
_MD_REFERENCE = re.compile(r"^[ \t>]*\[[^\]]+\]:.*$", re.M)
# navigation and index entries, which kbguard's reST reading drops as Sphinx's output shows
# them only as links
_RST_NAVIGATION = re.compile(r"^([ \t]*)\.\. (?:toctree|index)::.*\n(?:\1[ \t]+.*\n|[ \t]*\n)*",
                             re.M)
_RST_EXPLICIT = re.compile(r"^[ \t]*\.\. [^\n]*$", re.M)  # directive, target or comment line
_RST_OPTION = re.compile(r"^[ \t]+:[\w-]+:.*$", re.M)
_RST_ROLE = re.compile(r":[\w:+.-]+:(?=`)")
_RST_TARGET = re.compile(r"<[^<>`\s]+>(?=`)")
_RST_SHORTENED = re.compile(r"(?<=`)~(?:\w+\.)+")  # :meth:`~a.b.c` shows "c"


@dataclass(frozen=True)
class LowText:
    """A document whose chunks hold much less text than its source."""

    path: str
    source_chars: int  # letters and digits a reader sees in the file, estimated
    chunk_chars: int  # letters and digits in its chunks


def text_chars(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass").translate(None, _NOT_TEXT_BYTES))


def source_text_chars(suffix: str, text: str) -> int | None:
    """The text characters a reader sees in a decoded text file, or None for a format that is
    not measured."""
    if suffix in (".md", ".markdown"):
        text = _MD_FRONT_MATTER.sub("", text, count=1)
        text = _NO_TEXT_ELEMENTS.sub(" ", _COMMENT.sub(" ", text))
        text = _MD_REFERENCE.sub("", _MD_LINK_TARGET.sub("]", text))
        text = _TAG.sub(lambda m: " " if is_html_element(m.group(1)) else m.group(0), text)
    elif suffix in (".html", ".htm"):
        text = _NO_TEXT_ELEMENTS.sub(" ", _COMMENT.sub(" ", text))
        text = html.unescape(_ANY_TAG.sub(" ", text))
    elif suffix == ".rst":
        text = _RST_OPTION.sub("", _RST_EXPLICIT.sub("", _RST_NAVIGATION.sub("", text)))
        text = _RST_SHORTENED.sub("", _RST_TARGET.sub("", _RST_ROLE.sub("", text)))
    elif suffix != ".txt":
        return None
    return text_chars(text)


def chunk_text_chars(chunks: Sequence[Chunk]) -> int:
    total = 0
    trails: set[str] = set()
    for chunk in chunks:
        total += text_chars(chunk.text)
        if chunk.section in trails:
            total -= text_chars(chunk.section)
        trails.add(chunk.section)
    return total


def text_lost(source_chars: int | None, elements: Sequence[Element]) -> bool:
    """Whether parsing kept less than ``LOW_TEXT_SHARE`` of the source's text (a document of
    headings alone keeps all of it, though it makes no chunk)."""
    kept = sum(text_chars(e.text) for e in elements)
    return bool(source_chars) and kept < (source_chars or 0) * LOW_TEXT_SHARE


def low_text(path: str, source_chars: int | None, chunks: Sequence[Chunk]) -> LowText | None:
    """A ``LowText`` when the chunks hold less than ``LOW_TEXT_SHARE`` of the source's text."""
    if not source_chars:
        return None
    kept = chunk_text_chars(chunks)
    return LowText(path, source_chars, kept) if kept < source_chars * LOW_TEXT_SHARE else None
