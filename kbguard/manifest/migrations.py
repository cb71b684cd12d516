"""Numbered schema migrations of the manifest, and bringing a file up to the newest.

Each migration runs once, in its own transaction, and is recorded in ``migrations``. Never edit a
released migration: add the next number.
"""

from __future__ import annotations

from pathlib import Path

from kbguard.errors import ManifestError
from kbguard.manifest.connection import Connection, now

M001_CORE = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);

-- One row per pipeline run (rebuild, verify, restore, ...); summary is the run's JSON report.
CREATE SEQUENCE run_ids START 1;
CREATE TABLE runs (
    run_id      BIGINT PRIMARY KEY DEFAULT nextval('run_ids'),
    kind        VARCHAR NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status      VARCHAR NOT NULL,          -- running | ok | failed
    corpus_rev  VARCHAR,
    summary     JSON
);

-- What the corpus holds. file_hash/size/mtime_ns are the last scan (the stat cache);
-- indexed_hash is the version whose chunks are in `chunks`.
CREATE TABLE documents (
    path         VARCHAR PRIMARY KEY,
    file_hash    VARCHAR,
    size         BIGINT,
    mtime_ns     BIGINT,
    indexed_hash VARCHAR,
    status       VARCHAR NOT NULL,         -- ok | failed
    error        VARCHAR,
    chunks       INTEGER NOT NULL DEFAULT 0,
    updated_at   TIMESTAMPTZ NOT NULL
);

-- What the KB should contain: one row per point.
CREATE TABLE chunks (
    point_id     VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,
    seq          INTEGER NOT NULL,
    content_hash VARCHAR NOT NULL,
    occurrence   INTEGER NOT NULL,
    section      VARCHAR NOT NULL,
    text         VARCHAR NOT NULL,
    tokens       INTEGER NOT NULL
);

-- Every vector ever computed, keyed by embedding space and text; vector is float32 little-endian.
CREATE TABLE embeddings (
    space_id     VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    vector       BLOB NOT NULL,
    checksum     VARCHAR NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    run_id       BIGINT,
    PRIMARY KEY (space_id, content_hash)
);

-- What was written to the store. A row is inserted as pending before the write and confirmed
-- after the store has flushed it, so a killed run never leaves a point nobody knows about.
CREATE TABLE store_state (
    point_id     VARCHAR NOT NULL,
    path         VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL,
    vectors      VARCHAR NOT NULL,         -- names of the vectors written, comma-separated
    confirmed    BOOLEAN NOT NULL,
    written_at   TIMESTAMPTZ NOT NULL
);
"""

M002_CHECKS = """
-- Finding history of `kbguard verify`: one row per finding class per check (zero counts too),
-- so a trend can be read back. The check itself is a row of `runs` with kind 'verify'.
CREATE TABLE findings (
    run_id       BIGINT NOT NULL,
    finding      VARCHAR NOT NULL,
    count        BIGINT NOT NULL,
    examples     JSON,
    PRIMARY KEY (run_id, finding)
);
"""

M003_ENCODINGS = """
-- The text encoding a document's chunks were read with (utf-8, cp1252, ...): NULL for PDF and
-- DOCX, for a document that never parsed, and for one indexed before encodings were recorded.
ALTER TABLE documents ADD COLUMN encoding VARCHAR;
-- Text files refused for not being UTF-8 are read now: forgetting their hash makes the next
-- rebuild parse them again (a failed file's hash stops it being retried until its bytes change).
UPDATE documents SET file_hash = NULL
WHERE status = 'failed' AND (error LIKE '%invalid UTF-8 at byte offset%'
                             OR error LIKE '%UTF-16 text; kbguard reads text files as UTF-8%');
"""

M004_PROVIDERS = """
-- Which provider of its space's chain made each cached vector (NULL: cached before providers
-- were recorded).
ALTER TABLE embeddings ADD COLUMN provider VARCHAR;

-- The bill: one row per run, space and provider that embedded anything (rebuild, verify
-- --sample/--deep re-embedding, repair). tokens are the API's own count where it gave one,
-- else the model's tokenizer's; cost_usd = tokens x the provider's price_per_million_tokens.
CREATE TABLE ledger (
    run_id      BIGINT,
    kind        VARCHAR NOT NULL,
    space       VARCHAR NOT NULL,
    space_id    VARCHAR NOT NULL,
    provider    VARCHAR NOT NULL,
    texts       BIGINT NOT NULL,
    tokens      BIGINT NOT NULL,
    requests    BIGINT NOT NULL,
    seconds     DOUBLE NOT NULL,
    cost_usd    DOUBLE NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
);
"""

M005_DRILLS = """
-- One row per rehearsed failure (`kbguard drill`), run on a scratch copy of this KB.
-- status: passed | failed (recovery failed or the KB did not end healthy) | missed (healthy, but
-- slower than its objective) | not-possible (the KB lacks what the drill needs; message says what).
-- detection_s: from the damage to the command that notices it; recovery_s: from the first
-- recovery command to a healthy verify. requests/texts/tokens/cost_usd: the embedding it cost.
CREATE SEQUENCE drill_ids START 1;
CREATE TABLE drills (
    drill_id    BIGINT PRIMARY KEY DEFAULT nextval('drill_ids'),
    scenario    VARCHAR NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL,
    status      VARCHAR NOT NULL,
    healthy     BOOLEAN NOT NULL,
    detection_s DOUBLE,
    recovery_s  DOUBLE,
    objective_s DOUBLE,
    requests    BIGINT NOT NULL DEFAULT 0,
    texts       BIGINT NOT NULL DEFAULT 0,
    tokens      BIGINT NOT NULL DEFAULT 0,
    cost_usd    DOUBLE NOT NULL DEFAULT 0,
    git_commit  VARCHAR,
    dvc_hash    VARCHAR,
    message     VARCHAR,
    steps       JSON
);
"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "core", M001_CORE),
    (2, "checks", M002_CHECKS),
    (3, "encodings", M003_ENCODINGS),
    (4, "providers", M004_PROVIDERS),
    (5, "drills", M005_DRILLS),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def applied_version(db: Connection) -> int:
    exists = db.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migrations'"
    ).fetchone()[0]
    if not exists:
        return 0
    return int(db.execute("SELECT coalesce(max(version), 0) FROM migrations").fetchone()[0])


def check_version(db: Connection, path: Path) -> None:
    """Refuse a file this kbguard cannot read as it is (opened read-only: nothing migrates)."""
    applied = applied_version(db)
    if applied == 0:
        # migrations is created before the first migration runs: a file holding only that
        # (or nothing) is a first build killed before it wrote anything
        others = db.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_name <> 'migrations'").fetchone()[0]
        if others == 0:
            raise ManifestError(
                f"{path} is an empty manifest: a first build was interrupted before it "
                "wrote anything. Run `kbguard rebuild`.")
        raise ManifestError(f"{path} is not a kbguard manifest (no schema found). "
                            "Point manifest.path at the KB's manifest.")
    if applied > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {applied}, newer than this kbguard "
            f"understands ({SCHEMA_VERSION}). Upgrade kbguard."
        )
    if applied < SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {applied}; run any writing command "
            "(e.g. `kbguard rebuild`) to migrate it."
        )


def migrate(db: Connection, path: Path) -> None:
    """Run every migration the file lacks, each in its own transaction."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, "
        "name VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    applied = applied_version(db)
    if applied > SCHEMA_VERSION:
        raise ManifestError(
            f"{path} has schema version {applied}, newer than this kbguard "
            f"understands ({SCHEMA_VERSION}). Upgrade kbguard."
        )
    for version, name, sql in MIGRATIONS:
        if version <= applied:
            continue
        with db.transaction():
            db.execute(sql)
            db.execute("INSERT INTO migrations VALUES (?, ?, ?)", [version, name, now()])
