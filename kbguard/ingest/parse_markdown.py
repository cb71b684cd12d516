"""Markdown to elements, read straight from the CommonMark token stream (markdown-it-py).

Markdown is not rendered to HTML first: an HTML parser reads every ``<T>`` or
``<Form as Widget>`` as an element and swallows the text after it, up to whole paragraphs.

    headings                     a title at the heading's level
    paragraphs, code blocks      one text element each, also inside list items and block quotes
    tables (GFM)                 one text element, a row a line, cells joined by " | "
    inline markup                emphasis and strikethrough markers dropped; code spans verbatim;
                                 link text kept, link targets dropped; an autolink keeps the
                                 address it shows; an image keeps its alt text (the author's
                                 words for the picture, often the only description of a diagram)
    front matter                 skipped: a YAML (``---``) or TOML (``+++``) block at the very
                                 top whose first line is a key is metadata, not prose

Raw HTML, in a paragraph or as a block: the tag of a real HTML element is markup and is dropped,
the text inside it kept (``<br>`` is a line break, ``<img>`` its alt text, ``<h1>``..``<h6>``
titles); the contents of ``<script>``, ``<style>``, ``<svg>`` and ``<template>`` are not text,
and comments and declarations are dropped. Anything else in angle brackets (``Vec<T>``,
``<Form as Widget>::get``, ``<'a>``) is text, kept verbatim. A tag counts as an element only
when written in lower case, or in upper case for names longer than one letter (old HTML's
habit): ``<Form as Widget>`` and ``Option<A>`` are Rust, not HTML. An HTML block that opens with
such a non-element is read as Markdown, since CommonMark only took it for HTML by its first tag.
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable, Sequence
from typing import Any

from kbguard.ingest.elements import Element

# The elements of the HTML Living Standard, and the obsolete ones still common in Markdown.
_HTML_ELEMENTS = frozenset(["a", "abbr", "address", "area", "article", "aside", "audio", "b", "base", "bdi", "bdo", "blockquote", "body", "br", "button", "canvas", "caption", "cite", "code", "col", "colgroup", "data", "datalist", "dd", "del", "details", "dfn", "dialog", "div", "dl", "dt", "em", "embed", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "head", "header", "hgroup", "hr", "html", "i", "iframe", "img", "input", "ins", "kbd", "label", "legend", "li", "link", "main", "map", "mark", "menu", "meta", "meter", "nav", "noscript", "object", "ol", "optgroup", "option", "output", "p", "param", "picture", "pre", "progress", "q", "rp", "rt", "ruby", "s", "samp", "script", "search", "section", "select", "slot", "small", "source", "span", "strong", "style", "sub", "summary", "sup", "svg", "table", "tbody", "td", "template", "textarea", "tfoot", "th", "thead", "time", "title", "tr", "track", "u", "ul", "var", "video", "wbr", "acronym", "big", "center", "font", "strike", "tt"])
# Elements that start a new block of text: their tags end the paragraph before them.
_BLOCK_ELEMENTS = frozenset(["address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hgroup", "hr", "html", "li", "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul", "center"])
_NO_TEXT_ELEMENTS = frozenset({"script", "style", "svg", "template"})
_HEADINGS = {f"h{n}": n for n in range(1, 7)}

# CommonMark's raw HTML (spec 6.6), with the parts named.
_ATTRIBUTE = (r"""(?:\s+[a-zA-Z_:][a-zA-Z0-9:._-]*"""
              r"""(?:\s*=\s*(?:[^"'=<>`\x00-\x20]+|'[^']*'|"[^"]*"))?)""")
_RAW_HTML = re.compile(
    r"(?P<comment><!---?>|<!--(?:[^-]|-[^-]|--[^>])*-->)"
    r"|(?P<cdata><!\[CDATA\[(?P<cdata_text>[\s\S]*?)\]\]>)"
    r"|(?P<declaration><![A-Za-z][^>]*>)"
    r"|(?P<processing><\?[\s\S]*?\?>)"
    rf"|(?P<tag></?(?P<name>[A-Za-z][A-Za-z0-9-]*){_ATTRIBUTE}*\s*/?>)")
_ALT = re.compile(r"""\salt\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.I)
_FRONT_MATTER = re.compile(
    r"\A(?:---[ \t]*\r?\n[\w-]+[ \t]*:.*?\r?\n(?:---|\.\.\.)"
    r"|\+\+\+[ \t]*\r?\n[\w-]+[ \t]*=.*?\r?\n\+\+\+)[ \t]*(?:\r?\n|\Z)", re.S)
_SPACES = re.compile(r"\s+")


def is_html_element(name: str) -> bool:
    """Whether a tag name is a real HTML element as written (case decides ``<Form>``)."""
    lower = name.lower()
    if lower not in _HTML_ELEMENTS and "-" not in lower:  # a-b: a custom element
        return False
    return name == lower or (name == name.upper() and len(name) > 1)


def markdown_elements(text: str) -> list[Element]:
    """The elements of a Markdown document."""
    body = _FRONT_MATTER.sub("", text, count=1)
    return list(_blocks(_parser(True).parse(body)))


@functools.cache
def _parser(html_blocks: bool) -> Any:
    from markdown_it import MarkdownIt

    # markdown-it drops whatever nests deeper than maxNesting without a word; CommonMark's preset
    # allows 20 levels, which a list nested ten deep reaches (a list and its item are two).
    # 100 is markdown-it's default; far deeper, Python's recursion limit would fail the file.
    md = MarkdownIt("commonmark", {"maxNesting": 100}).enable(["table", "strikethrough"])
    return md if html_blocks else md.disable("html_block")


def _blocks(tokens: Sequence[Any]) -> Iterable[Element]:
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind = token.type
        if kind == "heading_open":
            text = _inline(tokens[i + 1].children).strip()
            if text:
                yield Element("title", " ".join(text.split()), _HEADINGS[token.tag])
            i += 3
            continue
        if kind == "paragraph_open":
            text = _inline(tokens[i + 1].children).strip()
            if text:
                yield Element("text", text)
            i += 3
            continue
        if kind == "table_open":
            end = _closing(tokens, i, "table_close")
            text = _table(tokens[i:end])
            if text:
                yield Element("text", text)
            i = end + 1
            continue
        if kind in ("fence", "code_block"):
            if token.content.strip():
                yield Element("text", token.content.rstrip("\n"))
        elif kind == "html_block":
            yield from _html_block(token.content)
        i += 1  # lists, quotes and rules only hold blocks handled above


def _closing(tokens: Sequence[Any], start: int, kind: str) -> int:
    return next(j for j in range(start, len(tokens)) if tokens[j].type == kind)


def _table(tokens: Sequence[Any]) -> str:
    rows: list[list[str]] = []
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "inline":
            rows[-1].append(" ".join(_inline(token.children).split()))
    return "\n".join(" | ".join(cells) for cells in rows if any(cells))


def _inline(children: Sequence[Any] | None) -> str:
    out: list[str] = []
    for child in children or ():
        kind = child.type
        if kind in ("text", "text_special", "code_inline"):
            out.append(child.content)
        elif kind == "softbreak":
            out.append(" ")
        elif kind == "hardbreak":
            out.append("\n")
        elif kind == "image":  # its children are the alt text, itself inline markup
            out.append(_inline(child.children))
        elif kind == "html_inline":
            out.append(_inline_html(child.content))
        # link, emphasis and strikethrough tokens are markup around text tokens
    return "".join(out)


def _inline_html(raw: str) -> str:
    match = _RAW_HTML.fullmatch(raw)
    if match is None or match["processing"]:
        return raw
    if match["cdata"]:
        return match["cdata_text"]
    if not match["tag"]:
        return ""  # a comment or a declaration
    name = match["name"]
    if not is_html_element(name):
        return raw
    lower = name.lower()
    if lower == "br":
        return "\n"
    if lower == "img":
        return _alt(raw)
    return " " if lower in _BLOCK_ELEMENTS else ""


def _alt(tag: str) -> str:
    match = _ALT.search(tag)
    return html.unescape(next(g for g in match.groups() if g is not None)) if match else ""


def _html_block(raw: str) -> Iterable[Element]:
    first = _RAW_HTML.search(raw)
    if first is not None and first["tag"] and not is_html_element(first["name"]):
        # `<Form as Widget>::get` at a line start is a type 6 HTML block to CommonMark
        yield from _blocks(_parser(False).parse(raw))
        return
    yield from _HtmlText(raw).elements()


class _HtmlText:
    """The text of a raw HTML block, cut into elements where block elements begin and end."""

    def __init__(self, raw: str):
        self.raw = raw
        self.out: list[Element] = []
        self.parts: list[str] = []
        self.level = 0  # inside <hN>: N
        self.pre = 0  # <pre> depth: whitespace is kept there
        self.skipping = ""  # inside <script> and the like: its name

    def elements(self) -> list[Element]:
        pos = 0
        for match in _RAW_HTML.finditer(self.raw):
            self.text(self.raw[pos:match.start()])
            pos = match.end()
            if match["tag"]:
                self.tag(match)
            elif match["cdata"]:
                self.text(match["cdata_text"], entities=False)
            elif match["processing"]:
                self.text(match.group(), entities=False)
        self.text(self.raw[pos:])
        self.flush()
        return self.out

    def text(self, text: str, entities: bool = True) -> None:
        if self.skipping or not text:
            return
        if entities:
            text = html.unescape(text)
        self.parts.append(text if self.pre else _SPACES.sub(" ", text))

    def tag(self, match: re.Match[str]) -> None:
        raw, name = match.group(), match["name"]
        closing = raw.startswith("</")
        if not is_html_element(name):
            if not self.skipping:
                self.parts.append(raw)
            return
        lower = name.lower()
        if self.skipping:
            if closing and lower == self.skipping:
                self.skipping = ""
            return
        if lower in _NO_TEXT_ELEMENTS:
            self.skipping = "" if closing or raw.endswith("/>") else lower
        elif lower == "br":
            self.parts.append("\n")
        elif lower == "img":
            self.parts.append(_alt(raw))
        elif lower in _BLOCK_ELEMENTS:
            self.flush()
            if lower in _HEADINGS:
                self.level = 0 if closing else _HEADINGS[lower]
            elif lower == "pre":
                self.pre = max(0, self.pre + (-1 if closing else 1))

    def flush(self) -> None:
        text = "".join(self.parts).strip()
        self.parts.clear()
        if not text:
            return
        if self.level:
            self.out.append(Element("title", " ".join(text.split()), self.level))
        else:
            self.out.append(Element("text", text))
