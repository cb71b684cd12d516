"""Shared fixtures: real corpora, configs, manifests and stores under tmp_path, a real
OpenAI-compatible server, small real filesystems. What they are made of is in tests/kbtest.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kbguard import providers
from kbguard.core.durable import copy_sparse
from tests.kbtest import (
    API_KEY,
    BACKENDS,
    KB,
    edit_corpus,
    long_markdown,
    make_kb,
    run_quiet,
    store_contents,
    write_config,
)
from tests.openai_server import OpenAIServer

__all__ = ["long_markdown"]   # tests/test_api.py imports it from here


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def kb(tmp_path: Path) -> KB:
    return make_kb(tmp_path)


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


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points a test made (``kbtest.tmpfs``); unmounted (lazily, whatever still holds
    them) afterwards."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        run_quiet("umount", "-l", str(path))
