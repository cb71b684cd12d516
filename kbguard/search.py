"""Search a KB: embed the query in one space and ask the store for the nearest points."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kbguard.config import Config
from kbguard.embed import get_embedder
from kbguard.errors import ConfigError
from kbguard.lock import check_unlocked
from kbguard.rebuild import store_for
from kbguard.recovery import missing_manifest

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
        store.describe()  # a missing or damaged store fails here, before the model loads
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


def _snippet(text: str, section: str) -> str:
    if section and text.startswith(section):
        text = text[len(section):]
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"
