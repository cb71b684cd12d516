"""Chunk by document structure, with a size cap in the embedding model's tokens.

A section is the run of elements under one heading trail. Chunks never span two sections, so an
edit changes the chunks of its own section and no others. Each chunk's text starts with its
heading trail (better retrieval, and a renamed heading is a real content change).

Identity (DESIGN.md): ``content_hash`` hashes the normalised text; ``point_id`` is a UUID of
(kb, path, content_hash, occurrence) — stable while the text is unchanged, whatever its position.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kbguard.ingest.elements import Element

# Fixed forever: changing it would change every point id of every KB.
POINT_NAMESPACE = uuid.UUID("6b0f3a52-6f1e-4c55-9a7e-0d1c2b3a4f50")
TRAIL_SEP = " > "

TokenCounter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Chunk:
    seq: int
    section: str
    text: str
    content_hash: str
    occurrence: int
    point_id: str
    tokens: int


_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, unified newlines, runs of spaces folded, lines stripped, no blank-line runs."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def point_id(kb: str, path: str, digest: str, occurrence: int) -> str:
    return str(uuid.uuid5(POINT_NAMESPACE, f"{kb}\x1f{path}\x1f{digest}\x1f{occurrence}"))


def sections(elements: Sequence[Element]) -> list[tuple[str, list[str]]]:
    """Group elements into (heading trail, body texts); sections without body are dropped."""
    trail: list[tuple[int, str]] = []
    out: list[tuple[str, list[str]]] = []
    body: list[str] = []

    def close() -> None:
        if body:
            out.append((TRAIL_SEP.join(t for _, t in trail), body.copy()))
            body.clear()

    for el in elements:
        text = normalize_text(el.text)
        if not text:
            continue
        if el.kind == "title":
            close()
            level = el.level if el.level > 0 else (trail[-1][0] + 1 if trail else 1)
            while trail and trail[-1][0] >= level:
                trail.pop()
            trail.append((level, " ".join(text.split())))
        else:
            body.append(text)
    close()
    return out


_SENTENCE = re.compile(r"(?<=[.!?:;])\s+|\n+")


def _split_oversized(text: str, budget: int, count: TokenCounter) -> list[str]:
    """Split one element that exceeds the budget: at sentences, then at words."""
    pieces = [p for p in _SENTENCE.split(text) if p.strip()]
    if len(pieces) == 1:
        pieces = text.split()
        if len(pieces) <= 1:
            return [text]  # one enormous token run: nothing sensible to split on
    out: list[str] = []
    cur: list[str] = []
    sizes = count(pieces)
    cur_size = 0
    for piece, size in zip(pieces, sizes, strict=True):
        if size > budget and len(pieces) > 1 and piece != text:
            if cur:
                out.append(" ".join(cur))
                cur, cur_size = [], 0
            out.extend(_split_oversized(piece, budget, count))
            continue
        if cur and cur_size + size > budget:
            out.append(" ".join(cur))
            cur, cur_size = [], 0
        cur.append(piece)
        cur_size += size
    if cur:
        out.append(" ".join(cur))
    return out


def chunk_elements(elements: Sequence[Element], *, kb: str, path: str, max_tokens: int,
                   count_tokens: TokenCounter) -> list[Chunk]:
    """Turn a document's elements into chunks of at most ``max_tokens`` tokens each."""
    texts: list[tuple[str, str, int]] = []  # (section, text, tokens)
    for trail, body in sections(elements):
        head = f"{trail}\n\n" if trail else ""
        head_tokens = count_tokens([trail])[0] if trail else 0
        budget = max(8, max_tokens - head_tokens)
        parts: list[str] = []
        for text, size in zip(body, count_tokens(body), strict=True):
            if size > budget:
                parts.extend(_split_oversized(text, budget, count_tokens))
            else:
                parts.append(text)
        cur: list[str] = []
        cur_size = 0
        for part, size in zip(parts, count_tokens(parts), strict=True):
            if cur and cur_size + size > budget:
                texts.append((trail, head + "\n\n".join(cur), head_tokens + cur_size))
                cur, cur_size = [], 0
            cur.append(part)
            cur_size += size
        if cur:
            texts.append((trail, head + "\n\n".join(cur), head_tokens + cur_size))

    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for seq, (trail, text, tokens) in enumerate(texts):
        text = normalize_text(text)
        digest = content_hash(text)
        occurrence = seen.get(digest, 0)
        seen[digest] = occurrence + 1
        chunks.append(Chunk(seq, trail, text, digest, occurrence,
                            point_id(kb, path, digest, occurrence), tokens))
    return chunks
