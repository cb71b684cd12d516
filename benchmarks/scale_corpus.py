"""Generated corpora of real prose at any size, for the scale benchmarks.

The text is real documentation: the paragraphs, headings and code blocks of the Rust books
(Debian's ``rust-doc``) and the PostgreSQL manual (``postgresql-doc-15``), downloaded once with
``apt-get download`` into ``benchmarks/data/`` and kept there (old Debian versions vanish from
the archive). Documents are assembled from that pool: a title, sections of one to four
paragraphs under real headings, sometimes a list or a code block; four in five are Markdown,
the rest HTML.

A corpus is a pure function of the pool and a ``CorpusSpec``: document ``i`` draws everything
from its own generator seeded with ``(seed, i)``, so the same spec gives the same bytes, any
document can be rewritten alone, and the corpus can be written in any order or resumed.

At 100k documents the pool's paragraphs would each recur dozens of times, which no real corpus
does; so a paragraph is a real paragraph with one real sentence from elsewhere spliced in at a
sentence boundary (lengths stay realistic, texts stay distinct). A few percent of paragraphs are
instead taken verbatim from a small shared set, as notes and boilerplate recur in real corpora.

    from scale_corpus import CorpusSpec, load_pool, write_corpus, apply_update
    pool = load_pool()                          # downloads and extracts on first use
    write_corpus(pool, CorpusSpec(docs=10_000), Path("corpus"))
    apply_update(pool, CorpusSpec(docs=10_000), Path("corpus"))   # the "1 % update"
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import random
import re
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# Debian packages of real documentation, pinned so that two machines build the same pool; an
# archive that has moved on gets the current version instead, and the pool's digest says so.
SOURCES = {
    "rust-doc": "1.63.0+dfsg1-2",
    "postgresql-doc-15": "15.20-0+deb12u1",
}
# the prose books of rust-doc; the API reference pages (core/, std/, ...) are generated listings
RUST_BOOKS = ("book", "rust-by-example", "edition-guide", "reference", "nomicon",
              "embedded-book", "rustc", "rustdoc", "unstable-book")
POOL_VERSION = 1

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`\"])")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class TextPool:
    """What documents are made of: real paragraphs, headings and code blocks."""

    paragraphs: tuple[str, ...]
    titles: tuple[str, ...]
    code: tuple[str, ...]
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    sentences: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.paragraphs and self.titles):
            raise ValueError("a text pool needs at least one paragraph and one title")
        sentences = [s for p in self.paragraphs for s in split_sentences(p) if len(s) >= 20]
        object.__setattr__(self, "sentences", tuple(sentences or self.paragraphs))

    def digest(self) -> str:
        h = hashlib.sha256()
        for part in (self.paragraphs, self.titles, self.code):
            h.update(json.dumps(part, ensure_ascii=False).encode())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class CorpusSpec:
    """The shape of a generated corpus; with the pool, it fixes every byte."""

    docs: int
    seed: int = 0
    sections: float = 4.0       # mean sections per document (the knob for longer documents)
    html_share: float = 0.2
    duplicate_share: float = 0.03
    code_share: float = 0.15    # share of sections with a code block
    list_share: float = 0.1     # share of sections with a bullet list

    def key(self) -> str:
        """A folder name for this spec (same spec, same name)."""
        extra = "" if self.sections == 4.0 else f"-s{self.sections:g}"
        return f"docs{self.docs}-seed{self.seed}{extra}"


@dataclass
class Section:
    title: str
    level: int
    blocks: list[tuple[str, str]]   # (kind, text): "p" paragraph, "ul" list, "code" code block


@dataclass
class Document:
    path: str
    title: str
    intro: str
    sections: list[Section]


# -- the pool ------------------------------------------------------------------------------------


def split_sentences(paragraph: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(paragraph) if s]


class _ProseExtractor(HTMLParser):
    """Paragraphs (<p>), headings (<h1>-<h4>) and code (<pre>) of one HTML page, as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self.titles: list[str] = []
        self.code: list[str] = []
        self._kind: str | None = None
        self._buf: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "nav"):
            self._skip += 1
        elif self._kind is None and tag in ("p", "h1", "h2", "h3", "h4", "pre"):
            self._kind, self._buf = tag, []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "nav"):
            self._skip = max(0, self._skip - 1)
        elif tag == self._kind:
            text = "".join(self._buf)
            if tag == "pre":
                self.code.append(text.strip("\n"))
            elif tag == "p":
                self.paragraphs.append(_SPACE.sub(" ", text).strip())
            else:
                self.titles.append(_SPACE.sub(" ", text).strip())
            self._kind = None

    def handle_data(self, data: str) -> None:
        if self._kind is not None and not self._skip:
            self._buf.append(data)


def extract_prose(pages: Iterable[str]) -> TextPool:
    """A pool from HTML pages: the paragraphs, headings and code blocks worth reusing."""
    paragraphs: dict[str, None] = {}
    titles: dict[str, None] = {}
    code: dict[str, None] = {}
    for page in pages:
        ex = _ProseExtractor()
        ex.feed(page)
        ex.close()
        for p in ex.paragraphs:
            if 60 <= len(p) <= 1500 and len(p.split()) >= 10:
                paragraphs.setdefault(p, None)
        for t in ex.titles:
            t = re.sub(r"^[\d.A-Z]+\.\s+", "", t).strip()     # "5.2. Foo" -> "Foo"
            if 3 <= len(t) <= 80 and not t.endswith(":"):
                titles.setdefault(t, None)
        for c in ex.code:
            lines = c.splitlines()
            if 2 <= len(lines) <= 30 and len(c) <= 1500 and "```" not in c:
                code.setdefault(c, None)
    return TextPool(tuple(paragraphs), tuple(titles), tuple(code))


def _deb_pages(deb: Path, wanted: re.Pattern[str]) -> list[str]:
    """The HTML pages of a .deb whose paths match ``wanted``, in path order."""
    pages: dict[str, str] = {}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.isfile() and wanted.search(member.name):
                    fh = tar.extractfile(member)
                    if fh is not None:
                        pages[member.name] = fh.read().decode("utf-8", "replace")
    if proc.returncode:
        raise RuntimeError(f"dpkg-deb could not read {deb} (exit {proc.returncode}); delete it "
                           "and run again to download it anew")
    return [pages[name] for name in sorted(pages)]


def _download(package: str, version: str, into: Path) -> Path:
    found = sorted(into.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    into.mkdir(parents=True, exist_ok=True)
    for spec in (f"{package}={version}", package):
        if subprocess.run(["apt-get", "download", spec], cwd=into,
                          capture_output=True).returncode == 0:
            break
    else:
        raise RuntimeError(f"apt-get download {package} failed; run `apt-get update` (as root) "
                           "and try again, or place the .deb in " + str(into))
    return sorted(into.glob(f"{package}_*.deb"))[-1]


def load_pool(data: Path = DATA) -> TextPool:
    """The pool of real prose, extracted once from the Debian documentation packages and then
    read from ``data/scale/pool.json``."""
    cache = data / "scale" / "pool.json"
    if cache.exists():
        raw = json.loads(cache.read_text(encoding="utf-8"))
        if raw.get("version") == POOL_VERSION:
            return TextPool(tuple(raw["paragraphs"]), tuple(raw["titles"]), tuple(raw["code"]),
                            raw["sources"])
    debs = {name: _download(name, version, data / "debs") for name, version in SOURCES.items()}
    books = "|".join(RUST_BOOKS)
    pages = _deb_pages(debs["rust-doc"], re.compile(rf"/html/({books})/.*\.html$"))
    pages += _deb_pages(debs["postgresql-doc-15"], re.compile(r"/html/.*\.html$"))
    pool = extract_prose(pages)
    sources = {name: deb.name for name, deb in debs.items()}
    pool = TextPool(pool.paragraphs, pool.titles, pool.code, sources)
    cache.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(cache, json.dumps({"version": POOL_VERSION, "sources": sources,
                                     "paragraphs": pool.paragraphs, "titles": pool.titles,
                                     "code": pool.code}, ensure_ascii=False))
    return pool


# -- documents -----------------------------------------------------------------------------------


def _rng(spec: CorpusSpec, *parts: object) -> random.Random:
    # str seeds hash with SHA-512: the same on every run and machine, whatever PYTHONHASHSEED
    return random.Random(":".join(str(p) for p in (spec.seed, *parts)))


def _shared_paragraphs(pool: TextPool, spec: CorpusSpec) -> list[str]:
    """The small set that duplicated paragraphs come from (boilerplate, recurring notes)."""
    rng = _rng(spec, "shared")
    return rng.sample(pool.paragraphs, min(len(pool.paragraphs), 200))


def _paragraph(pool: TextPool, spec: CorpusSpec, shared: Sequence[str],
               rng: random.Random) -> str:
    if rng.random() < spec.duplicate_share:
        return rng.choice(shared)
    sentences = split_sentences(rng.choice(pool.paragraphs))
    sentences.insert(rng.randint(0, len(sentences)), rng.choice(pool.sentences))
    return " ".join(sentences)


def _section_count(spec: CorpusSpec, rng: random.Random) -> int:
    # uniform on [0.5, 1.5] x the mean, rounded at random: the mean holds for fractional knobs
    x = spec.sections * rng.uniform(0.5, 1.5)
    return max(1, int(x) + (rng.random() < x - int(x)))


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "page"


def document(pool: TextPool, spec: CorpusSpec, index: int, revision: int = 0,
             shared: Sequence[str] | None = None) -> Document:
    """Document ``index`` of the corpus; ``revision`` > 0 is the same document with one
    paragraph rewritten per revision (what an edit of a real page looks like)."""
    shared = _shared_paragraphs(pool, spec) if shared is None else shared
    rng = _rng(spec, "doc", index)
    title = rng.choice(pool.titles)
    ext = "html" if rng.random() < spec.html_share else "md"
    path = f"d{index // 1000:03d}/{index:07d}-{_slug(title)}.{ext}"
    intro = _paragraph(pool, spec, shared, rng)
    sections = []
    for _ in range(_section_count(spec, rng)):
        level = 3 if sections and rng.random() < 0.25 else 2
        blocks = [("p", _paragraph(pool, spec, shared, rng))
                  for _ in range(rng.choices((1, 2, 3, 4), weights=(35, 35, 20, 10))[0])]
        if rng.random() < spec.list_share:
            items = [rng.choice(pool.sentences) for _ in range(rng.randint(2, 5))]
            blocks.insert(rng.randint(1, len(blocks)), ("ul", "\n".join(items)))
        if pool.code and rng.random() < spec.code_share:
            blocks.insert(rng.randint(1, len(blocks)), ("code", rng.choice(pool.code)))
        sections.append(Section(rng.choice(pool.titles), level, blocks))
    doc = Document(path, title, intro, sections)
    for rev in range(1, revision + 1):
        _rewrite_one_paragraph(pool, spec, shared, doc, _rng(spec, "edit", index, rev))
    return doc


def _rewrite_one_paragraph(pool: TextPool, spec: CorpusSpec, shared: Sequence[str],
                           doc: Document, rng: random.Random) -> None:
    spots = [(s, b) for s, sec in enumerate(doc.sections)
             for b, (kind, _) in enumerate(sec.blocks) if kind == "p"]
    if not spots:
        doc.intro = _paragraph(pool, spec, shared, rng)
        return
    s, b = rng.choice(spots)
    doc.sections[s].blocks[b] = ("p", _paragraph(pool, spec, shared, rng))


def render(doc: Document) -> str:
    """The document as the file holds it: Markdown or HTML by its extension."""
    return _render_html(doc) if doc.path.endswith(".html") else _render_markdown(doc)


def _render_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", doc.intro]
    for sec in doc.sections:
        out.append(f"{'#' * sec.level} {sec.title}")
        for kind, text in sec.blocks:
            if kind == "p":
                out.append(text)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in text.splitlines()))
            else:
                out.append(f"```\n{text}\n```")
    return "\n\n".join(out) + "\n"


def _render_html(doc: Document) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">',
           f'<head><meta charset="utf-8"><title>{e(doc.title)}</title></head>', "<body>",
           f"<h1>{e(doc.title)}</h1>", f"<p>{e(doc.intro)}</p>"]
    for sec in doc.sections:
        out.append(f"<h{sec.level}>{e(sec.title)}</h{sec.level}>")
        for kind, text in sec.blocks:
            if kind == "p":
                out.append(f"<p>{e(text)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in text.splitlines())
                           + "</ul>")
            else:
                out.append(f"<pre><code>{e(text)}</code></pre>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


_TOKEN = re.compile(r"\w+|[^\w\s]")


def estimate_chunks(doc: Document, max_tokens: int = 256) -> int:
    """About how many chunks a structure-aware chunker with a cap of ``max_tokens`` (counted
    as words and punctuation, as the fake embedder counts) makes of the document: sections
    never share a chunk, blocks are packed greedily, an oversized block is split."""
    def tokens(text: str) -> int:
        return len(_TOKEN.findall(text))

    def packed(trail: str, blocks: Sequence[str]) -> int:
        budget = max(8, max_tokens - tokens(trail))
        count, used = 0, 0
        for size in map(tokens, blocks):
            if size > budget:
                count, used = count + (used > 0) + -(-size // budget), 0
            elif used and used + size > budget:
                count, used = count + 1, size
            else:
                used += size
        return count + (used > 0)

    total = packed(doc.title, [doc.intro])
    parent = doc.title
    for sec in doc.sections:
        trail = f"{parent} > {sec.title}" if sec.level == 3 else f"{doc.title} > {sec.title}"
        parent = trail if sec.level == 2 else parent
        blocks = [item for kind, text in sec.blocks
                  for item in (text.splitlines() if kind == "ul" else [text])]
        total += packed(trail, blocks)
    return total


def estimated_points(pool: TextPool, spec: CorpusSpec, sample: int = 400) -> int:
    """About how many chunks the corpus makes, from ``estimate_chunks`` on a sample."""
    shared = _shared_paragraphs(pool, spec)
    picks = range(0, spec.docs, max(1, spec.docs // sample))
    per_doc = sum(estimate_chunks(document(pool, spec, i, shared=shared)) for i in picks)
    return round(per_doc / len(picks) * spec.docs)


def sections_for_points(pool: TextPool, docs: int, points: int, seed: int = 0) -> float:
    """The mean sections per document for which ``docs`` documents make about ``points``
    chunks (estimated on a sample with ``estimate_chunks``)."""
    def per_doc(sections: float) -> float:
        return estimated_points(pool, CorpusSpec(docs, seed, sections)) / docs

    want = points / docs
    low, high = 0.5, 1.0
    while per_doc(high) < want and high < 4096:
        low, high = high, high * 2
    for _ in range(12):
        mid = (low + high) / 2
        low, high = (mid, high) if per_doc(mid) < want else (low, mid)
    return round(high, 2)


# -- corpora on disk -----------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    """Write by rename: a file is whole or absent, and a hard-linked copy keeps the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


MARKER = ".corpus.json"


def write_corpus(pool: TextPool, spec: CorpusSpec, root: Path) -> dict:
    """Write the corpus under ``root`` and return its summary. A corpus already complete for
    this spec and pool is reused as it is; an interrupted one is finished (every file is
    written whole, so the files present are kept)."""
    marker = root / MARKER
    want = {"spec": asdict(spec), "pool": pool.digest()}
    if marker.exists():
        done = json.loads(marker.read_text())
        if {k: done.get(k) for k in want} == want:
            return done
        raise RuntimeError(f"{root} holds a different corpus ({done['spec']}, pool "
                           f"{done['pool']}); remove it or choose another folder")
    shared = _shared_paragraphs(pool, spec)
    started = time.perf_counter()
    size, kept = 0, 0
    for i in range(spec.docs):
        doc = document(pool, spec, i, shared=shared)
        path = root / doc.path
        if path.exists():
            size += path.stat().st_size
            kept += 1
            continue
        text = render(doc)
        _write_atomic(path, text)
        size += len(text.encode("utf-8"))
    summary = {**want, "documents": spec.docs, "bytes": size,
               "seconds": round(time.perf_counter() - started, 2),
               "kept_from_interrupted_write": kept}
    _write_atomic(marker, json.dumps(summary, indent=1))
    return summary


@dataclass(frozen=True)
class UpdatePlan:
    edited: tuple[int, ...]
    added: tuple[int, ...]
    removed: tuple[int, ...]


def update_plan(spec: CorpusSpec, step: int = 1, share: float = 0.01) -> UpdatePlan:
    """Which documents update ``step`` touches: ``share`` of the corpus, eight in ten edited
    (one paragraph rewritten), one added, one removed."""
    gone = {i for earlier in range(1, step) for i in update_plan(spec, earlier, share).removed}
    rng = _rng(spec, "update", step)
    touched = max(3, round(spec.docs * share))
    added = max(1, touched // 10)
    removed = max(1, touched // 10)
    alive = [i for i in range(spec.docs) if i not in gone]
    chosen = rng.sample(alive, min(len(alive), touched - added))
    first_new = spec.docs + (step - 1) * added
    return UpdatePlan(edited=tuple(sorted(chosen[removed:])),
                      added=tuple(range(first_new, first_new + added)),
                      removed=tuple(sorted(chosen[:removed])))


def apply_update(pool: TextPool, spec: CorpusSpec, root: Path, step: int = 1) -> dict:
    """Apply update ``step`` to the corpus written by ``write_corpus`` (steps in order, from 1).
    Files are replaced by rename, never rewritten in place, so a hard-linked copy of the
    corpus can be updated without touching the original."""
    plan = update_plan(spec, step)
    shared = _shared_paragraphs(pool, spec)
    for i in plan.edited:
        doc = document(pool, spec, i, revision=step, shared=shared)
        _write_atomic(root / doc.path, render(doc))
    for i in plan.added:
        doc = document(pool, spec, i, shared=shared)
        _write_atomic(root / doc.path, render(doc))
    for i in plan.removed:
        (root / document(pool, spec, i, shared=shared).path).unlink()
    return {"edited": len(plan.edited), "added": len(plan.added), "removed": len(plan.removed)}


def link_copy(src: Path, dst: Path) -> int:
    """A copy of the corpus folder made of hard links (instant, no extra space); returns the
    number of files. Writers must replace files by rename, as ``apply_update`` does."""
    count = 0
    for dirpath, _, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name != MARKER:
                os.link(Path(dirpath) / name, dst / rel / name)
                count += 1
    return count
