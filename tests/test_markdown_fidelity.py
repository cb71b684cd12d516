"""Every word of a Markdown document's prose reaches its chunks.

The source's words are counted here from the raw Markdown with a few regular expressions, not
with kbguard's parser, so a parser that drops text cannot agree with itself. Deliberately
skipped, and so taken out of the source first: front matter, HTML comments, the contents of
``<script>``/``<style>``, link and image targets and titles, reference definitions and labels,
the tags of real HTML elements (name and attributes), code fence info strings and the numbers of
ordered list items. Emphasis markers and backticks join the letters they touch
(``**cov**ariant`` is one word). Every other word must appear in the chunks at least as often as in the
source (chunks repeat headings in their trails, so they may hold more).
"""

from __future__ import annotations

import html
import re
from collections import Counter
from pathlib import Path

import pytest

from kbguard.config import SpaceConfig
from kbguard.ingest.chunk import chunk_elements
from kbguard.ingest.parse import parse_file
from kbguard.ingest.parse_markdown import is_html_element
from kbguard.providers.local import FakeEmbedder

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted((ROOT / "samples" / "corpus").rglob("*.md")) + sorted(
    (ROOT / "tests" / "fixtures" / "markdown").glob("*.md"))
COUNT = FakeEmbedder(SpaceConfig(name="t", provider="fake", model="fake-hash", dim=8)).count_tokens

_FRONT_MATTER = re.compile(r"\A(?:---\n[\w-]+:.*?\n(?:---|\.\.\.)|\+\+\+\n[\w-]+\s*=.*?\n\+\+\+)\n",
                           re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.S | re.I)
_REFERENCE_DEFINITION = re.compile(r"^[ \t>]*\[[^\]]+\]:[ \t]*\S+.*$", re.M)
_LINK_TARGET = re.compile(r"\]\((?:[^()]|\([^()]*\))*\)")
_LINK_LABEL = re.compile(r"\]\[[^\]]*\]")
_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)(?:\s+[^<>]*?)?\s*/?>")
_FENCE_INFO = re.compile(r"^([ \t>]*(?:```+|~~~+))[^\n]*$", re.M)
_ORDERED_MARKER = re.compile(r"^([ \t>]*)\d{1,9}[.)](?=[ \t])", re.M)
# Phrasing elements join the text around them (`H<sub>2</sub>O` reads "H2O"); every other tag
# separates words.
_PHRASING = frozenset(["a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn", "em", "i", "ins", "kbd", "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time", "u", "var", "big", "tt", "font", "strike", "acronym"])
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
# Emphasis and strikethrough markers and the backticks of code spans join what they touch
# (`**cov**ariant`, `` `Arc`s ``), except inside code, where `*` is text.
_MARKUP = re.compile(r"(?ms)(^[ \t]*(```+|~~~+)\n.*?^[ \t]*\2[ \t]*$)|(`+)(.+?)\3|[*~]+")
_WORD = re.compile(r"[^\W_]+")


def prose_words(source: str) -> Counter[str]:
    """The words of a Markdown source a reader sees, by the rules in the module docstring."""
    text = source.replace("\r\n", "\n")
    text = _FRONT_MATTER.sub("", text)
    text = _COMMENT.sub(" ", text)
    text = _SCRIPT.sub(" ", text)
    text = _REFERENCE_DEFINITION.sub("", text)
    text = _LINK_TARGET.sub("] ", text)
    text = _LINK_LABEL.sub("] ", text)
    text = _TAG.sub(_without_element_tag, text)
    text = _FENCE_INFO.sub(r"\1", text)
    text = _ORDERED_MARKER.sub(r"\1", text)
    text = _MARKUP.sub(lambda m: m.group(1) or m.group(4) or "", text)
    text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
    return Counter(_WORD.findall(text))


def _without_element_tag(tag: re.Match[str]) -> str:
    name = tag.group(1)
    if not is_html_element(name):
        return tag.group(0)
    return "" if name.lower() in _PHRASING else " "


def chunk_words(path: Path) -> Counter[str]:
    chunks = chunk_elements(parse_file(path), kb="k", path=path.name, max_tokens=256,
                            count_tokens=COUNT)
    return Counter(_WORD.findall("\n".join(c.text for c in chunks)))


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_word_of_the_prose_reaches_the_chunks(path: Path) -> None:
    source = prose_words(path.read_text(encoding="utf-8"))
    missing = source - chunk_words(path)
    assert sum(source.values()) > 100  # a document with prose to lose
    assert not missing, (
        f"{path.name}: {sum(missing.values())} of {sum(source.values())} words of the prose "
        f"are missing from the chunks: {', '.join(f'{w} (x{n})' for w, n in missing.most_common(40))}")


# Each hard case on its own, so that one that swallows the rest of a document hides no other.
CASES = {
    "generic path": "Call <Form as Widget>::get(&form) to read it.\n\nThe next paragraph survives.\n",
    "generic path at a line start": "<Form as Widget>::get(&form) reads it.\n\nNext paragraph.\n",
    "generic in a heading": "# Using Vec<T> well\n\nBody text here.\n",
    "nested generics": "A Vec<Box<dyn Fn(u32) -> u32>> is boxed; a borrow lives for <'a>.\n",
    "a generic alone on a line": "<T>\nis the type parameter.\n",
    "single-letter generic named like an element": "It returns Option<A> or Result<B, E>.\n",
    "code span": "Use `impl<T> Drop for Vec<T>` here.\n",
    "details": "<details>\n<summary>More</summary>\n\nHidden prose here.\n\n</details>\n",
    "details in one block": "<details><summary>More</summary>\nHidden prose.\n</details>\n",
    "comment": "Before it.\n\n<!-- not prose -->\n\nAfter the comment.\n",
    "raw div": '<div class="note">\n<p>Raw HTML paragraph.</p>\n<p>And Vec<T>.</p>\n</div>\n',
    "inline elements": "Press <kbd>Ctrl</kbd>+<kbd>C</kbd>, see note<sup>1</sup>, a<br>break.\n",
    "table": "| Type | Use |\n| --- | --- |\n| Rc<T> | shared |\n| `Box<T>` | owned |\n",
    "list": "- one <T> item\n- two\n  1. nested Vec<T>\n",
    "link": "See [the guide](https://example.com/guide) and [this][ref].\n\n[ref]: https://x.org\n",
    "autolink": "Visit <https://example.org/docs> today.\n",
    "email autolink": "Mail <someone@example.net> please.\n",
    "image": "![A diagram of the flow](flow.png)\n",
    "entities": "Tom &amp; Jerry, 5 &lt; 7, caf&eacute; &#8364;20.\n",
    "a list nested twelve deep": "".join("  " * i + f"- level {i}\n" for i in range(12)),
    "block quotes nested twenty deep": "".join(">" * i + f" quote {i}\n\n" for i in range(1, 21)),
}


@pytest.mark.parametrize("source", CASES.values(), ids=CASES.keys())
def test_every_word_of_a_hard_case_reaches_the_chunks(tmp_path: Path, source: str) -> None:
    path = tmp_path / "case.md"
    path.write_text(source)
    words = prose_words(source)
    missing = words - chunk_words(path)
    assert words
    assert not missing, f"missing from the chunks: {dict(missing)} of {source!r}"


def test_the_check_sees_a_dropped_word(tmp_path: Path) -> None:
    p = tmp_path / "a.md"
    p.write_text("# Title\n\nSome prose with [a link](https://example.com) in it.\n")
    words = prose_words(p.read_text())
    assert words["link"] == 1 and words["example"] == 0  # link text counts, its target does not
    assert not words - chunk_words(p)
    assert words + Counter(["absent"]) - chunk_words(p) == Counter(["absent"])
