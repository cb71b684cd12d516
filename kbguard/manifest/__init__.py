"""The manifest: one DuckDB file per KB, the record of what the KB should contain.

Documents, chunks (with their text), the embedding cache and the store state live here, with the
KB's history: runs, checks, drills and the ledger of what embedding cost. Every pipeline batch is
one transaction, so a run killed at any moment leaves a manifest that the next run continues
from. A DuckDB error never leaves the package: it is a ``ManifestError`` (or DiskFullError,
ManifestReadOnly, LockedError) that names the file and what to do.

Callers use methods named for what they do, not SQL, on the part of the ``Manifest`` that
records the thing they ask about; each part is one module:

    manifest.py    Manifest: opening, the KB binding, transactions, meta, the parts
    connection.py  the DuckDB connection and the translation of its errors
    migrations.py  the numbered schema migrations, and bringing a file up to the newest
    documents.py   m.documents, m.chunks: the corpus as last scanned, the chunks the KB wants
    cache.py       m.cache: the embedding cache (and each space's debt, derived from it)
    points.py      m.points: the store state, and the write protocol every command uses
    runs.py        m.runs: every command that changed or checked the KB
    checks.py      m.checks: what each verify found
    drills.py      m.drills: every rehearsed failure
    ledger.py      m.ledger: what every embedding request cost
    future.py      m.future: the chunks as a rebuild would leave them (estimates)
    tables.py      m.tables: whole tables in and out (snapshots, restores)
"""

from __future__ import annotations

from kbguard.manifest.cache import blob_vector, vector_bytes, vector_checksum
from kbguard.manifest.connection import now, require_writable
from kbguard.manifest.documents import ChunkRow, DocumentRow
from kbguard.manifest.manifest import Manifest
from kbguard.manifest.migrations import SCHEMA_VERSION

__all__ = ["Manifest", "DocumentRow", "ChunkRow", "SCHEMA_VERSION", "now", "require_writable",
           "vector_bytes", "vector_checksum", "blob_vector"]
