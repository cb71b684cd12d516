"""Credentials of a Qdrant server never reach an output, a manifest, a snapshot or a metrics file.

A store URL may hold user-info or an API key in its query; the API key itself comes from an
environment variable named by `store.api_key_env`, never from the config file.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import duckdb
import pytest

from kbguard.config import load_config
from kbguard.core.redact import redact_url, scrub, url_secrets
from kbguard.errors import ConfigError
from kbguard.manifest import Manifest
from tests.kbtest import KB, make_kb

SECRET_URL = "http://admin:secret@127.0.0.1:9/?api_key=secret-key-in-query"
SHOWN_URL = "http://***@127.0.0.1:9/?api_key=***"


def _server_kb(tmp_path: Path, url: str, extra: str = "") -> KB:
    kb = make_kb(tmp_path, backend="qdrant", docs=2)
    text = kb.config_path.read_text()
    assert 'path = "state/store"' in text
    kb.config_path.write_text(text.replace('path = "state/store"', f'url = "{url}"{extra}'))
    return kb


def _state_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


def _manifest_text(path: Path) -> str:
    """Every value of every table of the manifest, as text (DuckDB may compress strings on
    disk, so the file's bytes alone could hide one)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables")
                  .fetchall()]
        return "\n".join(str(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
    finally:
        con.close()


# -- what is shown -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("http://admin:secret@127.0.0.1:9/", "http://***@127.0.0.1:9/"),
    ("https://u:p%40ss@qdrant.example:6333/base?api_key=K1&timeout=5&token=T2",
     "https://***@qdrant.example:6333/base?api_key=***&timeout=5&token=***"),
    ("https://qdrant.example:6333?key=abc", "https://qdrant.example:6333?key=***"),
    ("http://127.0.0.1:6333", "http://127.0.0.1:6333"),
])
def test_redact_url_masks_userinfo_and_key_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_scrub_masks_urls_in_text_and_known_secrets() -> None:
    url = "https://admin:pa%2Fss@h:6333/?apikey=zz99"
    text = (f"failed: GET {url} (api-key: abcdef) with password pa/ss "
            "and the env key KEY-123456")
    out = scrub(text, [*url_secrets(url), "KEY-123456"])
    assert out == ("failed: GET https://***@h:6333/?apikey=*** (api-key: ***) with "
                   "password *** and the env key ***")
    # ordinary words are left alone
    assert scrub("the key is in the index; tokens=12") == "the key is in the index; tokens=12"


# -- end to end: nothing of the credentials is printed or stored -------------------------------

def _built_before(kb: KB) -> None:
    """A KB built before its server went away: a rebuild of a KB with no manifest would stop
    at the unreachable store before writing anything, so give it its (empty) manifest."""
    with Manifest.open(kb.cfg.manifest, kb=kb.cfg.kb):
        pass


def test_credentials_in_the_store_url_are_never_printed_or_stored(tmp_path: Path) -> None:
    kb = _server_kb(tmp_path, SECRET_URL)  # nothing listens on port 9: the store is unreachable
    _built_before(kb)
    prom = kb.root / "state" / "kb.prom"
    outputs: list[str] = []

    def run(*args: str, code: int) -> str:
        res = kb.cli(*args)
        assert res.code == code, (args, res.stdout, res.stderr, res.exception)
        outputs.extend([res.stdout, res.stderr])
        return res.stdout if "--json" in args else res.stdout + res.stderr

    unreachable = f"The Qdrant server at {SHOWN_URL} cannot be reached"
    assert unreachable in run("rebuild", code=2)
    assert unreachable in json.loads(run("rebuild", "--json", code=2))["error"]
    assert f"store      qdrant at {SHOWN_URL}: {unreachable}" in run("status", code=0)
    st = json.loads(run("status", "--json", code=0))
    assert st["store"]["location"] == SHOWN_URL
    assert st["last_run"]["error"].startswith(unreachable)
    assert f"store={SHOWN_URL}, error={unreachable}" in run(
        "verify", "--prom-file", str(prom), code=1)
    report = json.loads(run("verify", "--json", code=1))
    assert report["findings"]["store_unreadable"]["examples"][0]["store"] == SHOWN_URL
    assert unreachable in run("snapshot", "create", code=2)
    assert unreachable in run("search", "document", code=2)
    assert unreachable in json.loads(run("search", "document", "--json", code=2))["error"]
    assert unreachable in run("verify", "--repair", code=2)

    for text in outputs:
        assert "secret" not in text, text
    state = list(_state_bytes(kb.root / "state"))
    assert any(p.suffix == ".duckdb" for p, _ in state) and prom.exists()
    for path, data in state:
        assert b"secret" not in data, path
    assert "secret" not in _manifest_text(kb.cfg.manifest)
    assert SHOWN_URL in _manifest_text(kb.cfg.manifest)  # the errors are there, redacted


# -- the API key comes from the environment ----------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in for a Qdrant server that rejects every request, quoting the key it got."""

    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = json.dumps({"status": {"error": f"bad request with api-key "
                                               f"{self.headers.get('api-key')}"}}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_the_api_key_is_read_from_the_named_variable_and_never_shown(
        tmp_path: Path, server, monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = server
    key = "kbg-test-key-7f3a91"
    kb = _server_kb(tmp_path, url, '\napi_key_env = "KBG_TEST_QDRANT_KEY"')
    assert kb.cfg.store_api_key_env == "KBG_TEST_QDRANT_KEY"
    assert key not in repr(kb.cfg)
    _built_before(kb)

    monkeypatch.delenv("KBG_TEST_QDRANT_KEY", raising=False)
    res = kb.cli("rebuild")
    assert res.code == 2
    assert ("store.api_key_env names the environment variable KBG_TEST_QDRANT_KEY, but it is "
            "not set (or empty)") in res.stderr
    assert seen == []  # nothing was sent without the key

    monkeypatch.setenv("KBG_TEST_QDRANT_KEY", key)
    outputs = []
    for args, code in ((("rebuild",), 2), (("status", "--json"), 0), (("verify",), 1),
                       (("search", "document"), 2)):
        res = kb.cli(*args)
        assert res.code == code, (args, res.stdout, res.stderr)
        outputs += [res.stdout, res.stderr]
    assert seen and all(h.get("api-key") == key for h in seen)
    # the server's answer quoted the key: the message shows the answer without it
    assert any("bad request with api-key ***" in o for o in outputs), outputs
    for text in outputs:
        assert key not in text
    for path, data in _state_bytes(kb.root / "state"):
        assert key.encode() not in data, path
    assert key not in _manifest_text(kb.cfg.manifest)


def test_an_api_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    kb = _server_kb(tmp_path, "http://127.0.0.1:9", '\napi_key = "kbg-literal-key"')
    with pytest.raises(ConfigError, match="store.api_key_env") as err:
        load_config(kb.config_path)
    assert "kbg-literal-key" not in str(err.value)
    res = kb.cli("status")
    assert res.code == 2
    assert "store.api_key is not read from the config file" in res.stderr
    assert 'store.api_key_env = "QDRANT_API_KEY"' in res.stderr
    assert "kbg-literal-key" not in res.stderr + res.stdout


def test_api_key_env_must_name_a_variable(tmp_path: Path) -> None:
    kb = _server_kb(tmp_path, "http://127.0.0.1:9", '\napi_key_env = "kbg-8f9a-literal-key"')
    with pytest.raises(ConfigError, match="must be the NAME of an environment variable") as err:
        load_config(kb.config_path)
    assert "kbg-8f9a-literal-key" not in str(err.value)  # it may be the key itself


def test_api_key_env_without_a_server_is_refused(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, backend="edge", docs=1)
    text = kb.config_path.read_text().replace('path = "state/store"',
                                              'path = "state/store"\napi_key_env = "QDRANT_KEY"')
    kb.config_path.write_text(text)
    with pytest.raises(ConfigError, match="only applies to a Qdrant server"):
        load_config(kb.config_path)
