"""Every error kbguard raises on purpose.

    KbguardError                  base: a message that says what went wrong and what to do next
     ├── ConfigError              the KB config is missing, unreadable or invalid
     ├── CorpusError              the corpus folder is missing or unreadable
     ├── LockedError              another kbguard process holds this KB
     ├── ManifestError            the DuckDB manifest cannot be opened, read or migrated
     │    ├── ManifestReadOnly    it can be read but not written (read-only filesystem, file
     │    │                       attributes, permissions): reading commands still work
     │    └── ManifestLost        the file is missing, but a snapshot or the store of the KB
     │                            survives: the way back is a restore, not a rebuild
     ├── ParseError               one document could not be parsed (recorded, never fatal to a run)
     ├── EmbedError               an embedding provider failed
     │    ├── ProviderUnavailable  the provider cannot be reached or loaded, or did not answer
     │    ├── ProviderRejected     the provider refused the request (key, model, input)
     │    ├── InvalidAnswer        the provider answered, but not with usable vectors
     │    ├── TextTooLong          a text is over the model's input limit (a chunking error)
     │    └── ProvidersDisagree    two providers of one space make different vectors
     ├── StoreError               the vector store rejected an operation
     │    └── StoreUnavailable    the store cannot be opened (missing, locked, damaged)
     │         └── StoreDamaged    its files are there but cannot be read
     ├── SnapshotError            a snapshot is missing, damaged or untrusted
     │    ├── SnapshotDamaged     its files do not match its checksums
     │    └── SnapshotWrongModel  its vectors are not what the config's model makes of their
     │                            texts (a Qdrant snapshot of a collection of another model)
     ├── DiskFullError            a filesystem kbguard writes to is full, or too full for the next
     │                            write: names the filesystem, what is free and what is needed
     ├── OverBudget               work estimated to spend more on embedding than the ceiling
     │                            it was given (`kbguard drill --max-cost`)
     ├── RestoreNeeded            damage beyond a repair from the cache: restore a snapshot
     ├── RestorePending           a killed restore must be finished before anything else
     └── NotConfirmed             a command that replaces or deletes data was not confirmed

The CLI maps these (and the library's verdicts) to exit codes in one place,
``kbguard.cli.common.exit_code_for``; the library never prints and never exits. Third-party
exceptions are translated at the adapter boundary. Errors that callers act on carry their facts
as attributes (``LockedError.pid``, ``SnapshotDamaged.file``), so no code reads message text.
"""

from __future__ import annotations


class KbguardError(Exception):
    """Base of every kbguard error. ``str(err)`` is the whole message shown to the user."""


class ConfigError(KbguardError):
    pass


class CorpusError(KbguardError):
    pass


class LockedError(KbguardError):
    """Another process holds the KB's lock: ``pid`` and ``command`` name it when it said so."""

    def __init__(self, message: str, *, pid: int | None = None, command: str | None = None,
                 since: str | None = None):
        super().__init__(message)
        self.pid, self.command, self.since = pid, command, since


class ManifestError(KbguardError):
    """``engine_error``: the first line of what DuckDB said when it refused the file or a
    statement on it; None when kbguard refused it itself (an empty file, another KB's, a
    schema this version cannot read)."""

    def __init__(self, message: str, *, engine_error: str | None = None):
        super().__init__(message)
        self.engine_error = engine_error


class ManifestReadOnly(ManifestError):
    """The manifest cannot be written; nothing is wrong with what it holds."""


class ManifestLost(ManifestError):
    """The manifest file is missing while the KB's snapshot or store survives. ``snapshot``:
    the id of the newest intact snapshot to restore from, None when only the store is left."""

    def __init__(self, message: str, *, snapshot: str | None = None):
        super().__init__(message)
        self.snapshot = snapshot


class ParseError(KbguardError):
    pass


class EmbedError(KbguardError):
    pass


class ProviderUnavailable(EmbedError):
    pass


class ProviderRejected(EmbedError):
    """The provider answered with a refusal that retrying will not change (HTTP 4xx but 429)."""


class InvalidAnswer(EmbedError):
    """An answer that is not one finite, non-zero vector of the space's size per text, in order.

    Nothing of such an answer is ever returned, cached or written."""


class TextTooLong(EmbedError):
    """A text is longer than the model reads; refused before anything is sent."""


class ProvidersDisagree(EmbedError):
    """Two providers of one space do not make the same vectors for the probe texts."""


class StoreError(KbguardError):
    pass


class StoreUnavailable(StoreError):
    pass


class StoreDamaged(StoreUnavailable):
    """The store's files are there but the engine cannot open them: nothing in it can be read,
    so replacing it (`rebuild --full`, `restore`) loses nothing."""


class SnapshotError(KbguardError):
    pass


class SnapshotDamaged(SnapshotError):
    """A snapshot's files do not match its metadata (or the metadata is unreadable).

    `kbguard snapshot verify` reports it as a finding (exit 1); for a restore it is a reason
    the work cannot be done (exit 2, as every SnapshotError). ``snapshot_id`` and ``file`` (the
    damaged file, None for the metadata as a whole) say where."""

    def __init__(self, message: str, *, snapshot_id: str | None = None,
                 file: str | None = None):
        super().__init__(message)
        self.snapshot_id, self.file = snapshot_id, file


class SnapshotWrongModel(SnapshotError):
    """A sample of a snapshot's points, re-embedded by the space's model, does not give their
    vectors back: ``space`` names the space, ``cosine`` is the lowest cosine found."""

    def __init__(self, message: str, *, space: str, cosine: float):
        super().__init__(message)
        self.space, self.cosine = space, cosine


class DiskFullError(KbguardError):
    """No room to write. Whatever was committed before is kept: once there is room, the same
    command continues where it stopped."""


class OverBudget(KbguardError):
    """Refused before it began: its estimated embedding spend ``estimate_usd`` passes the
    ceiling ``ceiling_usd`` it was given."""

    def __init__(self, message: str, *, estimate_usd: float, ceiling_usd: float):
        super().__init__(message)
        self.estimate_usd, self.ceiling_usd = estimate_usd, ceiling_usd


class RestoreNeeded(KbguardError):
    """The damage is beyond a repair from the cache: restore from a snapshot."""


class RestorePending(KbguardError):
    """A restore was killed after its commit point; only `kbguard restore` may run."""


class NotConfirmed(KbguardError):
    """A command that replaces or deletes data was declined, or run without ``--yes`` where
    nobody can be asked: nothing was changed."""
