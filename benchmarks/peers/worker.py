"""One indexing run of a peer on a corpus folder, as its own process in the peers' venv
(benchmarks/peers/setup.sh); prints one JSON object: texts embedded, chunks, documents, time.

    PEERS_PY benchmarks/peers/worker.py langchain  --corpus DIR --state DIR [--store S]
    PEERS_PY benchmarks/peers/worker.py llamaindex --corpus DIR --state DIR [--store S]

Both peers run as their documentation sets them up for a corpus kept in sync, with a fake
embedder that counts what it is asked to embed, and one of two vector stores (``--store``):

- ``memory``: each peer's own in-process store, saved under ``--state`` at the end of a run and
  loaded at the start of the next (LangChain's ``InMemoryVectorStore`` dump/load, LlamaIndex's
  ``SimpleVectorStore`` persist): what the indexing layer itself costs.
- ``qdrant-local``: qdrant-client's local mode under ``--state`` (the only Qdrant that runs
  here without a server). It commits SQLite once per point, so on a slow disk its writes,
  not the indexing layer, set the time.

The two set-ups:

- langchain: ``langchain_core.indexing.index()`` with a ``SQLRecordManager`` (SQLite) and
  ``QdrantVectorStore``, ``cleanup="full"``, documents split by
  ``RecursiveCharacterTextSplitter.from_language`` (Markdown or HTML) into chunks of at most
  1,000 characters (about kbguard's 256 tokens); each chunk's ``source`` is its file.
- llamaindex: ``IngestionPipeline`` with a ``SimpleDocumentStore``,
  ``DocstoreStrategy.UPSERTS_AND_DELETE`` and ``QdrantVectorStore``, documents identified by
  their path, split by ``SentenceSplitter`` at 256 tokens (words and punctuation, as kbguard's
  fake embedder counts: tiktoken's files cannot be downloaded here); the pipeline (docstore
  and cache) is persisted under ``--state`` and loaded by the next run.

The embedder is kbguard's fake one re-implemented (hashed bag of words, 384 dimensions,
normalised), so embedding costs the same per text on both sides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

DIM = 384
COLLECTION = "peers"
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class CountingFakeEmbedder:
    """kbguard's fake embedder, counting every text it embeds."""

    def __init__(self) -> None:
        self.texts = 0
        self.calls = 0
        self.queries = 0     # probes and queries, not the corpus: counted apart

    def embed(self, texts: list[str], query: bool = False) -> list[list[float]]:
        if query:
            self.queries += len(texts)
        else:
            self.texts += len(texts)
            self.calls += 1
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()) or [text]:
                d = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[row, int.from_bytes(d[:4], "little") % DIM] += 1.0 if d[4] & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.tolist()


def corpus_files(root: Path) -> list[tuple[str, str]]:
    """(relative path, text) of every Markdown and HTML file, in path order."""
    files = sorted(p for p in root.rglob("*") if p.suffix in (".md", ".html") and p.is_file())
    return [(str(p.relative_to(root)), p.read_text(encoding="utf-8")) for p in files]


def qdrant(state: Path):
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(state / "qdrant"))
    if not client.collection_exists(COLLECTION):
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(
            size=DIM, distance=models.Distance.COSINE))
    return client


def run_langchain(corpus: Path, state: Path, embedder: CountingFakeEmbedder,
                  store_kind: str) -> dict:
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.indexing import index
    from langchain_core.vectorstores import InMemoryVectorStore
    from langchain_text_splitters import Language, RecursiveCharacterTextSplitter

    class Counting(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed(texts)

        def embed_query(self, text: str) -> list[float]:
            return embedder.embed([text], query=True)[0]

    t0 = time.perf_counter()
    saved = state / "store.json"
    if store_kind == "memory":
        client = None
        store = (InMemoryVectorStore.load(str(saved), Counting()) if saved.exists()
                 else InMemoryVectorStore(Counting()))
    else:
        from langchain_qdrant import QdrantVectorStore

        client = qdrant(state)
        store = QdrantVectorStore(client=client, collection_name=COLLECTION,
                                  embedding=Counting())
    records = SQLRecordManager(COLLECTION, db_url=f"sqlite:///{state / 'records.sqlite'}")
    records.create_schema()
    splitters = {
        ".md": RecursiveCharacterTextSplitter.from_language(Language.MARKDOWN, chunk_size=1000,
                                                            chunk_overlap=0),
        ".html": RecursiveCharacterTextSplitter.from_language(Language.HTML, chunk_size=1000,
                                                              chunk_overlap=0),
    }
    chunks = 0
    documents = 0

    def docs():
        nonlocal chunks, documents
        for rel, text in corpus_files(corpus):
            documents += 1
            for piece in splitters[Path(rel).suffix].split_text(text):
                chunks += 1
                yield Document(page_content=piece, metadata={"source": rel})

    setup_s = time.perf_counter() - t0
    result = index(docs(), records, store, cleanup="full", source_id_key="source",
                   batch_size=100)
    t1 = time.perf_counter()
    if client is None:
        store.dump(str(saved))
        points = len(store.store)
    else:
        points = client.count(COLLECTION).count
        client.close()
    return {"documents": documents, "chunks": chunks, "points": points,
            "setup_s": round(setup_s, 3), "save_s": round(time.perf_counter() - t1, 3),
            "index": dict(result)}


def run_llamaindex(corpus: Path, state: Path, embedder: CountingFakeEmbedder,
                   store_kind: str) -> dict:
    from llama_index.core import Document
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.vector_stores import SimpleVectorStore

    class Counting(BaseEmbedding):
        def _get_text_embedding(self, text: str) -> list[float]:
            return embedder.embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed(texts)

        def _get_query_embedding(self, query: str) -> list[float]:
            return embedder.embed([query], query=True)[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embedder.embed([query], query=True)[0]

    t0 = time.perf_counter()
    vectors = state / "vectors.json"
    if store_kind == "memory":
        client = None
        store = (SimpleVectorStore.from_persist_path(str(vectors)) if vectors.exists()
                 else SimpleVectorStore())
    else:
        from llama_index.vector_stores.qdrant import QdrantVectorStore

        client = qdrant(state)
        store = QdrantVectorStore(client=client, collection_name=COLLECTION)
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0,
                                          tokenizer=_WORD.findall),
                         Counting(model_name="fake-hash", embed_batch_size=32)],
        vector_store=store,
        docstore=SimpleDocumentStore(),
        docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE)
    saved = state / "pipeline"
    if saved.exists():
        pipeline.load(str(saved))
    documents = [Document(text=text, id_=rel, metadata={"source": rel})
                 for rel, text in corpus_files(corpus)]
    setup_s = time.perf_counter() - t0
    nodes = pipeline.run(documents=documents)
    t1 = time.perf_counter()
    pipeline.persist(str(saved))
    if client is None:
        store.persist(str(vectors))
        points = len(store.data.embedding_dict)
    else:
        points = client.count(COLLECTION).count
        client.close()
    return {"documents": len(documents), "nodes_written": len(nodes), "points": points,
            "docstore_documents": len(pipeline.docstore.docs),
            "setup_s": round(setup_s, 3), "save_s": round(time.perf_counter() - t1, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("peer", choices=["langchain", "llamaindex"])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--state", type=Path, required=True)
    ap.add_argument("--store", choices=["memory", "qdrant-local"], default="memory")
    args = ap.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    embedder = CountingFakeEmbedder()
    t0 = time.perf_counter()
    run = run_langchain if args.peer == "langchain" else run_llamaindex
    out = run(args.corpus, args.state, embedder, args.store)
    out.update(peer=args.peer, store=args.store, texts_embedded=embedder.texts, embed_calls=embedder.calls,
               queries_embedded=embedder.queries,
               seconds=round(time.perf_counter() - t0, 3))
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
