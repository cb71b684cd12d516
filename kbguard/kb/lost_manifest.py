"""What to say when a KB's manifest file is missing.

A missing manifest means one of two very different things: a KB that was never built, or one
whose manifest was lost (a deleted file, a lost disk, a wrong path). In the second case,
"run `kbguard rebuild`" is the costly answer: without its manifest a rebuild knows no cached
vector and embeds the whole corpus again. When a snapshot or the store survives, the way back
is a restore, and every command that needs the manifest says so.
"""

from __future__ import annotations

from kbguard.config import Config
from kbguard.errors import ManifestError, ManifestLost, StoreDamaged, StoreError
from kbguard.snapshot_format import list_snapshots_under
from kbguard.store import store_for


def store_on_disk(cfg: Config) -> bool:
    """Whether the configured store has files on local disk (a server store: unknown, False)."""
    path = cfg.store_path
    if cfg.store_url or path is None:
        return False
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def missing_manifest(cfg: Config, *, store_points: int | None = None,
                     never_built: str = "Run `kbguard rebuild`.") -> ManifestError:
    """The error for a missing manifest file, with the cheapest way forward.

    ``store_points``: the points the store holds, when the caller has opened it (None: only
    look for the store's files). ``never_built``: what to say when nothing of the KB survives.
    """
    lost = lost_manifest(cfg, store_points=store_points)
    if lost is not None:
        return lost
    return ManifestError(f"No manifest at {cfg.manifest}: this KB has not been built yet. "
                         f"{never_built}")


def lost_manifest(cfg: Config, *, store_points: int | None = None) -> ManifestLost | None:
    """The error for a manifest file that is missing while a snapshot or the store of the KB
    survives (see ``missing_manifest``); None when nothing does: a KB never built."""

    where = f"No manifest at {cfg.manifest}"
    intact = [s for s in list_snapshots_under(cfg.snapshot_root) if s.problem is None]
    if intact:
        s = intact[-1]
        what = f"{s.points:,} points, " if s.points is not None else ""
        stored = f" ({what}taken {s.created_at})" if s.created_at else ""
        remote = "" if s.local else ", pulled from its DVC remote"
        return ManifestLost(
            f"{where}, but KB '{cfg.kb}' has snapshot {s.id}{stored}: if the manifest was "
            f"lost or moved, `kbguard restore --latest` brings back manifest and store from it"
            f"{remote}, embedding only what changed since. (`kbguard rebuild --full` would "
            "embed the whole corpus again.)", snapshot=s.id)
    if store_points is not None:
        left = f"still holds {store_points:,} points" if store_points > 0 else ""
    else:
        left = f"is still there ({cfg.store_path})" if store_on_disk(cfg) else ""
    if left:
        return ManifestLost(
            f"{where}, but the store of KB '{cfg.kb}' {left}: the manifest was "
            "lost or moved, and there is no snapshot to restore it from. Put the manifest back "
            "if you can (check [manifest] path in the config); otherwise `kbguard rebuild "
            "--full` builds a new one, embedding the whole corpus again.")
    return None


def refuse_lost_manifest(cfg: Config) -> None:
    """Without its manifest a rebuild knows no cached vector and embeds the whole corpus: when
    the store or a snapshot survives, that is a lost manifest, and the answer is a restore.
    (`rebuild --full` says the user wants the full rebuild all the same, and skips this.)"""

    try:
        with store_for(cfg) as store:
            info = store.describe()
    except StoreDamaged:
        points = None  # unreadable: whether its files are there decides
    except StoreError as exc:
        # Unreachable or refusing: a first build would embed the whole corpus and then fail
        # at the store, so stop now, unless a snapshot says this is a lost manifest.
        lost = lost_manifest(cfg)
        if lost is not None:
            raise lost from exc
        raise
    else:
        points = info.points if info.exists else 0
    lost = lost_manifest(cfg, store_points=points)
    if lost is not None:
        raise lost
