"""What the tests share: KBs with real corpora, configs, manifests and stores under a folder,
the KB with an API primary space, small real filesystems, and raw reads of what kbguard wrote.

One module, imported as ``tests.kbtest`` everywhere; the fixtures that use it are in
``conftest.py``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from kbguard.cli.main import app
from kbguard.config import Config, load_config
from kbguard.core.disk import free_bytes

BACKENDS = ["edge", "qdrant"]
DVC = [sys.executable, "-m", "dvc"]
FAKE_DIM = 64


def long_markdown(title: str, sections: int = 8, paragraphs: int = 3) -> str:
    """A long document with many sections of several paragraphs each."""
    out = [f"# {title}\n"]
    for s in range(sections):
        out.append(f"## {title} part {s}\n")
        for p in range(paragraphs):
            out.append(
                f"Paragraph {p} of part {s} in {title} talks about topic{s} and item{p}. "
                f"It has enough words to be a real paragraph about {title.lower()} "
                f"number {s}-{p}, with a few more words for good measure.\n"
            )
    return "\n".join(out)


def write_config(path: Path, corpus: Path, *, kb: str = "testkb", backend: str = "edge",
                 provider: str = "fake", dim: int = FAKE_DIM, max_tokens: int = 64,
                 extra: str = "", workers: int = 1, upsert_batch: int = 16,
                 batch_size: int = 8) -> Path:
    model = "fake-hash" if provider == "fake" else "all-MiniLM-L6-v2"
    path.write_text(textwrap.dedent(f"""\
        [kb]
        name = "{kb}"
        [corpus]
        path = "{corpus.as_posix()}"
        [chunking]
        max_tokens = {max_tokens}
        [[spaces]]
        name = "local"
        provider = "{provider}"
        model = "{model}"
        dim = {dim}
        batch_size = {batch_size}
        [store]
        backend = "{backend}"
        path = "state/store"
        collection = "{kb}"
        [manifest]
        path = "state/manifest.duckdb"
        [snapshots]
        root = "state/snapshots"
        [rebuild]
        upsert_batch = {upsert_batch}
        parse_workers = {workers}
        """) + extra)
    return path


@dataclass
class KB:
    root: Path
    corpus: Path
    config_path: Path

    @property
    def cfg(self) -> Config:
        return load_config(self.config_path)

    def write(self, rel: str, text: str | bytes) -> Path:
        p = self.corpus / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text, encoding="utf-8")
        return p

    def cli(self, *args: str) -> CliResult:
        result = CliRunner().invoke(app, [*args, "--config", str(self.config_path)])
        return CliResult(result.exit_code, result.stdout, result.stderr, result.exception)

    def cli_json(self, *args: str) -> dict:
        res = self.cli(*args, "--json")
        assert res.code == 0, (res.stdout, res.stderr, res.exception)
        return json.loads(res.stdout)

    def subprocess(self, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kbguard", *args, "--config", str(self.config_path)],
            capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None


def make_kb(root: Path, *, backend: str = "edge", docs: int = 3, **kw) -> KB:
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for i in range(docs):
        (corpus / f"doc{i}.md").write_text(long_markdown(f"Document {i}", sections=3))
    cfg = write_config(root / "kbguard.toml", corpus, backend=backend, **kw)
    return KB(root, corpus, cfg)


def edit_corpus(kb: KB, *, extra_docs: int = 0) -> None:
    """The usual update of a built KB: a paragraph of doc1.md edited, doc2.md removed, new.md
    added, and ``extra_docs`` more long documents under added/ (more to embed and write)."""
    p = kb.corpus / "doc1.md"
    text = p.read_text()
    edited = text.replace("Paragraph 1 of part 1", "Paragraph 1 (edited) of part 1")
    assert edited != text, "the edit must change doc1.md"
    p.write_text(edited)
    (kb.corpus / "doc2.md").unlink()
    kb.write("new.md", long_markdown("Newcomer", sections=2))
    for i in range(extra_docs):
        kb.write(f"added/extra{i}.md", long_markdown(f"Extra {i}", sections=3))


def store_contents(cfg: Config) -> dict[str, tuple[dict[str, bytes], dict]]:
    """Every point of the KB's store: id -> (vector bytes per name, payload)."""
    from kbguard.store import store_for

    out: dict[str, tuple[dict[str, bytes], dict]] = {}
    with store_for(cfg) as store:
        for page in store.scroll(batch_size=500):
            for p in page:
                assert p.id not in out, f"duplicate point {p.id}"
                out[p.id] = ({k: v.astype("<f4").tobytes() for k, v in p.vectors.items()},
                             p.payload)
    return out


def manifest_chunk_ids(cfg: Config) -> set[str]:
    from kbguard.manifest import Manifest

    with Manifest.open(cfg.manifest, read_only=True) as m:
        return set(m.chunks.point_ids())


def manifest_sql(path: Path, sql: str, params: Sequence[Any] = (), *,
                 write: bool = False) -> list[tuple]:
    """The rows of raw ``sql`` on the manifest file at ``path``, run by DuckDB itself: what a
    test reads beside kbguard's API (or, with ``write``, changes behind its back)."""
    con = duckdb.connect(str(path), read_only=not write)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def git_dvc_repo(root: Path):
    """Make ``root`` a real git + DVC repository; returns a runner of commands inside it."""
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=root, check=True, capture_output=True)

    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run(*DVC, "init", "-q")
    return run


API_KEY = "sk-test-4f1e9a7c2b8d"   # of the local OpenAI-compatible server; KBG_EMBED_KEY names it


# -- a KB with an API primary space -----------------------------------------------------------

API_MODEL = "text-embedding-3-small"


def api_spaces(url: str, *, standby_in_chain: bool = False, price: float = 0.02,
               query_timeout_s: float = 5, per_request: int = 256) -> str:
    """The ``[[spaces]]`` of a KB whose primary space embeds through the OpenAI-compatible
    server at ``url`` (tests/openai_server.py), with a local ``fake`` standby space."""
    fake_entry = (f'\n[[spaces.providers]]\ntype = "fake"\nmodel = "{API_MODEL}"\n'
                  if standby_in_chain else "")
    return f"""
[[spaces]]
name = "primary"
model = "{API_MODEL}"
dim = 64
batch_size = 8
[[spaces.providers]]
type = "openai"
base_url = "{url}"
api_key_env = "KBG_EMBED_KEY"
max_retries = 0
timeout_s = 2
price_per_million_tokens = {price}
max_batch_texts = {per_request}
concurrency = 1
{fake_entry}
[[spaces]]
name = "local"
provider = "fake"
dim = 32
[search]
query_timeout_s = {query_timeout_s}
"""


def api_kb(root: Path, url: str, docs: int = 3, **kw: Any) -> KB:
    """``make_kb``'s KB with the spaces of ``api_spaces(url, **kw)``."""
    kb = make_kb(root, docs=docs)
    text = kb.config_path.read_text()
    head, _, rest = text.partition("[[spaces]]")
    rest = rest[rest.index("[store]"):]
    kb.config_path.write_text(head + api_spaces(url, **kw) + rest)
    return kb


# -- real small filesystems -------------------------------------------------------------------

def run_quiet(*args: str) -> subprocess.CompletedProcess:
    """Run a system command (mount, chattr, ...), its output kept for the test to read."""
    return subprocess.run(args, capture_output=True, text=True)


def tmpfs(mounts: list[Path], path: Path, size: str) -> Path:
    """A real filesystem of ``size`` at ``path``, or a skip saying why there cannot be one.
    ``mounts``: the fixture of that name, which unmounts it after the test."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no `mount` command here, so no small filesystem to fill")
    done = run_quiet("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip()}); "
                    "a full disk needs a small real filesystem")
    mounts.append(path)
    return path


def fill(where: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the filesystem of ``where`` with one preallocated file."""
    filler = where / "filler"
    want = free_bytes(where) - leave
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY)
    try:
        while want > 0:
            try:
                os.posix_fallocate(fd, 0, want)
                break
            except OSError:
                want -= 4096
    finally:
        os.close(fd)
    assert free_bytes(where) <= leave + 64 * 1024
    return filler


# -- Qdrant shard snapshots -------------------------------------------------------------------

def shard_snapshot(shard: Path, out: Path) -> Path:
    """A shard snapshot file of the closed Edge shard folder ``shard``, in the layout a Qdrant
    server's has (a tar of ``segments/<id>.tar``, each a plain archive of one segment's
    folder, and ``wal/``)."""
    with tarfile.open(out, "w") as tar:
        for segment in sorted((shard / "segments").iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(segment.rglob("*")):
                    inner.add(f, arcname=f.relative_to(segment).as_posix(), recursive=False)
            info = tarfile.TarInfo(f"segments/{segment.name}.tar")
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
        for f in sorted((shard / "wal").rglob("*")):
            tar.add(f, arcname=f.relative_to(shard).as_posix(), recursive=False)
    return out
