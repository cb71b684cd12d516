"""Search a KB: embed the query in one space and ask the store for the nearest points."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kbguard.config import Config
from kbguard.embed import get_embedder
from kbguard.errors import ConfigError, CorpusError, KbguardError, StoreError, StoreUnavailable
from kbguard.lock import check_unlocked
from kbguard.manifest import Manifest
from kbguard.rebuild import empty_corpus_message, store_for
from kbguard.recovery import missing_manifest
from kbguard.scan import walk_corpus

SNIPPET_CHARS = 240


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float
    section: str
    snippet: str
    point_id: str

    def to_dict(self) -> dict:
        return asdict(self)


def search(cfg: Config, query: str, *, k: int = 5, space: str | None = None) -> list[SearchHit]:
    """The ``k`` chunks nearest to ``query`` in ``space`` (default: the first space)."""
    if not query.strip():
        raise ConfigError("The search text is empty; give the words to search for.")
    if k < 1:
        raise ConfigError(f"-k must be at least 1, got {k}.")
    sp = cfg.space(space) if space else cfg.spaces[0]
    check_unlocked(cfg.manifest)
    if not cfg.manifest.exists():
        raise missing_manifest(cfg, never_built="Run `kbguard rebuild` first.")
    with store_for(cfg) as store:
        info = store.describe()  # a damaged store fails here, before the model loads
        if not info.exists:
            raise StoreUnavailable(
                f"The store of KB '{cfg.kb}' is missing ({cfg.store_url or cfg.store_path}). "
                "Run `kbguard rebuild`: it writes the store again from the embedding cache.")
        if not info.points:
            raise _nothing_to_search(cfg)
        vector = get_embedder(sp).embed_batch([query])[0]
        hits = store.query(sp.name, vector, k)
    return [
        SearchHit(
            path=str(h.payload.get("path", "?")),
            score=round(float(h.score), 4),
            section=str(h.payload.get("section", "")),
            snippet=_snippet(str(h.payload.get("text", "")), str(h.payload.get("section", ""))),
            point_id=h.id,
        )
        for h in hits
    ]


def _nothing_to_search(cfg: Config) -> KbguardError:
    """Why the store holds no point, with what to do about it."""
    with Manifest.open(cfg.manifest, read_only=True) as manifest:
        chunks = manifest.chunk_count()
        failed = len(manifest.failed_documents())
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
