"""What decides a document's chunks, what a point carries, and how the corpus compares with the
manifest: the plan a rebuild (and its estimate) follows before any document is read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kbguard.config import Config
from kbguard.ingest.scan import ScannedFile, ScanResult
from kbguard.manifest import DocumentRow


def parse_settings(cfg: Config) -> str:
    """What decides a document's chunks besides its bytes; a change re-chunks every document."""
    from kbguard.ingest.parse import PARSER_VERSION

    space = cfg.spaces[0]  # its tokenizer measures the chunk cap
    return json.dumps({"parser": PARSER_VERSION, "max_tokens": cfg.max_tokens,
                       "read_as": cfg.read_as,
                       "max_file_mb": cfg.max_file_mb,
                       "tokenizer": f"{space.provider}:{space.model}"}, sort_keys=True)


def point_payload(kb: str, path: str, content_hash: str, occurrence: int, section: str,
                  text: str) -> dict[str, Any]:
    """The payload of a point: a function of its identity only, so a rebuild never rewrites it."""
    return {"kb": kb, "path": path, "content_hash": content_hash, "occurrence": occurrence,
            "section": section, "text": text}


def empty_corpus_message(cfg: Config) -> str:
    """What to say when no file of the corpus matches the config's globs."""
    excluded = f", minus corpus.exclude ({', '.join(cfg.exclude)})" if cfg.exclude else ""
    return (f"No file in {cfg.corpus} matches corpus.include ({', '.join(cfg.include)})"
            f"{excluded}: there is nothing to index. Check the [corpus] globs in {cfg.path}, "
            "then run `kbguard rebuild`.")


@dataclass
class DocPlan:
    added: list[ScannedFile]
    changed: list[ScannedFile]
    refused: list[ScannedFile]
    removed: list[str]
    unchanged: list[ScannedFile]
    restat: list[ScannedFile]     # unchanged content, new size/mtime: refresh the stat cache
    still_failed: list[ScannedFile]  # failed before, same bytes: it would fail the same way


def plan_documents(scan: ScanResult, known: dict[str, DocumentRow]) -> DocPlan:
    """Sort scanned files by what a rebuild must do with them.

    A document that failed is parsed again only once its bytes change (a parser gives the same
    answer for the same bytes); one that failed for a passing cause, such as vanishing mid-run,
    has no recorded hash and so is parsed again on the next run. It counts as added if it was
    never indexed, else as changed.
    """
    plan = DocPlan([], [], [], sorted(set(known) - set(scan.files)), [], [], [])
    for path in sorted(scan.files):
        f = scan.files[path]
        prev = known.get(path)
        if f.error:
            plan.refused.append(f)
        elif prev is not None and prev.status == "failed" and prev.file_hash == f.file_hash:
            plan.still_failed.append(f)
        elif prev is None or prev.indexed_hash is None:
            plan.added.append(f)
        elif prev.status == "ok" and prev.indexed_hash == f.file_hash:
            plan.unchanged.append(f)
            if (prev.size, prev.mtime_ns, prev.file_hash) != (f.size, f.mtime_ns, f.file_hash):
                plan.restat.append(f)
        else:
            plan.changed.append(f)
    return plan
