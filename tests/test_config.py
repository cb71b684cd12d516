"""The config is a schema: every mistake is an exit-2 error naming the key, and nothing is written."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kbguard.cli.main import app
from kbguard.config import (
    PROVIDERS,
    ConfigFile,
    CorpusTable,
    RebuildTable,
    SpaceConfig,
    load_config,
    render_config,
)
from kbguard.errors import ConfigError
from tests.kbtest import KB, make_kb

BASE = """\
[kb]
name = "t"
[corpus]
path = "corpus"
[[spaces]]
name = "local"
provider = "fake"
dim = 64
"""


def _config(tmp_path: Path, text: str) -> Path:
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / "a.md").write_text("# A\n\nSome text about alpha.\n")
    path = tmp_path / "kbguard.toml"
    path.write_text(textwrap.dedent(text))
    return path


def _nothing_written(tmp_path: Path) -> None:
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert left == ["corpus", "corpus/a.md", "kbguard.toml"], left


@pytest.mark.parametrize("text, expected", [
    (BASE + "[chunking]\nmax_token = 100\n",
     "unknown key chunking.max_token; did you mean chunking.max_tokens?"),
    (BASE + "[stroe]\npath = 'x'\n", "unknown table [stroe]; did you mean [store]?"),
    (BASE + "[store]\nbakend = 'edge'\n", "unknown key store.bakend; did you mean store.backend?"),
    (BASE.replace('path = "corpus"', 'path = "corpus"\nexlude = []'),
     "unknown key corpus.exlude; did you mean corpus.exclude?"),
    (BASE + "batchsize = 8\n",
     "unknown key spaces.batchsize (in [[spaces]] #1); did you mean spaces.batch_size?"),
    (BASE + 'normalize = "yes"\n',
     'spaces.normalize (in [[spaces]] #1) must be true or false, got "yes" (a string)'),
    (BASE + "batch_size = true\n",
     "spaces.batch_size (in [[spaces]] #1) must be an integer, got true"),
    (BASE + '[[canaries]]\nquery = "alpha"\nexpect = "a.md"\n',
     'canaries.expect (in [[canaries]] #1) must be a list, e.g. ["a", "b"], got "a.md"'),
    (BASE + "[rebuild]\nupsert_batch = 1e22\n",
     "rebuild.upsert_batch must be an integer, got 1e+22"),
    (BASE + "[rebuild]\nupsert_batch = 0\n", "rebuild.upsert_batch must be at least 1, got 0"),
    (BASE + "[rebuild]\nparse_workers = 0\n",
     "rebuild.parse_workers must be at least 1, got 0"),
    (BASE.replace('path = "corpus"', 'path = "corpus"\nmax_file_mb = -1'),
     "corpus.max_file_mb must be greater than 0"),
    (BASE + '[store]\ncollection = ""\n', "store.collection must be a name that starts with a "
     "letter"),
    (BASE + '[store]\nbackend = "qdrnt"\n', "store.backend must be one of 'edge' or 'qdrant', "
     'got "qdrnt"'),
    (BASE + '[store]\nurl = "http://127.0.0.1:6333"\n', 'store.url needs backend = "qdrant"'),
    (BASE.replace('provider = "fake"\n', 'model = "fake-hash"\n'),
     "[[spaces]] #1: model 'fake-hash' of space 'local' has no local copy"),
    ('[kb]\nname = "t"\n[corpus]\npath = "corpus"\n', "missing [[spaces]] table"),
    (BASE.replace('provider = "fake"\n', 'model = "m"\nproviders = []\n'),
     "[[spaces]] #1: providers is empty, and a space needs at least one provider"),
    (BASE + '[[spaces]]\nname = "local"\nprovider = "fake"\n', "space names must be unique"),
])
def test_a_config_mistake_is_one_clear_error_and_nothing_is_written(
        tmp_path: Path, text: str, expected: str) -> None:
    path = _config(tmp_path, text)
    for command in (["rebuild"], ["status"], ["verify"], ["snapshot", "create"]):
        res = CliRunner().invoke(app, [*command, "--config", str(path)])
        assert res.exit_code == 2, (command, res.stdout, res.stderr)
        assert expected in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    _nothing_written(tmp_path)


def test_every_problem_of_a_file_is_named_at_once(tmp_path: Path) -> None:
    path = _config(tmp_path, BASE + "batchsize = 8\nnormalize = 1\n[rebuild]\nupsert_batch = 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path} has errors:"
    assert len(lines) == 5 and lines[-1] == "Fix the file and run again."


def test_a_space_without_provider_whose_model_is_not_bundled_is_refused_before_any_document(
        tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=2)
    kb.config_path.write_text(kb.config_path.read_text().replace('provider = "fake"\n', ""))
    res = kb.cli("rebuild")
    assert res.code == 2
    assert 'set provider = "fake"' in res.stderr
    assert not (tmp_path / "state").exists()


def test_a_model_path_without_a_model_is_refused_before_any_document(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=2)
    (tmp_path / "mymodel").mkdir()
    kb.config_path.write_text(kb.config_path.read_text().replace(
        'provider = "fake"\nmodel = "fake-hash"\n',
        'provider = "sentence-transformers"\nmodel = "mine"\nmodel_path = "mymodel"\n'))
    res = kb.cli("rebuild")
    assert res.code == 2
    assert "no modules.json" in res.stderr and "model_path" in res.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("make_bad", ["missing", "file"])
def test_a_corpus_that_is_no_folder_is_refused_before_anything_is_written(
        tmp_path: Path, make_bad: str) -> None:
    kb = make_kb(tmp_path, docs=1)
    for f in kb.corpus.iterdir():
        f.unlink()
    kb.corpus.rmdir()
    if make_bad == "file":
        kb.corpus.write_text("not a folder")
    res = kb.cli("rebuild")
    assert res.code == 2
    what = "is a file, not a folder" if make_bad == "file" else "does not exist"
    assert f"The corpus folder {kb.corpus} {what}" in res.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", [["verify"], ["verify", "--repair"], ["snapshot", "create"]])
def test_checking_an_unbuilt_kb_writes_nothing(kb: KB, command: list[str]) -> None:
    res = kb.cli(*command)
    assert res.code == 2
    assert "run `kbguard rebuild`" in res.stderr.replace("Run `kbguard rebuild`",
                                                         "run `kbguard rebuild`")
    assert not (kb.root / "state").exists()


def test_what_init_writes_is_the_schema_defaults(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    text = render_config(kb="docs", corpus=tmp_path / "docs", config_dir=tmp_path)
    (tmp_path / "kbguard.toml").write_text(text)
    cfg = load_config(tmp_path / "kbguard.toml")
    defaults = CorpusTable(path=".")
    assert (cfg.include, cfg.exclude, cfg.max_file_mb) == (
        defaults.include, defaults.exclude, defaults.max_file_mb)
    assert (cfg.upsert_batch, cfg.parse_workers) == (RebuildTable().upsert_batch,
                                                      RebuildTable().parse_workers)
    space = cfg.spaces[0]
    assert (space.dim, space.batch_size, space.normalize) == tuple(
        SpaceConfig.model_fields[k].default for k in ("dim", "batch_size", "normalize"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_init_writes_every_table_and_key_of_the_schema_that_has_a_value(
        tmp_path: Path, provider: str) -> None:
    (tmp_path / "docs").mkdir()
    text = render_config(kb="docs", corpus=tmp_path / "docs", config_dir=tmp_path,
                         provider=provider)
    data = tomllib.loads(text)
    assert set(data) == set(ConfigFile.model_fields) - {"canaries"}
    for table in ("chunking", "rebuild", "search", "recovery"):
        assert set(data[table]) == set(ConfigFile.model_fields[table].annotation.model_fields)
    assert all("normalize" in space for space in data["spaces"])
    # keys with no value are shown commented out, with an example and what they mean
    assert '# url = "http://127.0.0.1:6333"  # a Qdrant server, instead of path' in text
    (tmp_path / "kb.toml").write_text(text)
    assert load_config(tmp_path / "kb.toml").kb == "docs"


@pytest.mark.parametrize("folder", ['my "docs"', "back\\slash", "tab\tand ünïcode"])
def test_init_writes_a_corpus_path_of_any_name_as_a_toml_string(
        tmp_path: Path, folder: str) -> None:
    corpus = tmp_path / folder
    corpus.mkdir()
    res = CliRunner().invoke(app, ["init", "--corpus", str(corpus), "--config",
                                   str(tmp_path / "kb.toml")])
    assert res.exit_code == 0, res.output
    assert load_config(tmp_path / "kb.toml").corpus == corpus.resolve()


def _schema_keys() -> set[str]:
    from kbguard.config import provider_settings as settings
    from kbguard.config.schema import inner_models

    keys = set()
    for table, field in ConfigFile.model_fields.items():
        (inner,) = inner_models(field.annotation)
        for key in inner.model_fields:
            keys.add(f"{table}.{key}")
    for entry in (settings.OpenAIProviderSettings, settings.SentenceTransformersProviderSettings,
                  settings.FakeProviderSettings):
        keys |= {f"providers.{key}" for key in entry.model_fields}
    return keys


def test_the_readme_key_table_names_exactly_the_schema_keys() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## The KB config", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    for first, _default, meaning in re.findall(r"^\| (.+?) \| (.+?) \| (.+) \|$", section,
                                               flags=re.M):
        if first == "`[[spaces.providers]]`":
            bare = re.sub(r"\([^)]*\)", "", meaning)
            listed |= {f"providers.{key}" for key in re.findall(r"`(\w+)`", bare)}
            continue
        array = re.fullmatch(r"`\[\[(\w+)\]\]`", first)
        if array:  # `[[spaces]]`: its keys are named in the meaning, values in parentheses
            bare = re.sub(r"\([^)]*\)", "", meaning)
            listed |= {f"{array[1]}.{key}" for key in re.findall(r"`(\w+)`", bare)}
        else:
            listed |= {key for key in re.findall(r"`([\w.]+)`", first) if "." in key}
    assert listed == _schema_keys(), listed ^ _schema_keys()


def test_init_with_an_api_writes_a_primary_and_a_local_standby(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    res = CliRunner().invoke(app, ["init", "--corpus", str(tmp_path / "docs"), "--config",
                                   str(tmp_path / "kb.toml"), "--provider", "openai"])
    assert res.exit_code == 0, res.output
    assert "export OPENAI_API_KEY=" in res.stdout
    cfg = load_config(tmp_path / "kb.toml")
    primary, local = cfg.spaces
    assert (primary.name, primary.model, primary.dim) == ("primary", "text-embedding-3-small",
                                                          1536)
    (entry,) = primary.chain
    assert (entry.type, entry.base_url, entry.api_key_env, entry.price_per_million_tokens) == (
        "openai", "https://api.openai.com/v1", "OPENAI_API_KEY", 0.02)
    assert (local.name, local.provider, local.model) == ("local", "sentence-transformers",
                                                         "all-MiniLM-L6-v2")
    res = CliRunner().invoke(app, ["init", "--corpus", str(tmp_path / "docs"), "--config",
                                   str(tmp_path / "other.toml"), "--provider", "openai",
                                   "--model", "my-embedder"])
    assert res.exit_code == 2 and "pass --dim N" in res.stderr


@pytest.mark.parametrize("args, key_env, warned", [
    ([], "OPENAI_API_KEY", False),
    (["--base-url", "https://api.openai.com/v1/"], "OPENAI_API_KEY", False),
    (["--base-url", "http://other-host/v1"], None, False),
    (["--base-url", "http://127.0.0.1:8080/v1"], None, False),
    (["--base-url", "http://other-host/v1", "--api-key-env", "OTHER_KEY"], "OTHER_KEY", True),
    (["--base-url", "https://other-host/v1", "--api-key-env", "OTHER_KEY"], "OTHER_KEY", False),
    (["--base-url", "http://127.0.0.1:8080/v1", "--api-key-env", "TEI_KEY"], "TEI_KEY", False),
    (["--base-url", "http://api.openai.com/v1"], "OPENAI_API_KEY", True),
], ids=["openai", "openai-url", "other-host", "local", "other-host-key", "https-key",
        "local-key", "openai-over-http"])
def test_init_names_a_key_variable_only_for_the_host_it_belongs_to(
        tmp_path: Path, args: list[str], key_env: str | None, warned: bool) -> None:
    (tmp_path / "docs").mkdir()
    res = CliRunner().invoke(app, ["init", "--corpus", str(tmp_path / "docs"), "--config",
                                   str(tmp_path / "kb.toml"), "--provider", "openai", *args])
    assert res.exit_code == 0, res.output
    (entry,) = load_config(tmp_path / "kb.toml").spaces[0].chain
    assert entry.api_key_env == key_env
    assert ("Set the API key first: export" in res.stdout) == (key_env is not None)
    host = "api.openai.com" if key_env == "OPENAI_API_KEY" else "other-host"
    warning = (f"Warning: the key in {key_env} is sent over plain http to {host}, which is not "
               "this machine: anyone on the way can read it. Use an https:// base_url, or no "
               "key for an endpoint that needs none.")
    assert (warning in res.stderr) == warned, res.stderr
    assert "Warning" not in res.stdout


@pytest.mark.parametrize("args, shown", [
    (["--provider", "openai", "--api-key-env", "sk-live-0123456789"],
     "--api-key-env: must be the NAME of an environment variable (letters, digits, _), e.g. "
     "OPENAI_API_KEY, never the key itself"),
    (["--provider", "openai", "--base-url", "https://h.example/v1?api-key=sk-live-0123456789"],
     "--base-url: must not have a query string or fragment"),
    (["--provider", "openai", "--base-url", "https://me:sk-live-0123456789@h.example/v1"],
     "--base-url: must not carry credentials"),
    (["--api-key-env", "OTHER_KEY"], "--api-key-env goes with --provider openai"),
], ids=["key-as-name", "query", "user-info", "not-openai"])
def test_init_refuses_a_bad_key_variable_or_url_and_writes_nothing(
        tmp_path: Path, args: list[str], shown: str) -> None:
    (tmp_path / "docs").mkdir()
    res = CliRunner().invoke(app, ["init", "--corpus", str(tmp_path / "docs"), "--config",
                                   str(tmp_path / "kb.toml"), *args])
    assert res.exit_code == 2, res.output
    assert shown in res.stderr
    assert "Nothing was written" in res.stderr
    assert "sk-live" not in res.stdout + res.stderr
    assert not (tmp_path / "kb.toml").exists()


def test_a_key_pasted_where_its_variable_name_belongs_is_never_repeated(tmp_path: Path) -> None:
    key = "sk-live-9f8e7d6c5b4a"
    path = _config(tmp_path, BASE.replace('provider = "fake"\ndim = 64\n', f"""\
model = "text-embedding-3-small"
dim = 64
[[spaces.providers]]
type = "openai"
api_key_env = "{key}"
api_kee = "{key}"
base_url = "https://user:{key}@api.example/v1"
"""))
    res = CliRunner().invoke(app, ["rebuild", "--config", str(path)])
    assert res.exit_code == 2
    assert ("spaces.providers.api_key_env (in [[spaces]] #1, [[spaces.providers]] #1): must be "
            "the NAME of an environment variable") in res.stderr
    assert "unknown key spaces.providers.api_kee" in res.stderr
    assert "spaces.providers.base_url" in res.stderr
    assert key not in res.stderr + res.stdout
    _nothing_written(tmp_path)
