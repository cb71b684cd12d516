"""Progress reporting: the library calls a Progress; the CLI decides how (or whether) to show it."""

from __future__ import annotations


class Progress:
    """Silent by default. Subclasses render stages on stderr."""

    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage of ``total`` items begins."""

    def advance(self, n: int = 1) -> None:
        """``n`` more items of the current stage are done."""

    def note(self, message: str) -> None:
        """A one-line remark worth showing a person (never on stdout)."""

    def close(self) -> None:
        """The work is over."""


SILENT = Progress()


def human_duration(seconds: float) -> str:
    """12.3 s, 4.5 min, 2.1 h: a duration as an operator reads it."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
