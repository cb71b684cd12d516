"""The checks a command makes before it works on a KB: one place, one order.

A command says what it needs (``Needs``) and does its work inside ``preflight``, which makes
the checks that apply, in the order below, and hands the work what it asked for (``Ready``).
The order is part of the interface: of two things wrong, the one checked first is what the
user hears. Each check lives with what it checks (``core.lock``, ``kb.lost_manifest``,
``kb.corpus``, ...); this module decides which run, and when.

    check                                          made for
    1. the corpus is a folder                      rebuild, estimate
    2. every space's provider chain builds         rebuild (a missing key or model is refused
                                                   before anything is written)
    3. no writer holds the KB                      estimate, report, runbook: readers that
                                                   take no lock
    4. the manifest is there, else the command's   verify, repair, snapshot create, drill,
       own error (a lost one says how to get it    status, search, report; before the lock,
       back)                                       whose file would create its folder
    5. the KB's lock, to write or to read          rebuild, verify (to read), repair, chaos,
                                                   snapshot create and prune, restore, drill
    6. no restore is half done                     every lock holder but restore, which is
                                                   what finishes it
    7. a missing manifest is not a lost one        rebuild (refused, but for --full),
                                                   estimate (reported in ``Ready.lost``)
    8. the manifest can be written                 repair (before its check, not after it)
    9. the store                                   chaos, restore, search (opened lazily,
                                                   closed when the work ends)

Room on disk is checked by each command where it knows how much it writes: a snapshot once it
has counted the store's points, a restore once it has chosen its snapshot, a drill once it
knows which drills can run (``core.disk.require_free``).

`status` and `search` first ask a running rebuild, which answers for the KB it holds
(``kb.read_socket``); only when none does do they read the KB themselves, after these checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum

from kbguard.config import Config
from kbguard.core.lock import check_unlocked, kb_lock, refuse_half_restored
from kbguard.errors import KbguardError, ManifestLost
from kbguard.kb.corpus import require_corpus
from kbguard.kb.lost_manifest import lost_manifest, missing_manifest, refuse_lost_manifest
from kbguard.manifest import require_writable
from kbguard.providers import chain_for
from kbguard.store import Store, store_for


class Lock(Enum):
    WRITE = "write"
    # a check that only reads the manifest: where the lock file cannot be written, no writer
    # can take it either, and the check runs without it (``core.lock.kb_lock``)
    READ = "read"


class Lost(Enum):
    """What a command does with a manifest that is missing while the KB's snapshot or store
    survives (``kb.lost_manifest``)."""

    REFUSE = "refuse"   # a rebuild would embed the whole corpus again: the way back is a restore
    REPORT = "report"   # an estimate prices both ways back


@dataclass(frozen=True)
class Needs:
    """What a command needs before it starts; see the module docstring for each check."""

    command: str                  # as the lock names it for whoever finds the KB busy
    corpus: bool = False
    providers: bool = False
    unlocked: bool = False
    # the error for a missing manifest (``unbuilt(...)`` words the usual one); None: not checked
    manifest: Callable[[Config], KbguardError] | None = None
    lock: Lock | None = None
    restoring: bool = False       # `kbguard restore`: it finishes a half-done restore
    lost: Lost | None = None
    writable: bool = False
    store: bool = False


@dataclass
class Ready:
    """What the checks leave the work: the store it asked for, and for ``Lost.REPORT`` why
    the manifest is missing (None: it is there, or the KB was never built)."""

    opened: Store | None = None
    lost: ManifestLost | None = None

    @property
    def store(self) -> Store:
        assert self.opened is not None, "only Needs(store=True) opens the store"
        return self.opened


def unbuilt(never_built: str) -> Callable[[Config], KbguardError]:
    """The error for a missing manifest: a lost one says how to restore it; one never built
    says ``never_built`` (what to run instead)."""
    return lambda cfg: missing_manifest(cfg, never_built=never_built)


@contextmanager
def preflight(cfg: Config, needs: Needs) -> Iterator[Ready]:
    """Make the checks ``needs`` asks for, in order, then run the ``with`` block, holding the
    lock and the store it asked for until the block ends."""
    if needs.corpus:
        require_corpus(cfg.corpus)
    if needs.providers:
        for space in cfg.spaces:
            chain_for(space)
    if needs.unlocked:
        check_unlocked(cfg.manifest)
    if needs.manifest is not None and not cfg.manifest.exists():
        raise needs.manifest(cfg)
    with ExitStack() as held:
        if needs.lock is not None:
            held.enter_context(kb_lock(cfg.manifest, needs.command,
                                       reader=needs.lock is Lock.READ))
            if not needs.restoring:
                refuse_half_restored(cfg.manifest)
        ready = Ready()
        if needs.lost is not None and not cfg.manifest.exists():
            if needs.lost is Lost.REFUSE:
                refuse_lost_manifest(cfg)
            else:
                ready.lost = lost_manifest(cfg)
        if needs.writable and cfg.manifest.exists():
            require_writable(cfg.manifest)
        if needs.store:
            ready.opened = held.enter_context(store_for(cfg))
        yield ready


def preflight_checks(cfg: Config, needs: Needs) -> Ready:
    """``preflight`` for a command that holds neither lock nor store while it works."""
    if needs.lock is not None or needs.store:
        raise ValueError(f"{needs.command} holds the lock or the store: use preflight()")
    with preflight(cfg, needs) as ready:
        return ready
