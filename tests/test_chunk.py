"""Structure-aware chunking: sections, token caps, stable identities."""

from __future__ import annotations

from kbguard.chunk import chunk_elements, content_hash, normalize_text, point_id, sections
from kbguard.embed import FakeEmbedder
from kbguard.config import SpaceConfig
from kbguard.parse import Element

COUNT = FakeEmbedder(SpaceConfig(name="t", provider="fake", model="fake-hash", dim=8)).count_tokens


def _doc(paragraph_5: str = "Five is here.") -> list[Element]:
    els = [Element("title", "Guide", 1)]
    for s in range(4):
        els.append(Element("title", f"Part {s}", 2))
        for p in range(6):
            text = paragraph_5 if (s, p) == (2, 5) else f"Part {s} paragraph {p} " + "words " * 20
            els.append(Element("text", text))
    return els


def test_sections_follow_heading_levels() -> None:
    els = [Element("title", "A", 1), Element("text", "a"), Element("title", "B", 2),
           Element("text", "b"), Element("title", "C", 3), Element("text", "c"),
           Element("title", "D", 2), Element("text", "d")]
    assert [t for t, _ in sections(els)] == ["A", "A > B", "A > B > C", "A > D"]


def test_no_chunk_exceeds_the_token_cap_and_chunks_carry_their_trail() -> None:
    chunks = chunk_elements(_doc(), kb="k", path="g.md", max_tokens=60, count_tokens=COUNT)
    assert len(chunks) > 8
    for c in chunks:
        assert COUNT([c.text])[0] <= 60 + 2, c.text  # +2: the joins between trail and body
        assert c.text.startswith(c.section)
    assert [c.seq for c in chunks] == list(range(len(chunks)))


def test_an_oversized_paragraph_is_split_at_sentences_then_words() -> None:
    long_para = " ".join(f"Sentence number {i} says something." for i in range(60))
    one_word_run = "x " * 500
    els = [Element("title", "T", 1), Element("text", long_para), Element("text", one_word_run)]
    chunks = chunk_elements(els, kb="k", path="p", max_tokens=40, count_tokens=COUNT)
    assert all(COUNT([c.text])[0] <= 42 for c in chunks)
    joined = " ".join(c.text.replace("T\n\n", "") for c in chunks)
    assert "Sentence number 59 says something." in joined


def test_an_edit_changes_only_the_chunks_of_its_section() -> None:
    before = chunk_elements(_doc(), kb="k", path="g.md", max_tokens=60, count_tokens=COUNT)
    after = chunk_elements(_doc("Five was edited."), kb="k", path="g.md", max_tokens=60,
                           count_tokens=COUNT)
    changed = {c.point_id for c in after} ^ {c.point_id for c in before}
    sections_touched = {c.section for c in before + after if c.point_id in changed}
    assert sections_touched == {"Guide > Part 2"}


def test_identity_is_stable_and_position_independent() -> None:
    text = normalize_text("  Hello\t\tworld \r\n\r\n\r\n\r\nagain ")
    assert text == "Hello world\n\nagain"
    assert content_hash(text) == content_hash("Hello world\n\nagain")
    assert point_id("k", "a.md", "h", 0) == point_id("k", "a.md", "h", 0)
    assert point_id("k", "a.md", "h", 0) != point_id("k", "b.md", "h", 0)
    assert point_id("k", "a.md", "h", 0) != point_id("k", "a.md", "h", 1)
    assert point_id("k", "a.md", "h", 0) != point_id("other", "a.md", "h", 0)


def test_repeated_text_in_one_document_gets_distinct_points() -> None:
    els = [Element("title", "T", 1), Element("text", "same"), Element("title", "T", 1),
           Element("text", "same")]
    chunks = chunk_elements(els, kb="k", path="p", max_tokens=60, count_tokens=COUNT)
    assert [c.occurrence for c in chunks] == [0, 1]
    assert len({c.point_id for c in chunks}) == 2
