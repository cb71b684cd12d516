"""Markdown parsing: angle brackets that are not HTML stay text, HTML keeps its text."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from kbguard.ingest.parse import parse_file
from kbguard.ingest.parse_markdown import is_html_element


def _parse(tmp_path: Path, source: str) -> list[tuple[str, str, int]]:
    p = tmp_path / "doc.md"
    p.write_text(textwrap.dedent(source))
    return [(e.kind, e.text, e.level) for e in parse_file(p)]


def test_angle_brackets_that_are_not_html_elements_are_text(tmp_path: Path) -> None:
    assert _parse(tmp_path, """\
        # Using Vec<T> well

        Call <Form as Widget>::get(&form) to read it.

        The next paragraph.

        <Form as Widget>::get(&form) at a line start, then Vec<Box<dyn Fn>> and <'a>.

        <T>
        is the type parameter of Option<A>.
        """) == [
        ("title", "Using Vec<T> well", 1),
        ("text", "Call <Form as Widget>::get(&form) to read it.", 0),
        ("text", "The next paragraph.", 0),
        ("text", "<Form as Widget>::get(&form) at a line start, then Vec<Box<dyn Fn>> and <'a>.", 0),
        ("text", "<T> is the type parameter of Option<A>.", 0),
    ]


def test_html_keeps_its_text_and_drops_its_markup(tmp_path: Path) -> None:
    assert _parse(tmp_path, """\
        <!-- a comment -->
        <details>
        <summary>More</summary>

        Hidden prose.

        </details>

        <div class="note">
        <h2>Raw heading</h2>
        <p>First &amp; raw.</p><p>Second, with Vec<T>.</p>
        </div>

        <script>var hidden = 1;</script>

        Press <kbd>Ctrl</kbd>+<kbd>C</kbd>, see<br>this <img src="x.png" alt="a chart"> <!-- no -->here.
        """) == [
        ("text", "More", 0),
        ("text", "Hidden prose.", 0),
        ("title", "Raw heading", 2),
        ("text", "First & raw.", 0),
        ("text", "Second, with Vec<T>.", 0),
        ("text", "Press Ctrl+C, see\nthis a chart here.", 0),
    ]


def test_links_tables_lists_and_code(tmp_path: Path) -> None:
    assert _parse(tmp_path, """\
        See [the guide](https://example.com/g "Tip") and [this][ref], <https://example.org> or
        <me@example.net>. ![Pipeline diagram](p.png)

        [ref]: https://example.com/ref

        | Type | Use |
        | --- | --- |
        | `Box<T>` | owned |

        - one *item*
          1. nested

        > quoted **text**

        ```rust
        let v: Vec<&str> = Vec::new();
        ```
        """) == [
        ("text", "See the guide and this, https://example.org or me@example.net. "
                 "Pipeline diagram", 0),
        ("text", "Type | Use\nBox<T> | owned", 0),
        ("text", "one item", 0),
        ("text", "nested", 0),
        ("text", "quoted text", 0),
        ("text", "let v: Vec<&str> = Vec::new();", 0),
    ]


def test_front_matter_is_skipped_but_a_leading_rule_is_not(tmp_path: Path) -> None:
    assert _parse(tmp_path, "---\ntitle: Meta\ntags: [a]\n---\n# Real title\n\nBody.\n") == [
        ("title", "Real title", 1), ("text", "Body.", 0)]
    assert _parse(tmp_path, "+++\ntitle = 'Meta'\n+++\nBody.\n") == [("text", "Body.", 0)]
    # a thematic break and a setext heading, not metadata: the first line is no key
    assert _parse(tmp_path, "---\n\nIntro text.\n---\n") == [("title", "Intro text.", 2)]


def test_what_counts_as_an_html_element() -> None:
    assert all(is_html_element(n) for n in ["div", "details", "br", "BR", "DIV", "my-widget"])
    assert not any(is_html_element(n) for n in ["T", "Form", "A", "B", "Widget", "Vec"])


def test_markdown_needs_neither_unstructured_nor_spacy(tmp_path: Path) -> None:
    p = tmp_path / "a.md"
    p.write_text("# Title\n\nSome text.\n")
    code = ("import sys; from pathlib import Path; from kbguard.ingest.parse import parse_file; "
            f"assert parse_file(Path({str(p)!r})); "
            "print(sorted(m for m in ('unstructured', 'spacy', 'docutils') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

