"""Search a KB: embed the query in one space and ask the store for the nearest points.

Search survives an embedding outage. The asked-for space (the first, or ``--space``) answers
when its providers embed the query within ``search.query_timeout_s`` and every chunk has its
vector in that space; otherwise the next complete space answers, and the result says which
space answered and why. One query never mixes spaces: its vector and the points it is compared
with come from one model.

While a rebuild holds the KB, no other process can open its manifest (nor an embedded store),
so the rebuild answers: it reports its store's points and, per space, the points that lack the
space's vector, and runs the query this process embedded (kbguard.kb.read_service). The same rules
choose the space, applied to the store as the rebuild has written it so far.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kbguard.config import Config, SpaceConfig
from kbguard.core.lock import locked_error
from kbguard.errors import (
    ConfigError,
    CorpusError,
    EmbedError,
    KbguardError,
    LockedError,
    StoreError,
    StoreUnavailable,
)
from kbguard.ingest.plan import empty_corpus_message
from kbguard.ingest.scan import walk_corpus
from kbguard.kb.preflight import Needs, preflight, unbuilt
from kbguard.kb.read_socket import ask_writer, vector_text
from kbguard.manifest import Manifest
from kbguard.providers import chain_for
from kbguard.store import Hit, store_for

SNIPPET_CHARS = 240


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    section: str
    snippet: str
    point_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """The hits of one query, the space that answered, and why it was not the one asked for."""

    hits: list[SearchHit]
    space: str
    degraded: bool = False
    reason: str | None = None
    passed_over: list[dict[str, str]] = field(default_factory=list)
    rebuild: dict[str, Any] | None = None   # the progress of the rebuild that answered

    def to_dict(self) -> dict[str, Any]:
        out = {"space": self.space, "degraded": self.degraded, "reason": self.reason,
               "passed_over": self.passed_over, "results": [h.to_dict() for h in self.hits]}
        if self.rebuild is not None:
            out["rebuild"] = self.rebuild
        return out


def search(cfg: Config, query: str, *, k: int = 5, space: str | None = None) -> SearchResult:
    """The ``k`` chunks nearest to ``query`` in ``space`` (default: the first space), or in
    the next complete space when that one cannot answer (see the module docstring)."""
    if not query.strip():
        raise ConfigError("The search text is empty; give the words to search for.")
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}.")
    asked = cfg.space(space) if space else cfg.spaces[0]
    plan = ask_writer(cfg.manifest, {"op": "search-plan"})
    if plan is not None:
        return _search_during_rebuild(cfg, query, k, asked, plan)
    needs = Needs("search", manifest=unbuilt("Run `kbguard rebuild` first."), store=True)
    with preflight(cfg, needs) as kb:
        store = kb.store
        info = store.describe()  # a damaged store fails here, before the model loads
        if not info.exists:
            raise StoreUnavailable(
                f"The store of KB '{cfg.kb}' is missing ({cfg.store_url or cfg.store_path}). "
                "Run `kbguard rebuild`: it writes the store again from the embedding cache.")
        if not info.points:
            raise _nothing_to_search(cfg)
        order = [asked, *(s for s in cfg.spaces if s is not asked)]
        return _answer(cfg, query, order, _lacking(cfg, order),
                       lambda sp, vector: store.query(sp.name, vector, k))


def _search_during_rebuild(cfg: Config, query: str, k: int, asked: SpaceConfig,
                           plan: dict[str, Any]) -> SearchResult:
    """Search the store as the running rebuild has it now. The query is embedded here, with
    this process's providers and timeout; the rebuild, which holds the store, runs the query
    (a Qdrant server takes a second client, so there it is asked directly)."""
    progress = plan["rebuild"]
    if not plan["exists"] or not plan["points"]:
        busy = locked_error(cfg.manifest)
        raise LockedError(
            f"KB '{cfg.kb}' has nothing to search yet: the running rebuild (pid "
            f"{busy.pid or '?'}, at stage {progress.get('stage') or '?'}) has not written a "
            "point to its store. Search again when it has.",
            pid=busy.pid, command=busy.command, since=busy.since)
    order = [asked, *(s for s in cfg.spaces if s is not asked)]
    lacking = {sp.name: int(plan["lacking"].get(sp.name, 0)) for sp in order}

    def run_query(sp: SpaceConfig, vector: np.ndarray) -> list[Hit]:
        if cfg.store_url:
            with store_for(cfg) as store:
                return store.query(sp.name, vector, k)
        got = ask_writer(cfg.manifest, {"op": "query", "space": sp.name, "k": k,
                                        "vector": vector_text(vector)})
        if got is None:   # the rebuild ended meanwhile: the store is free to open
            with store_for(cfg) as store:
                return store.query(sp.name, vector, k)
        return [Hit(h["id"], float(h["score"]), h["payload"]) for h in got["hits"]]

    result = _answer(cfg, query, order, lacking, run_query,
                     lacks="{n} points in the store have no vector in it yet (the running "
                           "rebuild or the next fills them)")
    result.rebuild = progress
    return result


def _answer(cfg: Config, query: str, order: list[SpaceConfig], lacking: dict[str, int],
            run_query: Callable[[SpaceConfig, np.ndarray], list[Hit]], *,
            lacks: str = "{n} chunks have no vector in it yet (the next `kbguard rebuild` "
                         "fills them)") -> SearchResult:
    """Embed ``query`` in the first space of ``order`` that can, complete spaces first, and
    run it there. ``lacking``: per space, how many lack a vector in it (``lacks`` says what)."""
    passed: list[dict[str, str]] = []
    for sp in order:
        if lacking[sp.name]:
            passed.append({"space": sp.name, "reason": (
                f"space {sp.name!r} is incomplete: " + lacks.format(n=lacking[sp.name]))})
    # complete spaces first; an incomplete one still beats no answer at all
    candidates = sorted(order, key=lambda sp: bool(lacking[sp.name]))
    for n, sp in enumerate(candidates, 1):
        # Cut the wait short only for a remote provider (a local model loading is no
        # outage) and only when another space can answer instead.
        remote = any(e.type == "openai" for e in sp.chain)
        timeout = cfg.query_timeout_s if remote and n < len(candidates) else None
        try:
            vector = _embed_query(sp, query, timeout)
        except EmbedError as exc:
            passed.append({"space": sp.name, "reason": str(exc)})
            continue
        hits = run_query(sp, vector)
        return SearchResult(
            [_hit(h) for h in hits], sp.name, degraded=bool(passed),
            reason="; ".join(p["reason"] for p in passed) or None, passed_over=passed)
    raise EmbedError(
        f"No space of KB '{cfg.kb}' could answer: "
        + "; ".join(p["reason"] for p in passed)
        + ". Search works again once a space's providers are back (or add a local standby "
        "space: see docs/providers.md).")


def _lacking(cfg: Config, spaces: list[SpaceConfig]) -> dict[str, int]:
    """Chunks without a vector, per space. With one space there is nothing to choose, so the
    manifest is not asked (the count is an anti-join over every chunk)."""
    if len(spaces) == 1:
        return {spaces[0].name: 0}
    with Manifest.open(cfg.manifest, read_only=True) as m:
        return {s.name: m.cache.chunks_lacking(s.space_id) for s in spaces}


def _embed_query(space: SpaceConfig, query: str, timeout_s: float | None) -> np.ndarray:
    """The query's vector in ``space``, or EmbedError when its providers fail or take longer
    than ``timeout_s`` (None: as long as they take): an answer from another space now beats
    this one later."""
    if timeout_s is None:
        vector: np.ndarray = chain_for(space).embed_batch([query])[0]
        return vector
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["vector"] = chain_for(space).embed_batch([query])[0]
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box["error"] = exc

    # a daemon thread: a provider that hangs must not keep the process alive after the answer
    thread = threading.Thread(target=work, name=f"query-{space.name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise EmbedError(f"space {space.name!r} did not embed the query within "
                         f"search.query_timeout_s = {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    embedded: np.ndarray = box["vector"]
    return embedded


def _hit(h: Any) -> SearchHit:
    return SearchHit(
        path=str(h.payload.get("path", "?")),
        score=round(float(h.score), 4),
        section=str(h.payload.get("section", "")),
        snippet=_snippet(str(h.payload.get("text", "")), str(h.payload.get("section", ""))),
        point_id=h.id,
    )


def _nothing_to_search(cfg: Config) -> KbguardError:
    """Why the store holds no point, with what to do about it."""
    with Manifest.open(cfg.manifest, read_only=True) as manifest:
        chunks = manifest.chunks.count()
        failed = len(manifest.documents.failed())
    if chunks:
        return StoreError(
            f"The store of KB '{cfg.kb}' holds no points, but the manifest lists {chunks} "
            "chunks. Run `kbguard verify --repair`: it writes them again from the embedding "
            "cache.")
    if cfg.corpus.is_dir() and not any(True for _ in walk_corpus(cfg.corpus, cfg.include,
                                                                  cfg.exclude)):
        return CorpusError(f"KB '{cfg.kb}' has nothing to search. {empty_corpus_message(cfg)}")
    if failed:
        return CorpusError(
            f"KB '{cfg.kb}' has nothing to search: all {failed} of its documents failed to "
            "parse. `kbguard status` lists them with the reason.")
    return CorpusError(f"KB '{cfg.kb}' has nothing to search yet. Run `kbguard rebuild`.")


def _snippet(text: str, section: str) -> str:
    if section and text.startswith(section):
        text = text[len(section):]
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"
