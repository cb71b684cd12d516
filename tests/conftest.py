"""Shared fixtures: real corpora, configs, manifests and stores under tmp_path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from typer.testing import CliRunner

from kbguard import providers
from kbguard.cli.main import app
from kbguard.config import Config, load_config
from kbguard.core.durable import copy_sparse
from tests.openai_server import OpenAIServer

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


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def kb(tmp_path: Path) -> KB:
    return make_kb(tmp_path)


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


@pytest.fixture(scope="session")
def _built_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KB]:
    return {}


@pytest.fixture
def built_kb(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
             _built_templates: dict[str, KB]) -> Callable[..., KB]:
    """``built_kb(root=tmp_path, *, backend, docs, **write_config options)``: the KB that
    ``make_kb`` makes, already rebuilt once.

    Each distinct set of options is built once per session and copied (mtimes kept, so the copy
    is as up to date as the original); only the config is written again, for the new corpus path.
    """
    def make(root: Path | None = None, *, backend: str = "edge", docs: int = 3, **kw) -> KB:
        key = json.dumps({"backend": backend, "docs": docs, **kw}, sort_keys=True)
        template = _built_templates.get(key)
        if template is None:
            template = make_kb(tmp_path_factory.mktemp("built"), backend=backend, docs=docs, **kw)
            template.cli_json("rebuild")
            _built_templates[key] = template
        root = tmp_path if root is None else root
        shutil.copytree(template.root, root, symlinks=True, dirs_exist_ok=True,
                        copy_function=copy_sparse)
        config = write_config(root / "kbguard.toml", root / "corpus", backend=backend, **kw)
        return KB(root, root / "corpus", config)

    return make


@pytest.fixture(scope="session")
def clean_edited_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict]:
    """``clean_edited_build(docs, extra_docs)``: the store contents of a fresh build of the
    corpus that ``edit_corpus`` leaves, built once per session: what any way back must equal."""
    cache: dict[tuple[int, int], dict] = {}

    def contents(docs: int = 3, extra_docs: int = 0) -> dict:
        if (docs, extra_docs) not in cache:
            kb = make_kb(tmp_path_factory.mktemp("clean"), docs=docs)
            edit_corpus(kb, extra_docs=extra_docs)
            kb.cli_json("rebuild")
            cache[docs, extra_docs] = store_contents(kb.cfg)
        return cache[docs, extra_docs]

    return contents


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


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """A real OpenAI-compatible embeddings server on 127.0.0.1 (tests/openai_server.py)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("KBG_EMBED_KEY", API_KEY)
    providers.forget_chains()  # each command of these tests stands for a new process
    with OpenAIServer(api_key=API_KEY) as srv:
        yield srv
    providers.forget_chains()
