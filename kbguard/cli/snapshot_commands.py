"""`kbguard snapshot create | list | verify | prune` and `kbguard restore`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kbguard.cli.common import (
    DEFAULT_CONFIG_PATH,
    ConfigOpt,
    JsonOpt,
    QuietOpt,
    RichProgress,
    emit_json,
    exit_code_for,
    guarded,
    load,
    stderr,
    stdout,
)
from kbguard.errors import NotConfirmed, SnapshotError
from kbguard.recovery.restore import RestoreReport, restore, restore_from_qdrant_snapshot
from kbguard.recovery.snapshot import (
    create_snapshot,
    list_snapshots,
    prune_snapshots,
    verify_snapshot,
)

snapshot_app = typer.Typer(
    name="snapshot", no_args_is_help=True,
    help="Checksummed copies of the KB's store and manifest: create, list, verify, prune.")

DvcRemoteOpt = Annotated[str, typer.Option(
    "--dvc-remote", help="The DVC remote to push to / pull from (default: the default remote).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app)
    snapshot_app.command("create")(create_cmd)
    snapshot_app.command("list")(list_cmd)
    snapshot_app.command("verify")(verify_cmd)
    snapshot_app.command("prune")(prune_cmd)
    app.command("restore")(restore_cmd)


def _confirm(question: str, flag: str) -> None:
    """Ask on a terminal; anywhere else the flag is required (a script never hangs)."""
    if sys.stdin.isatty():
        if not typer.confirm(question, default=False, err=True):
            raise NotConfirmed("Not confirmed: nothing changed.")
        return
    raise NotConfirmed(f"{question} Pass {flag} to confirm.")


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.0f} B"


@guarded
def create_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    dvc_push: Annotated[bool, typer.Option(
        "--dvc-push", help="Track the snapshot with DVC and push it to the DVC remote.")] = False,
    dvc_remote: DvcRemoteOpt = "",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a snapshot of the store and manifest under the snapshot root; prints its id."""
    cfg = load(config)
    report = create_snapshot(cfg, dvc_push=dvc_push, dvc_remote=dvc_remote or None,
                             progress=RichProgress(enabled=not quiet and not json_out))
    if json_out:
        emit_json(report.to_dict())
        return
    stdout.print(report.id)
    stderr.print(f"Snapshot {report.id}: {report.points} points, {report.counts['chunks']} "
                 f"chunks, {_size(report.bytes)} in {report.seconds:.1f} s at {report.path}")
    if report.dvc:
        stderr.print(f"Pushed with DVC to {report.dvc['remote']}; {report.dvc['next']}.")
    for note in report.notes:
        stderr.print(f"note: {note}")


@guarded
def list_cmd(config: ConfigOpt = DEFAULT_CONFIG_PATH, json_out: JsonOpt = False) -> None:
    """The snapshots under the snapshot root, oldest first (local and DVC-tracked)."""
    cfg = load(config)
    entries = list_snapshots(cfg)
    if json_out:
        emit_json({"root": str(cfg.snapshot_root), "snapshots": [e.to_dict() for e in entries]})
        return
    if not entries:
        stdout.print(f"No snapshots under {cfg.snapshot_root}. "
                     "Take one with `kbguard snapshot create`.")
        return
    for e in entries:
        where = ("local" if e.local else "DVC remote only") + (", DVC" if e.dvc and e.local else "")
        if e.problem:
            stdout.print(f"{e.id}  unreadable: {e.problem}")
        elif not e.local:
            stdout.print(f"{e.id}  ({where}; `kbguard restore {e.id}` pulls it)")
        else:
            stdout.print(f"{e.id}  {e.created_at}  {e.points} points  {_size(e.bytes)}  ({where})")


@guarded
def verify_cmd(
    snapshot_id: Annotated[str, typer.Argument(metavar="ID", help="The snapshot to check.")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
) -> None:
    """Check a snapshot's metadata and the sha256 of every file. Exit 1 if it is damaged."""
    check = verify_snapshot(load(config), snapshot_id)
    if json_out:
        emit_json(check.to_dict())
    if not check.ok:
        stderr.print(f"Damaged: {check.problem}")
    elif not json_out:
        stdout.print(f"Snapshot {snapshot_id} is intact: {len(check.files)} files match their "
                     f"sha256; {check.counts['points']} points, taken {check.created_at}.")
    raise typer.Exit(exit_code_for(check))


@guarded
def prune_cmd(
    keep_last: Annotated[int, typer.Option("--keep-last", help="Keep the N newest.")] = 0,
    keep_daily: Annotated[int, typer.Option(
        "--keep-daily", help="Keep the newest snapshot of each of the D most recent days.")] = 0,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say what would be deleted.")] = False,
    yes: YesOpt = False,
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
) -> None:
    """Delete the snapshots the retention rule does not keep (DVC data stays until `dvc gc`)."""
    cfg = load(config)
    if not dry_run and not yes:
        plan = prune_snapshots(cfg, keep_last=keep_last, keep_daily=keep_daily, dry_run=True)
        if plan.deleted or plan.temporary:
            _confirm(f"Delete {len(plan.deleted)} snapshots?", "--yes")
    report = prune_snapshots(cfg, keep_last=keep_last, keep_daily=keep_daily, dry_run=dry_run)
    if json_out:
        emit_json(report.to_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    stdout.print(f"{verb} {len(report.deleted)}, kept {len(report.kept)} snapshots")
    for sid in report.deleted:
        stdout.print(f"  {verb}  {sid}")
    for name in report.temporary:
        stdout.print(f"  {verb}  {name} (an unfinished snapshot)")
    for s in report.skipped:
        stdout.print(f"  skipped {s['id']}: {s['problem']}")


@guarded
def restore_cmd(
    snapshot_id: Annotated[str, typer.Argument(
        metavar="[ID]", help="The snapshot to restore (see `kbguard snapshot list`).")] = "",
    latest: Annotated[bool, typer.Option(
        "--latest", help="The newest intact snapshot; damaged ones are skipped.")] = False,
    no_catch_up: Annotated[bool, typer.Option(
        "--no-catch-up", help="Skip the incremental rebuild of what changed since the snapshot.")
    ] = False,
    from_qdrant_snapshot: Annotated[Path | None, typer.Option(
        "--from-qdrant-snapshot", metavar="FILE",
        help="Instead of a kbguard snapshot, a Qdrant server's shard snapshot file "
             "(GET /collections/NAME/shards/0/snapshot) of a collection kbguard built for "
             "this KB: unpacked into the embedded Edge store, checked against the config's "
             "spaces, the manifest rebuilt from the points' payloads.")] = None,
    yes: YesOpt = False,
    dvc_remote: DvcRemoteOpt = "",
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Replace the KB's store and manifest with a verified snapshot, then catch up."""
    cfg = load(config)
    if from_qdrant_snapshot is not None:
        if snapshot_id or latest:
            raise SnapshotError("--from-qdrant-snapshot takes the place of a snapshot ID and "
                                "--latest: pass only one of them.")
        if not yes:
            _confirm(f"Replace the store and manifest of KB '{cfg.kb}' with the Qdrant "
                     f"snapshot {from_qdrant_snapshot}?", "--yes")
        report = restore_from_qdrant_snapshot(
            cfg, from_qdrant_snapshot, catch_up=not no_catch_up,
            progress=RichProgress(enabled=not quiet and not json_out))
        _print_restore(report, json_out)
        return
    if latest and not list_snapshots(cfg):
        raise SnapshotError(f"KB '{cfg.kb}' has no snapshot under {cfg.snapshot_root}; there is "
                            "nothing to restore. `kbguard rebuild --full` rebuilds the store "
                            "from the manifest's embedding cache instead.")
    if not yes:
        what = "the newest intact snapshot" if latest else f"snapshot {snapshot_id}"
        _confirm(f"Replace the store and manifest of KB '{cfg.kb}' with {what}?", "--yes")
    report = restore(cfg, snapshot_id or None, latest=latest, catch_up=not no_catch_up,
                     dvc_remote=dvc_remote or None,
                     progress=RichProgress(enabled=not quiet and not json_out))
    _print_restore(report, json_out)


def _print_restore(report: RestoreReport, json_out: bool) -> None:
    if json_out:
        emit_json(report.to_dict())
        return
    stdout.print(f"Restored KB '{report.kb}' from snapshot {report.snapshot}: {report.points} "
                 f"points into the {report.backend} store in {report.seconds:.1f} s "
                 f"({report.points_per_s:.0f} points/s)")
    stdout.print(f"  from       {report.method}")
    for note in report.notes:
        stdout.print(f"  note       {note}")
    if report.catch_up:
        d, c = report.catch_up["documents"], report.catch_up["chunks"]
        stdout.print(f"  catch-up   {d['added']} added, {d['changed']} changed, {d['removed']} "
                     f"removed documents; {c['embedded']} chunks embedded, {c['written']} "
                     f"written, {c['deleted']} deleted")
    else:
        stdout.print("  catch-up   skipped; run `kbguard rebuild` to index later corpus changes")
