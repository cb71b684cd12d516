"""The structural pieces every parser turns a document into, and the chunker reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Element:
    """One structural piece of a document, in reading order."""

    kind: str  # "title" or "text"
    text: str
    level: int = 0  # heading depth for titles (1 = top level) when known, else 0
