"""Every error kbguard raises on purpose.

    KbguardError                  base: a message that says what went wrong and what to do next
     ├── ConfigError              the KB config is missing, unreadable or invalid
     ├── CorpusError              the corpus folder is missing or unreadable
     ├── LockedError              another kbguard process holds this KB
     ├── ManifestError            the DuckDB manifest cannot be opened, read or migrated
     ├── ParseError               one document could not be parsed (recorded, never fatal to a run)
     ├── EmbedError               an embedding provider failed
     │    ├── ProviderUnavailable  the provider cannot be reached or loaded, or did not answer
     │    ├── ProviderRejected     the provider refused the request (key, model, input)
     │    ├── InvalidAnswer        the provider answered, but not with usable vectors
     │    ├── TextTooLong          a text is over the model's input limit (a chunking error)
     │    └── ProvidersDisagree    two providers of one space make different vectors
     ├── StoreError               the vector store rejected an operation
     │    └── StoreUnavailable    the store cannot be opened (missing, locked, damaged)
     ├── SnapshotError            a snapshot is missing, damaged or untrusted
     │    └── SnapshotDamaged     its files do not match its checksums
     ├── RestoreNeeded            damage beyond a repair from the cache: restore a snapshot
     └── RestorePending           a killed restore must be finished before anything else

The CLI maps these to exit codes in one place (`kbguard.cli.main`); the library never prints
and never exits. Third-party exceptions are translated at the adapter boundary.
"""

from __future__ import annotations


class KbguardError(Exception):
    """Base of every kbguard error. ``str(err)`` is the whole message shown to the user."""

    exit_code = 2


class ConfigError(KbguardError):
    pass


class CorpusError(KbguardError):
    pass


class LockedError(KbguardError):
    exit_code = 3


class ManifestError(KbguardError):
    pass


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


class SnapshotError(KbguardError):
    pass


class SnapshotDamaged(SnapshotError):
    """A snapshot's files do not match its metadata (or the metadata is unreadable).

    `kbguard snapshot verify` reports it as a finding (exit 1); for a restore it is a reason
    the work cannot be done (exit 2, as every SnapshotError)."""


class RestoreNeeded(KbguardError):
    """The damage is beyond a repair from the cache: restore from a snapshot."""


class RestorePending(KbguardError):
    """A restore was killed after its commit point; only `kbguard restore` may run."""
