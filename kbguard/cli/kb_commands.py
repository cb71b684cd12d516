"""`kbguard init | rebuild | status | search`: build a KB and look at it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    one_line,
    stderr,
    stdout,
)
from kbguard.config import PROVIDERS, init_config, key_warnings
from kbguard.config.provider_settings import OpenAIProviderSettings
from kbguard.core.progress import human_duration
from kbguard.errors import KbguardError
from kbguard.ingest.rebuild import rebuild
from kbguard.operations.estimate import estimate
from kbguard.operations.search import search
from kbguard.operations.status import kb_status


def register(app: typer.Typer) -> None:
    app.command("init")(init_cmd)
    app.command("rebuild")(rebuild_cmd)
    app.command("status")(status_cmd)
    app.command("search")(search_cmd)


@guarded
def init_cmd(
    corpus: Annotated[Path, typer.Option("--corpus", help="The folder of source documents.")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    name: Annotated[str, typer.Option("--name", help="KB name (default: the corpus folder's name).")] = "",
    provider: Annotated[str, typer.Option(
        "--provider", help=f"Embedding provider of the first space: {', '.join(PROVIDERS)}.")
    ] = "sentence-transformers",
    model: Annotated[str, typer.Option(
        "--model", help="The first space's model (openai: text-embedding-3-small).")] = "",
    base_url: Annotated[str, typer.Option(
        "--base-url", help="openai: any OpenAI-compatible /v1 endpoint.")] = "",
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", help="openai: the NAME of the environment variable holding the "
        "endpoint's key (default: OPENAI_API_KEY for api.openai.com, none for another host).")
    ] = "",
    dim: Annotated[int, typer.Option("--dim", help="Vector size, for a model kbguard does not "
                                     "know.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
) -> None:
    """Write a KB config with working defaults for CORPUS.

    With --provider openai: an API primary space and the bundled local model as its standby."""
    cfg = init_config(corpus, config, name=name, provider=provider, model=model,
                      base_url=base_url, api_key_env=api_key_env, dim=dim, force=force)
    for warning in key_warnings(cfg):
        stderr.print(warning)
    stdout.print(f"Wrote {config} for KB '{cfg.kb}'. Build it with: kbguard rebuild --config "
                 f"{config}")
    keys = sorted({e.api_key_env for s in cfg.spaces for e in s.chain
                   if isinstance(e, OpenAIProviderSettings) and e.api_key_env})
    if keys:
        stdout.print(f"Set the API key first: export {keys[0]}=...")


@guarded
def rebuild_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    full: Annotated[bool, typer.Option(
        "--full", help="Recreate the store from scratch (vectors still come from the cache).")
    ] = False,
    estimate_only: Annotated[bool, typer.Option(
        "--estimate", help="Write nothing: print the texts, tokens, cost and time of the next "
        "rebuild and of each recovery scenario.")] = False,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="With --estimate: embed a small sample with every provider (an API "
        "provider bills it) and write a scratch store, for rates with no history yet.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Index what changed in the corpus: parse, chunk, embed only uncached texts, write the store.

    With --estimate, nothing is written and no lock is taken: the time and the bill of each
    scenario (incremental, store_lost, full_reembed, restore_latest, primary_down)."""
    cfg = load(config)
    if calibrate and not estimate_only:
        raise KbguardError("--calibrate goes with --estimate: `kbguard rebuild --estimate "
                           "--calibrate`.")
    if estimate_only:
        _estimate(cfg, full, calibrate, json_out, quiet)
        return
    report = rebuild(cfg, full=full, progress=RichProgress(enabled=not quiet and not json_out))
    if json_out:
        emit_json(report.to_dict())
        raise typer.Exit(exit_code_for(report))
    d, c = report.documents, report.chunks
    stdout.print(f"Rebuilt KB '{report.kb}'{' from scratch' if full else ''} in {report.seconds:.1f} s")
    stdout.print(f"  documents  {d['added']} added, {d['changed']} changed, {d['removed']} removed, "
                 f"{d['unchanged']} unchanged, {d['failed']} failed")
    stdout.print(f"  chunks     {c['total']} total: {c['embedded']} embedded, {c['reused']} reused "
                 f"from cache, {c['written']} written, {c['deleted']} deleted")
    for note in report.notes:
        stdout.print(f"  note       {note}")
    if len(report.spaces) > 1 or not report.complete:
        for name, sp in report.spaces.items():
            behind = f", {sp['debt']} texts behind" if sp["debt"] else ""
            stdout.print(f"  space      {name}: {sp['coverage']:.1%} covered{behind}")
    if report.cost.get("usd"):
        stdout.print(f"  cost       {report.cost['tokens']:,} tokens, ${report.cost['usd']:.4f}")
    for f in report.failures:
        stdout.print(f"  failed     {one_line(f['path'])}: {one_line(f['error'])}")
    for low in report.low_text:
        stdout.print(f"  low text   {one_line(low['path'])}: its chunks hold "
                     f"{low['chunk_chars']:,} of the ~{low['source_chars']:,} letters and digits "
                     "of its source; the parser may have lost text: check the file's markup")
    raise typer.Exit(exit_code_for(report))


def _estimate(cfg: Any, full: bool, calibrate: bool, json_out: bool, quiet: bool) -> None:
    est = estimate(cfg, calibrate=calibrate,
                   progress=RichProgress(enabled=not quiet and not json_out))
    if json_out:
        emit_json(est.to_dict())
        return
    d = est.documents
    stdout.print(f"Estimate for KB '{est.kb}' (nothing written; took {est.seconds:.1f} s)")
    stdout.print(f"  documents  {d['added']} added, {d['changed']} changed, {d['removed']} "
                 f"removed, {d['unchanged']} unchanged, {d['failing']} failing")
    stdout.print(f"  {'scenario':<15} {'texts':>9} {'tokens':>12} {'cost USD':>10} {'time':>10}")
    order = ("full_reembed", "incremental") if full else ("incremental", "full_reembed")
    for name in (*order, "store_lost", "restore_latest", "primary_down"):
        sc = est.scenarios[name]
        secs = ("refused" if sc.refused else "unknown" if sc.seconds is None
                else human_duration(sc.seconds))
        stdout.print(f"  {name:<15} {sc.texts:>9,} {sc.tokens:>12,} {sc.cost_usd:>10.4f} "
                     f"{secs:>10}")
    for name, sc in est.scenarios.items():
        if sc.refused:
            stdout.print(f"  refused    {name}: {one_line(sc.refused)}")
    if est.recommended != "incremental":
        stdout.print(f"  recommended {est.recommended}")
    for name, sc in est.scenarios.items():
        stdout.print(f"  basis      {name}: {one_line(sc.basis)}")
        for note in sc.notes:
            stdout.print(f"  note       {name}: {one_line(note)}")
    for provider, got in est.calibration.items():
        if "error" in got:
            what = f"failed: {one_line(got['error'])}"
        elif "points" in got:
            what = f"{got['points']:,} points written in {got['seconds']:.2f} s"
        else:
            what = (f"{got['texts']:,} texts, {got['tokens']:,} tokens in {got['seconds']:.2f} s"
                    f" (${got['cost_usd']:.4f})")
        stdout.print(f"  calibrated {provider}: {what}")
    for note in est.notes:
        stdout.print(f"  note       {one_line(note)}")


@guarded
def status_cmd(
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    json_out: JsonOpt = False,
    no_corpus: Annotated[bool, typer.Option(
        "--no-corpus-check", help="Skip scanning the corpus for changes not yet indexed.")] = False,
) -> None:
    """What the KB holds, the last run, and corpus changes not yet indexed."""
    cfg = load(config)
    st = kb_status(cfg, check_corpus=not no_corpus).to_dict()
    if json_out:
        emit_json(st)
        return
    _print_status(st)


def _print_status(st: dict[str, Any]) -> None:
    c = st["counts"]
    stdout.print(f"KB '{st['kb']}'  ({st['config']})")
    stdout.print(f"  manifest   {st['manifest']}")
    stdout.print("  spaces     " + ", ".join(
        f"{s['name']} = {s['provider']}:{s['model']} ({s['dim']}-d)"
        + (f", {s['coverage']:.1%} covered ({s['debt']} texts behind)" if s["debt"] else "")
        for s in st["spaces"]))
    spend = st["spend"]
    if spend["total"]["usd"] or spend["total"]["tokens"]:
        stdout.print(f"  spend      ${spend['this_month']['usd']:.4f} this month, "
                     f"${spend['total']['usd']:.4f} to date "
                     f"({spend['total']['tokens']:,} tokens)")
    stdout.print(f"  documents  {c['documents']} indexed, {c['failed_documents']} failed")
    stdout.print(f"  chunks     {c['chunks']}; {c['cached_vectors']} cached vectors; "
                 f"{c['points_written']} points written, {c['points_pending']} pending")
    if set(st["encodings"]) - {"utf-8"}:  # worth a line only when some file is not UTF-8
        stdout.print("  encodings  " + ", ".join(f"{n} {e}" for e, n in st["encodings"].items()))
    store = st["store"]
    if "error" in store:
        stdout.print(f"  store      {store['backend']} at {store['location']}: {store['error']}")
    elif not store["exists"]:
        stdout.print(f"  store      {store['backend']} at {store['location']}: missing; "
                     "`kbguard rebuild` writes it again from the embedding cache")
    else:
        stdout.print(f"  store      {store['backend']} at {store['location']}: "
                     f"{store['points']} points")
    run = st["last_run"]
    if run:
        line = f"  last run   #{run['run_id']} {run['kind']} {run['status']} at {run['started_at']}"
        if "seconds" in run:
            line += f" ({run['seconds']} s)"
        stdout.print(line)
        if run.get("note"):
            stdout.print(f"             {run['note']}")
        if run.get("error"):
            stdout.print(f"             error: {run['error']}")
    else:
        stdout.print("  last run   none")
    if st.get("rebuild"):
        stdout.print(f"  rebuild    {_progress_line(st['rebuild'])}; the corpus is checked "
                     "once it has finished")
    check = st.get("last_check")
    if check:
        found = ", ".join(f"{k} {v}" for k, v in check["findings"].items())
        stdout.print(f"  last check #{check['run_id']} at {check['checked_at']}: "
                     + (found if found else "healthy" if check["status"] == "ok"
                        else check["status"]))
    else:
        stdout.print("  last check none: run `kbguard verify`")
    snap = st.get("latest_snapshot")
    stdout.print(f"  snapshot   {snap['id']} ({snap['points']} points)" if snap else
                 "  snapshot   none: run `kbguard snapshot create`")
    pending = st.get("restore_pending")
    if pending:
        stdout.print(f"  RESTORE    interrupted: {pending.get('error') or 'snapshot ' + str(pending.get('snapshot'))}"
                     f"; run `kbguard restore {pending.get('snapshot', 'ID')} --yes` to finish it")
    for f in st["failed_documents"][:10]:
        stdout.print(f"  failed     {one_line(f['path'])}: {one_line(f['error'])}")
    if "pending" in st:
        p = st["pending"]
        if p.get("problem"):
            stdout.print(f"  corpus     {p['problem']}")
        elif p["up_to_date"]:
            stdout.print("  corpus     up to date")
        else:
            stdout.print(f"  corpus     not indexed yet: {p['added']} added, {p['changed']} changed, "
                         f"{p['removed']} removed; run `kbguard rebuild`")


def _progress_line(run: dict[str, Any]) -> str:
    """A running rebuild's progress: its current stage and the stages before it."""
    def stage(s: dict[str, Any]) -> str:
        return str(s["name"]) + (f" {s['done']}/{s['total']}" if s.get("total") else "")
    *done, current = run["stages"] or [{"name": "starting", "total": None}]
    line = (f"running now (pid {run['pid']}, run #{run.get('run_id') or '?'}, "
            f"{human_duration(run['seconds'])}): {stage(current)}")
    return line + (f" (done: {', '.join(stage(s) for s in done)})" if done else "")


@guarded
def search_cmd(
    query: Annotated[str, typer.Argument(help="The text to search for.")],
    config: ConfigOpt = DEFAULT_CONFIG_PATH,
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 5,
    space: Annotated[str, typer.Option("--space", help="Embedding space (default: the first).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """The chunks nearest to QUERY: path, score and a snippet."""
    cfg = load(config)
    result = search(cfg, query, k=k, space=space or None)
    hits = result.hits
    if json_out:
        emit_json({"query": query, **result.to_dict()})
        return
    if result.rebuild:
        stderr.print(f"A rebuild is {_progress_line(result.rebuild)}; answered from its "
                     "store as written so far.")
    if result.degraded:
        stderr.print(f"Answered from space {result.space!r}: {result.reason}")
    if not hits:
        stdout.print("No results.")
    for i, h in enumerate(hits, 1):
        where = one_line(h.path) + (f"  [{one_line(h.section)}]" if h.section else "")
        stdout.print(f"{i}. {h.score:.3f}  {where}", markup=False)
        stdout.print(f"   {one_line(h.snippet)}", markup=False)
