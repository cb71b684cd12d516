"""Vector stores behind one interface: Qdrant Edge (embedded default) and qdrant-client."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kbguard.errors import StoreError
from kbguard.store.base import (
    DISTANCES,
    CollectionInfo,
    Hit,
    NativeFiles,
    Point,
    PointArrays,
    Store,
    VectorSpec,
)

if TYPE_CHECKING:
    from kbguard.config import Config

BACKENDS = ("edge", "qdrant")

__all__ = [
    "BACKENDS",
    "DISTANCES",
    "CollectionInfo",
    "Hit",
    "NativeFiles",
    "Point",
    "PointArrays",
    "Store",
    "VectorSpec",
    "open_store",
    "store_for",
    "vector_specs",
]


def open_store(
    backend: str,
    *,
    path: Path | None = None,
    url: str | None = None,
    collection: str = "kb",
    api_key: str | None = None,
    api_key_env: str | None = None,
) -> Store:
    """The store adapter for ``backend``; nothing is opened until the first call on it.

    ``edge`` takes the shard folder as ``path`` (a ``url`` is ignored); ``qdrant`` takes a server
    ``url`` (with an optional ``api_key``, or ``api_key_env``: the environment variable to read
    it from when the store is opened) or a local-mode ``path``, and the ``collection`` name.
    """
    if backend == "edge":
        if path is None:
            raise StoreError("The edge store backend needs the shard folder path (store.path).")
        from kbguard.store.edge import EdgeStore

        return EdgeStore(Path(path))
    if backend == "qdrant":
        from kbguard.store.qdrant import QdrantStore

        local = Path(path) if path is not None else None
        return QdrantStore(collection, url=url, path=local, api_key=api_key,
                           api_key_env=api_key_env)
    raise StoreError(
        f"Unknown store backend {backend!r}; the known backends are {', '.join(BACKENDS)}."
    )


def store_for(cfg: Config) -> Store:
    """The configured store of a KB (not yet opened: adapters open lazily)."""
    return open_store(cfg.store_backend, path=cfg.store_path, url=cfg.store_url,
                      collection=cfg.collection, api_key_env=cfg.store_api_key_env)


def vector_specs(cfg: Config) -> list[VectorSpec]:
    """The named vectors of the KB's points: one per space."""
    return [VectorSpec(s.name, s.dim, "cosine") for s in cfg.spaces]
