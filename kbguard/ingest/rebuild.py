"""Rebuild: bring manifest and store in line with the corpus, doing only the work that changed.

Stages, each committing to the manifest batch by batch so a killed run resumes where it stopped:

1. scan    list the corpus; hashes from DVC or the stat cache, the rest computed
2. parse   new, changed and previously failed documents only, on ``parse_workers`` processes;
           each document's chunks replace its old ones in one transaction
3. embed   every (space, content_hash) the cache lacks, in batches, each batch committed
4. store   the points that ``chunks`` wants and ``store_state`` has not confirmed are upserted,
           the points that ``store_state`` knows and ``chunks`` no longer wants are deleted

The store stage never trusts memory: it diffs two tables, so whatever a killed run left behind
is simply part of the next diff. A state row is written (unconfirmed) before its point, and
confirmed after the store has flushed it, so no point is ever in the store unrecorded
(``Manifest.points.write`` and ``delete``, which every command that writes points uses).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbguard.config import Config, SpaceConfig
from kbguard.core.faults import crash_point
from kbguard.core.outcome import Verdict
from kbguard.core.progress import SILENT, Progress
from kbguard.errors import KbguardError, ParseError, ProviderUnavailable, StoreDamaged
from kbguard.ingest.chunk import Chunk, chunk_elements
from kbguard.ingest.dvc_corpus import dvc_view
from kbguard.ingest.fidelity import LowText, low_text, text_lost
from kbguard.ingest.plan import (
    DocPlan,
    empty_corpus_message,
    parse_settings,
    plan_documents,
    point_payload,
)
from kbguard.ingest.scan import ScannedFile, ScanResult, scan_corpus
from kbguard.kb.preflight import Lock, Lost, Needs, preflight
from kbguard.kb.read_service import serve_reads
from kbguard.manifest import ChunkRow, DocumentRow, Manifest
from kbguard.providers import Usage, chain_for
from kbguard.store import Point, Store, vector_specs

if TYPE_CHECKING:
    from kbguard.ingest.parse import ParsedDocument

DOC_COMMIT_EVERY = 32          # parsed documents per manifest transaction
INLINE_PARSE_BELOW = 6         # fewer documents than this are parsed without worker processes


@dataclass
class RebuildReport:
    kb: str
    run_id: int
    full: bool
    documents: dict[str, int]
    chunks: dict[str, int]
    failures: list[dict[str, str]]
    stages: dict[str, float]
    seconds: float
    hash_source: str
    corpus_rev: str
    notes: list[str] = field(default_factory=list)
    # documents parsed now whose chunks hold much less text than their source (fidelity.py):
    # path, source_chars, chunk_chars
    low_text: list[dict[str, Any]] = field(default_factory=list)
    # per space: texts embedded now, by which providers, the debt left and the coverage
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what this run's embedding cost: tokens, usd, by_space
    cost: dict[str, Any] = field(default_factory=dict)
    # per space and provider: texts, tokens, requests, seconds (the calls' own time): how fast
    # each provider embedded here, which `rebuild --estimate` predicts from
    throughput: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """False when a space could not embed everything (its providers were down): the points
        are written with the vectors they have, and the next rebuild pays the debt."""
        return not any(s["debt"] for s in self.spaces.values())

    @property
    def verdict(self) -> Verdict:
        return Verdict.HEALTHY if self.complete else Verdict.INCOMPLETE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def rebuild(cfg: Config, *, full: bool = False, progress: Progress = SILENT) -> RebuildReport:
    """Run an incremental (or, with ``full``, a from-scratch) rebuild of one KB."""
    needs = Needs("rebuild", corpus=True, providers=True, lock=Lock.WRITE,
                  lost=None if full else Lost.REFUSE)
    with preflight(cfg, needs), Manifest.open(cfg.manifest, kb=cfg.kb) as manifest, \
            serve_reads(cfg, manifest, progress) as reads:
        # the KB stays readable meanwhile: this process answers `status` and `search`
        return _Rebuild(cfg, manifest, reads.progress, reads.store).run(full)


@dataclass
class RebuildPlan:
    """What a rebuild will do with each document, before it does anything."""

    scan: ScanResult
    plan: DocPlan
    settings: str                 # the parsing/chunking settings the chunks will be made with
    notes: list[str]


def plan_rebuild(cfg: Config, known: dict[str, DocumentRow], stored_settings: str | None
                 ) -> RebuildPlan:
    """Scan the corpus and sort its documents against the manifest's ``known`` ones; with new
    parse settings (``stored_settings`` are the chunks' own), every document is parsed again.
    Reads only: ``rebuild`` and ``rebuild --estimate`` share it."""
    notes: list[str] = []
    view = dvc_view(cfg.corpus)
    scan = scan_corpus(cfg.corpus, cfg.include, cfg.exclude, known,
                       dvc_hashes=view.hashes if view else None)
    if view and view.git_rev:
        notes.append(f"corpus git revision {view.git_rev}")
    plan = plan_documents(scan, known)
    if not scan.files:
        notes.append(empty_corpus_message(cfg))
    settings = parse_settings(cfg)
    if stored_settings not in (None, settings) and (plan.unchanged or plan.still_failed):
        notes.append("the parser or the parsing/chunking settings changed: every document is "
                     "parsed again (unchanged chunks keep their embeddings)")
        plan.changed.extend(plan.unchanged + plan.still_failed)
        plan.changed.sort(key=lambda f: f.path)
        plan.unchanged, plan.restat, plan.still_failed = [], [], []
    return RebuildPlan(scan, plan, settings, notes)


# -- parsing in worker processes ------------------------------------------------------------

@dataclass(frozen=True)
class _ParseJob:
    kb: str
    root: str
    path: str
    max_tokens: int
    max_bytes: int
    space: SpaceConfig
    read_as: tuple[tuple[str, str], ...] = ()


def parse_jobs(cfg: Config, files: list[ScannedFile]) -> list[_ParseJob]:
    """One parse job per file, with the KB's parsing and chunking settings."""
    read_as = tuple(sorted(cfg.read_as.items()))
    return [_ParseJob(cfg.kb, str(cfg.corpus), f.path, cfg.max_tokens,
                      int(cfg.max_file_mb * 2**20), cfg.spaces[0], read_as) for f in files]


ParseResult = tuple[str, list[Chunk] | None, str | None, str | None, LowText | None]


def parse_and_chunk(job: _ParseJob) -> ParseResult:
    """Parse one file and chunk it: (path, chunks, None, encoding of a text file, low text) or
    (path, None, reason, None, None). Never raises. Low text is a ``LowText`` when the chunks
    hold much less text than the source, else None."""
    from kbguard.ingest.parse import parse_document

    full = Path(job.root) / job.path
    try:
        size = full.stat().st_size
        if size > job.max_bytes:
            return job.path, None, (
                f"file is {size / 2**20:.1f} MB, over corpus.max_file_mb "
                f"({job.max_bytes / 2**20:g} MB); raise the limit or exclude the file"), None, None
        parsed = parse_document(full, dict(job.read_as))
        embedder = chain_for(job.space)
        cap = min(job.max_tokens, embedder.max_input_tokens)
        chunks = chunk_elements(parsed.elements, kb=job.kb, path=job.path, max_tokens=cap,
                                count_tokens=embedder.count_tokens)
        if not chunks:
            return job.path, None, _no_text_reason(parsed), None, None
        return (job.path, chunks, None, parsed.encoding,
                low_text(job.path, parsed.source_chars, chunks))
    except FileNotFoundError:
        return job.path, None, "file vanished during the run", None, None
    except ParseError as exc:
        return job.path, None, str(exc), None, None
    except KbguardError as exc:
        return job.path, None, str(exc), None, None
    except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not stop the other thousands
        reason = f"unexpected {type(exc).__name__} while parsing: {exc}"
        return job.path, None, reason, None, None


def _no_text_reason(parsed: ParsedDocument) -> str:
    if not text_lost(parsed.source_chars, parsed.elements):
        return "no text found in the document"
    return (f"no text found in the document, though the file holds about {parsed.source_chars:,} "
            "letters and digits of text: the parser lost them; check the markup around that "
            "text, or report the file as a kbguard bug")


def parse_all(jobs: list[_ParseJob], workers: int) -> Iterator[ParseResult]:
    if workers <= 1 or len(jobs) < INLINE_PARSE_BELOW:
        for job in jobs:
            yield parse_and_chunk(job)
        return
    # spawn, not fork: the parent holds DuckDB and maybe torch threads, which fork would copy
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_end_with_parent,
                             initargs=(os.getpid(),)) as pool:
        yield from pool.map(parse_and_chunk, jobs, chunksize=4)


_PR_SET_PDEATHSIG = 1   # linux/prctl.h


def _end_with_parent(parent: int) -> None:
    """Parse worker initializer: the worker dies with the process that started it, however
    that one dies. A parent killed with SIGKILL (the OOM killer, a scheduler's timeout) closes
    nothing, and its workers would wait for work for good, each holding its parser's memory.
    Their deaths also close the last copies of the resource tracker's pipe, so it ends too.

    The kernel sends the signal when the *thread* that started the worker ends: workers are
    started by the thread that iterates ``parse_all``, which outlives the pool."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # the parent may have died before prctl ran, and no signal comes for that
    if os.getppid() != parent:
        os._exit(1)


class _Rebuild:
    def __init__(self, cfg: Config, manifest: Manifest, progress: Progress,
                 open_store: Callable[[], AbstractContextManager[Store]]):
        self.cfg, self.manifest, self.progress = cfg, manifest, progress
        self.open_store = open_store   # the store, shared with the reads served meanwhile
        self.stages: dict[str, float] = {}
        self.used: dict[str, dict[str, int]] = {}        # space -> provider -> texts embedded
        self.usage: dict[str, Usage] = {}                # space -> what its embedding cost
        self.by_provider: dict[tuple[str, str], Usage] = {}   # (space, provider) -> the same
        self.failovers: dict[str, str] = {}              # provider passed over -> why
        self.notes: list[str] = []
        self.failures: list[dict[str, str]] = []
        self.low_text: list[dict[str, Any]] = []

    def run(self, full: bool) -> RebuildReport:
        started = time.perf_counter()
        run_id = self.manifest.runs.start("rebuild-full" if full else "rebuild")
        corpus_rev = ""
        try:
            t = time.perf_counter()
            self.progress.stage("scan")
            known = self.manifest.documents.by_path()
            planned = plan_rebuild(self.cfg, known, self.manifest.get_meta("parse_settings"))
            scan, plan, settings = planned.scan, planned.plan, planned.settings
            corpus_rev = scan.fingerprint()
            self.notes.extend(planned.notes)
            self.stages["scan"] = time.perf_counter() - t

            t = time.perf_counter()
            doc_counts = self._apply_documents(plan, known)
            self.manifest.set_meta("parse_settings", settings)
            self.stages["parse"] = time.perf_counter() - t

            t = time.perf_counter()
            embedded = self._embed_missing(run_id)
            self.stages["embed"] = time.perf_counter() - t

            t = time.perf_counter()
            written, reused, deleted = self._sync_store(full, run_id)
            self.stages["store"] = time.perf_counter() - t

            total = self.manifest.chunks.count()
            report = RebuildReport(
                kb=self.cfg.kb, run_id=run_id, full=full, documents=doc_counts,
                chunks={"total": total,
                        "embedded": embedded, "reused": reused, "written": written,
                        "deleted": deleted},
                failures=self.failures, stages={k: round(v, 3) for k, v in self.stages.items()},
                seconds=round(time.perf_counter() - started, 3), hash_source=scan.hash_source,
                corpus_rev=corpus_rev, notes=self.notes, low_text=self.low_text,
                spaces=self._space_report(total), cost=self._cost(),
                throughput=self._throughput(),
            )
            self.manifest.runs.finish(run_id, "ok", report.to_dict(), corpus_rev)
            return report
        except BaseException as exc:
            # the original error matters more than recording it
            with contextlib.suppress(Exception):
                self.manifest.runs.finish(run_id, "failed",
                                          {"error": str(exc) or type(exc).__name__},
                                          corpus_rev or None)
            raise
        finally:
            self.progress.close()

    # -- documents ---------------------------------------------------------------------------

    def _apply_documents(self, plan: DocPlan, known: dict[str, DocumentRow]) -> dict[str, int]:
        manifest = self.manifest
        with manifest.transaction():
            for path in plan.removed:
                manifest.documents.forget(path)
            manifest.documents.refresh_stats([(f.path, f.size, f.mtime_ns, f.file_hash)
                                              for f in plan.restat])
            for f in plan.refused:
                self._record_failure(f, known.get(f.path), f.error or "refused")

        for f in plan.still_failed:
            self.failures.append({"path": f.path, "error": known[f.path].error or "failed"})
        todo = plan.added + plan.changed
        failed = len(plan.refused) + len(plan.still_failed)
        by_path = {f.path: f for f in todo}
        jobs = parse_jobs(self.cfg, todo)
        self.progress.stage("parse", len(jobs))
        results = parse_all(jobs, self.cfg.parse_workers)
        while True:
            # DOC_COMMIT_EVERY documents a transaction; the last one may hold none
            recorded = 0
            with manifest.transaction():
                for path, chunks, error, encoding, low in islice(results, DOC_COMMIT_EVERY):
                    f = by_path[path]
                    if error is not None:
                        failed += 1
                        self._record_failure(f, known.get(path), error)
                    else:
                        assert chunks is not None
                        manifest.documents.record(
                            DocumentRow(path, f.file_hash, f.size, f.mtime_ns, f.file_hash,
                                        "ok", None, len(chunks), encoding),
                            [ChunkRow(c.point_id, path, c.seq, c.content_hash, c.occurrence,
                                      c.section, c.text, c.tokens) for c in chunks],
                        )
                        if low is not None:
                            self.low_text.append(asdict(low))
                    recorded += 1
                    self.progress.advance()
            crash_point("parse-commit")
            if recorded < DOC_COMMIT_EVERY:
                break
        failed_paths = {x["path"] for x in self.failures}
        return {
            "added": sum(1 for f in plan.added if f.path not in failed_paths),
            "changed": sum(1 for f in plan.changed if f.path not in failed_paths),
            "removed": len(plan.removed),
            "unchanged": len(plan.unchanged),
            "failed": failed,
        }

    def _record_failure(self, f: ScannedFile, prev: DocumentRow | None, error: str) -> None:
        """Mark a document failed; its last good chunks (if any) stay in the KB.

        The file's hash is kept only when the file is still there and readable: then the same
        bytes would fail the same way and are not parsed again until they change.
        """
        self.failures.append({"path": f.path, "error": error})
        full = self.cfg.corpus / f.path
        settled = full.is_file() and os.access(full, os.R_OK)
        self.manifest.documents.record(
            DocumentRow(f.path, f.file_hash if settled else None, f.size, f.mtime_ns,
                        prev.indexed_hash if prev else None, "failed", error,
                        prev.chunks if prev else 0, prev.encoding if prev else None),
            None,
        )

    # -- embedding ---------------------------------------------------------------------------

    def _embed_missing(self, run_id: int) -> int:
        """Embed every text a space's cache lacks, space by space, through each space's chain.

        A space whose every provider is down is left behind, not the run: the other spaces are
        filled, and what it lacks is its debt (the chunks with no cached vector in it), which
        the next rebuild embeds. Each batch's vectors, provider and cost commit together."""
        manifest, total = self.manifest, 0
        for space in self.cfg.spaces:
            used = self.used[space.name] = {}
            n = manifest.cache.fill_embed_todo(space.space_id)
            if not n:
                continue
            chain = chain_for(space)
            self.progress.stage(f"embed {space.name}", n)
            try:
                for rows in manifest.cache.embed_todo_batches(_call_size(space)):
                    got = chain.embed([text for _, text in rows])
                    with manifest.transaction():
                        manifest.cache.add(
                            space.space_id,
                            [(h, v) for (h, _), v in zip(rows, got.vectors, strict=True)],
                            run_id, provider=got.provider)
                        manifest.ledger.record(run_id, "rebuild", space, got.provider, got.usage)
                    used[got.provider] = used.get(got.provider, 0) + len(rows)
                    self.usage[space.name] = self.usage.get(space.name, Usage()) + got.usage
                    key = (space.name, got.provider)
                    self.by_provider[key] = self.by_provider.get(key, Usage()) + got.usage
                    for skipped in got.failovers:
                        self.failovers.setdefault(skipped.provider, skipped.reason)
                    total += len(rows)
                    crash_point("embed-batch")
                    self.progress.advance(len(rows))
            except ProviderUnavailable as exc:
                self.notes.append(
                    f"space {space.name!r} is behind: {exc} The other spaces are complete and "
                    "every point is written with the vectors it has; the next `kbguard "
                    "rebuild` embeds what this space lacks.")
        for provider, reason in self.failovers.items():
            self.notes.append(f"provider {provider} was passed over: {reason}")
        return total

    def _space_report(self, total: int) -> dict[str, dict[str, Any]]:
        out = {}
        for space in self.cfg.spaces:
            behind, debt = self.manifest.cache.debt(space.space_id)
            used = self.used.get(space.name, {})
            out[space.name] = {"texts": sum(used.values()), "providers": used, "debt": debt,
                               "coverage": round(1 - behind / total, 6) if total else 1.0}
        return out

    def _cost(self) -> dict[str, Any]:
        by_space = {name: {"tokens": u.tokens, "usd": round(u.cost_usd, 6), "texts": u.texts,
                           "requests": u.requests}
                    for name, u in self.usage.items()}
        return {"tokens": sum(u.tokens for u in self.usage.values()),
                "usd": round(sum(u.cost_usd for u in self.usage.values()), 6),
                "by_space": by_space}

    def _throughput(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for (space, provider), u in sorted(self.by_provider.items()):
            out.setdefault(space, {})[provider] = {
                "texts": u.texts, "tokens": u.tokens, "requests": u.requests,
                "seconds": round(u.seconds, 3),
                "texts_per_s": round(u.texts / u.seconds, 1) if u.seconds else None}
        return out

    # -- store -------------------------------------------------------------------------------

    def _sync_store(self, full: bool, run_id: int) -> tuple[int, int, int]:
        manifest, cfg = self.manifest, self.cfg
        names = ",".join(sorted(s.name for s in cfg.spaces))
        with self.open_store() as store:
            self.progress.stage("store")
            if full:
                # A store that cannot be opened is what --full exists to replace: drop() deletes
                # it without reading it, and the cache holds every vector it had.
                try:
                    store.describe()
                    unreadable = False
                except StoreDamaged:
                    unreadable = True
                manifest.points.unconfirm_all()
                store.drop()
                if unreadable:
                    self.notes.append("the store could not be opened: it was deleted and "
                                      "written again from the embedding cache")
            elif not store.describe().exists:
                if manifest.points.confirmed_count():
                    self.notes.append("the store was missing: rebuilt from the embedding cache")
                manifest.points.unconfirm_all()
            store.ensure(vector_specs(cfg))
            written, reused = self._upsert_missing(store, names, run_id)
            unwanted = manifest.points.unwanted_ids()
            manifest.points.delete(store, unwanted, batch_size=cfg.upsert_batch)
        return written, reused, len(unwanted)

    def _upsert_missing(self, store: Store, names: str, run_id: int) -> tuple[int, int]:
        manifest, cfg = self.manifest, self.cfg
        n = manifest.points.fill_upsert_todo(names)
        written = reused = 0
        if n:
            self.progress.stage("write points", n)
        for rows in manifest.points.upsert_todo_batches(cfg.upsert_batch):
            hashes = sorted({r[3] for r in rows})
            vectors: dict[str, dict[str, Any]] = {}
            fresh: set[str] = set()
            for space in cfg.spaces:
                for h, vector, made_by in manifest.cache.vectors(space.space_id, hashes):
                    vectors.setdefault(h, {})[space.name] = vector
                    if made_by == run_id:
                        fresh.add(h)
            # A space in debt lacks some vectors: such a point is written with the vectors it
            # has (search answers from a complete space meanwhile) and its state names them,
            # so the run that pays the debt writes it again, whole.
            by_names: dict[str, list[tuple[Point, str, str]]] = {}
            for pid, path, _seq, h, occ, section, text in rows:
                vecs = vectors.get(h, {})
                if not vecs:
                    continue  # no space could embed it: it stays pending for the next run
                point = Point(pid, vecs, point_payload(cfg.kb, path, h, occ, section, text))
                by_names.setdefault(",".join(sorted(vecs)), []).append((point, path, h))
            for have, points in by_names.items():
                manifest.points.write(store, points, have)
                written += len(points)
                reused += sum(1 for _, _, h in points if h not in fresh)
            self.progress.advance(len(rows))
        return written, reused


def _call_size(space: SpaceConfig) -> int:
    """Texts per call to a space's chain: an API provider sends ``concurrency`` requests of
    ``max_batch_texts`` at once, so it is handed that many (a local model, its batch)."""
    api = [e.concurrency * e.max_batch_texts for e in space.chain if e.type == "openai"]
    return max([space.batch_size, *api])
