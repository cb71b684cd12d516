"""Spaces with provider chains in a real KB: failover, an outage's debt and its payment, search
from the standby, the cost ledger, and no secret anywhere kbguard writes.

The primary space embeds through a real OpenAI-compatible server on 127.0.0.1
(tests/openai_server.py), whose vectors are the fake embedder's, so a ``fake`` provider of the
same model identity agrees with it exactly and a clean build can be compared bit for bit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from kbguard import providers
from kbguard.providers import MIN_PROBE_COSINE
from tests.kbtest import API_KEY as KEY
from tests.kbtest import API_MODEL as MODEL
from tests.kbtest import KB, api_kb, make_kb, manifest_sql, store_contents
from tests.openai_server import OpenAIServer


def _rebuild(kb: KB, code: int = 0) -> dict:
    res = kb.cli("rebuild", "--json")
    assert res.code == code, (res.stdout, res.stderr, res.exception)
    return json.loads(res.stdout)


def test_an_api_primary_and_a_local_standby_build_together(tmp_path: Path,
                                                           server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url)
    report = _rebuild(kb)
    assert report["chunks"]["embedded"] == 2 * report["chunks"]["total"]
    assert report["spaces"]["primary"]["coverage"] == 1.0
    assert report["spaces"]["local"]["coverage"] == 1.0
    assert all(r.headers.get("authorization") == f"Bearer {KEY}"
               for r in server.embedding_requests)
    points = store_contents(kb.cfg)
    assert {frozenset(v) for v, _ in points.values()} == {frozenset({"primary", "local"})}
    made_by = dict(manifest_sql(kb.cfg.manifest, "SELECT space_id, any_value(provider) "
                                "FROM embeddings GROUP BY 1"))
    assert made_by[f"{MODEL}@64/norm"].startswith("openai")
    assert made_by["fake-hash@32/norm"].startswith("fake")


def test_the_cost_ledger_counts_the_api_tokens_and_their_price(tmp_path: Path,
                                                              server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url, price=1000.0)
    report = _rebuild(kb)
    cost = report["cost"]
    assert cost["by_space"]["primary"]["tokens"] > 0
    assert cost["by_space"]["primary"]["usd"] == pytest.approx(
        cost["by_space"]["primary"]["tokens"] * 1000.0 / 1e6)
    assert cost["by_space"]["local"]["usd"] == 0
    assert cost["usd"] == pytest.approx(cost["by_space"]["primary"]["usd"])
    status = kb.cli_json("status")
    assert status["spend"]["total"]["usd"] == pytest.approx(cost["usd"])
    assert status["spend"]["this_month"]["usd"] == pytest.approx(cost["usd"])
    again = _rebuild(kb)  # nothing new: nothing paid
    assert again["cost"]["usd"] == 0 and again["cost"]["tokens"] == 0


def test_a_space_whose_providers_are_all_down_leaves_a_debt_the_next_rebuild_pays(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url)
    server.fail("status", times=10_000, code=503)
    report = _rebuild(kb, code=4)
    total = report["chunks"]["total"]
    assert report["spaces"]["local"]["coverage"] == 1.0
    assert report["spaces"]["primary"]["coverage"] == 0.0
    assert report["spaces"]["primary"]["texts"] == 0
    [(texts,)] = manifest_sql(kb.cfg.manifest, "SELECT count(DISTINCT content_hash) FROM chunks")
    assert report["spaces"]["primary"]["debt"] == texts > 0
    assert "primary" in " ".join(report["notes"])
    assert report["chunks"]["written"] == total  # the points are there, with the local vector
    assert {frozenset(v) for v, _ in store_contents(kb.cfg).values()} == {frozenset({"local"})}
    status = kb.cli_json("status")
    assert status["spaces"][0]["name"] == "primary" and status["spaces"][0]["coverage"] == 0.0
    res = kb.cli("verify", "--json")
    verify = json.loads(res.stdout)
    found = {k: v for k, v in verify["findings"].items() if v["count"]}
    assert res.code == 0 and verify["total_findings"] == 0, found  # debt is not damage
    assert verify["spaces"]["primary"]["coverage"] == 0.0

    found = kb.cli_json("search", "Document 1 part 2 topic2")
    assert (found["space"], found["degraded"]) == ("local", True)
    assert "incomplete" in found["reason"]

    server.clear_faults()
    providers.forget_chains()
    debt = report["spaces"]["primary"]["debt"]
    paid = _rebuild(kb)
    assert paid["chunks"]["embedded"] == debt  # exactly the debt, nothing more
    assert paid["spaces"]["primary"]["coverage"] == 1.0
    assert {frozenset(v) for v, _ in store_contents(kb.cfg).values()} == {
        frozenset({"primary", "local"})}
    assert kb.cli_json("search", "Document 1 part 2 topic2")["degraded"] is False


def test_a_primary_killed_mid_rebuild_fails_over_to_the_same_model(
        tmp_path: Path, server: OpenAIServer) -> None:
    clean = api_kb(tmp_path / "clean", server.url, docs=4, standby_in_chain=True)
    _rebuild(clean)
    providers.forget_chains()
    kb = api_kb(tmp_path / "kb", server.url, docs=4, standby_in_chain=True, per_request=4)
    server.fail("slow", times=4, seconds=0)  # the probe and one batch, two requests each ...
    server.fail("status", times=10_000, code=500)  # ... then the primary is gone
    report = _rebuild(kb)
    assert report["spaces"]["primary"]["coverage"] == 1.0
    used = report["spaces"]["primary"]["providers"]
    assert sorted(name.split("@")[0] for name in used) == [f"fake:{MODEL}", f"openai:{MODEL}"]
    assert all(texts > 0 for texts in used.values()), used
    got, want = store_contents(kb.cfg), store_contents(clean.cfg)
    assert got.keys() == want.keys()  # the same points ...
    for pid, (vectors, payload) in got.items():  # ... the same payloads, the same vectors
        assert payload == want[pid][1] and vectors.keys() == want[pid][0].keys()
        for name, blob in vectors.items():
            a, b = (np.frombuffer(x, dtype="<f4") for x in (blob, want[pid][0][name]))
            assert float(a @ b) >= MIN_PROBE_COSINE, (pid, name)


def test_search_during_an_outage_answers_from_the_standby_in_time(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url, query_timeout_s=1)
    _rebuild(kb)
    providers.forget_chains()
    server.fail("hang", times=100, seconds=8)
    started = time.monotonic()
    found = kb.cli_json("search", "Document 1 part 2 topic2")
    took = time.monotonic() - started
    assert (found["space"], found["degraded"]) == ("local", True)
    assert "within search.query_timeout_s = 1 s" in found["reason"]
    assert found["results"][0]["path"] == "doc1.md"
    assert took < 1 + 1.0, took


def test_no_secret_in_any_file_kbguard_writes(tmp_path: Path, server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url)
    outputs = []
    for args in (("rebuild", "--json"), ("status", "--json"), ("verify", "--json"),
                 ("snapshot", "create", "--json"), ("search", "--json", "paragraph")):
        res = kb.cli(*args)
        outputs += [res.stdout, res.stderr]
    server.fail("status", times=10_000, code=401)
    providers.forget_chains()
    (kb.corpus / "new.md").write_text("# New\n\nA new document about secrets and keys.\n")
    res = kb.cli("rebuild")
    outputs += [res.stdout, res.stderr]
    assert all(KEY not in text for text in outputs)
    for path in (kb.root / "state").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_sampled_re_embedding_by_verify_is_in_the_ledger(tmp_path: Path,
                                                          server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url, price=1000.0)
    built = _rebuild(kb)
    res = kb.cli("verify", "--deep", "--json")
    report = json.loads(res.stdout)
    assert res.code == 0, report
    assert report["cost"]["tokens"] > 0
    rows = manifest_sql(kb.cfg.manifest, "SELECT kind, space, sum(tokens), sum(cost_usd) "
                        "FROM ledger GROUP BY 1, 2 ORDER BY 1, 2")
    kinds = {(kind, space): (tokens, usd) for kind, space, tokens, usd in rows}
    assert kinds[("rebuild", "primary")][0] == built["cost"]["by_space"]["primary"]["tokens"]
    assert kinds[("verify", "primary")][0] == report["cost"]["tokens"] - kinds.get(
        ("verify", "local"), (0, 0))[0]
    assert kinds[("verify", "primary")][1] == pytest.approx(
        kinds[("verify", "primary")][0] * 1000.0 / 1e6)
    spend = kb.cli_json("status")["spend"]["total"]
    assert spend["usd"] == pytest.approx(sum(usd for _, usd in kinds.values()))


def test_a_local_model_is_waited_for_however_short_the_query_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # loading a local model is no outage: only a remote provider's wait is cut short
    from kbguard.providers.local import FakeEmbedder

    kb = make_kb(tmp_path, extra="[search]\nquery_timeout_s = 0.05\n")
    assert kb.cli("rebuild").code == 0
    providers.forget_chains()
    slow = FakeEmbedder._embed

    def loading(self: FakeEmbedder, texts: list[str]) -> np.ndarray:
        time.sleep(0.3)  # a model that takes longer to load than the query timeout
        return slow(self, texts)

    monkeypatch.setattr(FakeEmbedder, "_embed", loading)
    found = kb.cli_json("search", "Document 1 part 2 topic2")
    assert (found["space"], found["degraded"]) == ("local", False)
    assert found["results"][0]["path"] == "doc1.md"


def test_a_single_space_in_debt_still_answers_from_what_it_has(
        tmp_path: Path, server: OpenAIServer) -> None:
    kb = api_kb(tmp_path, server.url, per_request=4)
    text = kb.config_path.read_text()
    kb.config_path.write_text(text[:text.index('[[spaces]]\nname = "local"')]
                              + text[text.index("[search]"):])
    server.fail("slow", times=2, seconds=0)  # the first call (two requests) is served ...
    server.fail("status", times=10_000, code=503)  # ... then the API is down
    report = _rebuild(kb, code=4)
    assert 0 < report["spaces"]["primary"]["coverage"] < 1
    written = report["chunks"]["written"]
    assert 0 < written < report["chunks"]["total"]  # a point with no vector at all waits
    server.clear_faults()
    providers.forget_chains()
    found = kb.cli_json("search", "Document 1 part 2 topic2")
    assert found["space"] == "primary" and found["results"]
