"""Embedders: the fake one for tests, and the bundled all-MiniLM-L6-v2 (marked `model`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kbguard.config import SpaceConfig, load_config
from kbguard.errors import EmbedError, ProviderUnavailable
from kbguard.providers.local import FakeEmbedder, SentenceTransformerEmbedder, local_embedder
from tests.kbtest import make_kb

FAKE = SpaceConfig(name="local", provider="fake", model="fake-hash", dim=64)
MINILM = SpaceConfig(name="local", provider="sentence-transformers", model="all-MiniLM-L6-v2", dim=384)


def test_fake_embedder_is_deterministic_normalised_and_lexical() -> None:
    emb = FakeEmbedder(FAKE)
    a = emb.embed_batch(["zebras have stripes", "zebras have stripes", "tax forms are due"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert a[0].tobytes() == FakeEmbedder(FAKE).embed_batch(["zebras have stripes"])[0].tobytes()
    near = FakeEmbedder(FAKE).embed_batch(["stripes of zebras"])[0]
    assert float(near @ a[0]) > float(near @ a[2])
    assert emb.texts_embedded == 3


def test_a_config_without_provider_uses_the_real_model_never_the_fake(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=0)
    text = kb.config_path.read_text().replace('provider = "fake"\n', "").replace(
        'model = "fake-hash"\n', "").replace("dim = 64\n", "")
    kb.config_path.write_text(text)
    space = load_config(kb.config_path).spaces[0]
    assert (space.provider, space.model, space.dim) == (
        "sentence-transformers", "all-MiniLM-L6-v2", 384)


def test_an_unbundled_model_without_model_path_says_what_to_set() -> None:
    with pytest.raises(ProviderUnavailable, match="model_path"):
        SentenceTransformerEmbedder(SpaceConfig.model_construct(name="x", provider="sentence-transformers", model="bge-large", dim=1024))


def test_a_folder_that_is_no_model_is_refused(tmp_path: Path) -> None:
    space = SpaceConfig(name="x", provider="sentence-transformers", model="mine", dim=384, model_path=tmp_path)
    with pytest.raises(ProviderUnavailable, match="modules.json"):
        SentenceTransformerEmbedder(space)


def test_the_bundled_tokenizer_counts_without_loading_the_model() -> None:
    emb = SentenceTransformerEmbedder(MINILM)
    counts = emb.count_tokens(["hello world", "Django's QuerySet API is lazy."])
    assert counts[0] == 2 and counts[1] > 6
    assert emb.max_input_tokens == 254
    assert emb._model is None  # chunking must not pay for torch


@pytest.mark.model
def test_minilm_embeds_offline_normalised_and_reproducibly(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = SentenceTransformerEmbedder(MINILM)
    texts = ["How do I write a unit test for a Django view?",
             "Testing views with the Django test client",
             "The recipe needs two cups of flour."]
    v = emb.embed_batch(texts)
    assert v.shape == (3, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert float(v[0] @ v[1]) > 0.5 > float(v[0] @ v[2])
    again = SentenceTransformerEmbedder(MINILM).embed_batch(texts)
    np.testing.assert_allclose(again, v, atol=1e-6)


@pytest.mark.model
def test_minilm_with_a_wrong_dim_in_the_config_is_a_clear_error() -> None:
    with pytest.raises(EmbedError, match="dim = 128"):
        local_embedder(SpaceConfig(name="bad", provider="sentence-transformers", model="all-MiniLM-L6-v2", dim=128)
                     ).embed_batch(["text"])


@pytest.mark.model
def test_a_rebuild_with_minilm_searches_by_meaning(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=0, provider="sentence-transformers", dim=384, max_tokens=128)
    kb.write("pets.md", "# Pets\n\nCats and dogs are popular animals to keep at home.\n")
    kb.write("money.md", "# Taxes\n\nThe annual income tax return is due in April.\n")
    kb.cli_json("rebuild")
    res = kb.cli("search", "household companions like kittens", "-k", "1", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["path"] == "pets.md"
