"""The KB seam: what every command knows about a KB beyond its config.

Its store (not yet opened), the vectors each point carries, a point's payload, what decides a
document's chunks, and how the corpus compares with the manifest. Rebuild, verify, repair,
snapshot, restore, status and search all build on these, and on nothing of each other's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kbguard.config import Config
from kbguard.manifest import DocumentRow
from kbguard.scan import ScannedFile, ScanResult
from kbguard.store import Store, VectorSpec, open_store


def store_for(cfg: Config) -> Store:
    """The configured store of a KB (not yet opened: adapters open lazily)."""
    return open_store(cfg.store_backend, path=cfg.store_path, url=cfg.store_url,
                      collection=cfg.collection, api_key_env=cfg.store_api_key_env)


def vector_specs(cfg: Config) -> list[VectorSpec]:
    return [VectorSpec(s.name, s.dim, "cosine") for s in cfg.spaces]


def parse_settings(cfg: Config) -> str:
    """What decides a document's chunks besides its bytes; a change re-chunks every document."""
    from kbguard.parse import PARSER_VERSION

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
