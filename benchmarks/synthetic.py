"""Synthetic benchmark KBs: the config (fake embedder, Edge store, everything under root) and a
KB of generated chunks written straight into corpus, manifest and store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kbguard.config import Config
from kbguard.core.lock import kb_lock
from kbguard.ingest.chunk import content_hash, point_id
from kbguard.ingest.plan import point_payload
from kbguard.ingest.scan import file_md5
from kbguard.manifest import ChunkRow, DocumentRow, Manifest
from kbguard.providers import chain_for
from kbguard.store import Point, store_for, vector_specs

CONFIG = """\
[kb]
name = "bench"
[corpus]
path = "corpus"
[[spaces]]
name = "local"
provider = "fake"
model = "fake-hash"
dim = {dim}
[store]
backend = "edge"
path = "state/store"
[manifest]
path = "state/manifest.duckdb"
[snapshots]
root = "state/snapshots"
"""


def write_synthetic_config(root: Path, dim: int) -> Path:
    """Write ``root/kbguard.toml`` (and an empty corpus folder) and return its path."""
    (root / "corpus").mkdir(parents=True, exist_ok=True)
    path = root / "kbguard.toml"
    path.write_text(CONFIG.format(dim=dim))
    return path


def fill_synthetic(cfg: Config, *, points: int, per_doc: int = 100, words: int = 60,
                   seed: int = 0, page: int = 2048) -> int:
    """Write a consistent KB of ``points`` generated chunks into corpus, manifest and store
    (embedded with each space's configured embedder), without parsing: for scale tests and
    benchmarks. Points go to the store through ``Manifest.points.write``, as a rebuild's do.

    The manifest and store must be empty. Returns the number of points written.
    """
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(5000)]
    names = ",".join(sorted(s.name for s in cfg.spaces))
    cfg.corpus.mkdir(parents=True, exist_ok=True)
    docs = (points + per_doc - 1) // per_doc
    written = 0
    with kb_lock(cfg.manifest, "synthetic"), \
            Manifest.open(cfg.manifest, kb=cfg.kb) as manifest, store_for(cfg) as store:
        store.ensure(vector_specs(cfg))
        pending: list[ChunkRow] = []

        def write_pending() -> None:
            nonlocal written
            if not pending:
                return
            texts = [c.text for c in pending]
            vectors = {s.name: chain_for(s).embed_batch(texts) for s in cfg.spaces}
            with manifest.transaction():
                for s in cfg.spaces:
                    manifest.cache.add(
                        s.space_id,
                        list(zip([c.content_hash for c in pending], vectors[s.name],
                                 strict=True)), None)
            manifest.points.write(store, [
                (Point(c.point_id, {s.name: vectors[s.name][i] for s in cfg.spaces},
                       point_payload(cfg.kb, c.path, c.content_hash, 0, c.section, c.text)),
                 c.path, c.content_hash)
                for i, c in enumerate(pending)], names)
            written += len(pending)
            pending.clear()

        for d in range(docs):
            rel = f"synthetic/doc{d:06d}.md"
            n = min(per_doc, points - d * per_doc)
            texts = []
            for seq in range(n):
                body = " ".join(rng.choice(vocab, size=words))
                texts.append(f"Synthetic\n\nDocument {d} chunk {seq}: {body}")
            full = cfg.corpus / rel
            full.parent.mkdir(parents=True, exist_ok=True)
            full.write_text("\n\n".join(texts), encoding="utf-8")
            st = full.stat()
            digest = file_md5(full)
            chunks = []
            for seq, text in enumerate(texts):
                h = content_hash(text)
                chunks.append(ChunkRow(point_id(cfg.kb, rel, h, 0), rel, seq, h, 0, "Synthetic",
                                       text, words))
            with manifest.transaction():
                manifest.documents.record(DocumentRow(rel, digest, st.st_size, st.st_mtime_ns,
                                                      digest, "ok", None, n, "utf-8"), chunks)
            pending.extend(chunks)
            if len(pending) >= page:
                write_pending()
        write_pending()
    return written
