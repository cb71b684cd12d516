"""The corpus folder a KB is built from: checked before a command reads it (``kb.preflight``)
and by the scan itself."""

from __future__ import annotations

from pathlib import Path

from kbguard.errors import CorpusError


def require_corpus(root: Path) -> None:
    """Raise CorpusError unless ``root`` is a folder: checked before a command writes anything."""
    if root.is_dir():
        return
    what = "is a file, not a folder" if root.exists() else "does not exist"
    raise CorpusError(
        f"The corpus folder {root} {what}. Check corpus.path in the config (relative paths are "
        "taken from the config file's folder)."
    )
