"""`kbguard rebuild --estimate`: exact texts and tokens, nothing written, every scenario."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from datetime import UTC
from pathlib import Path

import pytest

from kbguard.core.lock import kb_lock
from tests.kbtest import KB, api_kb, edit_corpus, long_markdown, make_kb, manifest_sql
from tests.openai_server import OpenAIServer

KEYS = {"texts", "tokens", "cost_usd", "seconds", "basis"}
SCENARIOS = {"incremental", "store_lost", "full_reembed", "restore_latest", "primary_down"}


def _files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _estimate(kb: KB, *args: str) -> dict:
    res = kb.cli("rebuild", "--estimate", "--json", *args)
    assert res.code == 0, (res.stdout, res.stderr, res.exception)
    return json.loads(res.stdout)


def _rebuild(kb: KB) -> dict:
    res = kb.cli("rebuild", "--json")
    assert res.code in (0, 4), (res.stdout, res.stderr, res.exception)
    return json.loads(res.stdout)


def _two_spaces(kb: KB) -> None:
    """A second fake space whose tokenizer counts differently (another model name)."""
    text = kb.config_path.read_text()
    kb.config_path.write_text(text.replace("[store]", (
        '[[spaces]]\nname = "standby"\nprovider = "fake"\nmodel = "fake-other"\ndim = 16\n\n'
        "[store]"), 1))


def test_incremental_texts_and_tokens_are_what_the_next_rebuild_embeds(built_kb) -> None:
    kb = built_kb(docs=4)
    edit_corpus(kb, extra_docs=2)
    kb.write("dup.md", (kb.corpus / "doc0.md").read_text())   # every text already cached
    kb.write("empty.md", "   \n")                              # fails: no text
    before = _files(kb.root / "state")

    est = _estimate(kb)

    assert _files(kb.root / "state") == before     # nothing written, not even a lock file
    assert set(est["scenarios"]) == SCENARIOS
    for sc in est["scenarios"].values():
        assert set(sc) >= KEYS
    assert est["documents"]["added"] == 5 and est["documents"]["changed"] == 1
    assert est["documents"]["removed"] == 1
    inc = est["scenarios"]["incremental"]
    assert inc["texts"] > 0 and inc["seconds"] is not None

    report = _rebuild(kb)
    assert inc["texts"] == report["spaces"]["local"]["texts"] == report["chunks"]["embedded"]
    assert inc["tokens"] == report["cost"]["tokens"]
    assert inc["points"] == {"write": report["chunks"]["written"],
                             "delete": report["chunks"]["deleted"]}
    # and once it has run, there is nothing left to do
    again = _estimate(kb)["scenarios"]["incremental"]
    assert (again["texts"], again["tokens"], again["points"]["write"]) == (0, 0, 0)


def test_each_space_is_counted_with_its_own_tokenizer(built_kb) -> None:
    kb = built_kb()
    _two_spaces(kb)
    edit_corpus(kb)
    est = _estimate(kb)["scenarios"]
    report = kb.cli_json("rebuild", "--full")     # a new space needs the store recreated
    # the run records each provider's throughput, which later estimates predict from
    assert report["throughput"]["standby"]["fake:fake-other"]["texts"] == \
        report["spaces"]["standby"]["texts"]
    assert report["throughput"]["local"]["fake:fake-hash"]["tokens"] == \
        report["cost"]["by_space"]["local"]["tokens"]
    for name in ("local", "standby"):
        assert est["incremental"]["spaces"][name]["texts"] == report["spaces"][name]["texts"]
        assert (est["incremental"]["spaces"][name]["tokens"]
                == report["cost"]["by_space"][name]["tokens"])
    # the standby had nothing cached: it embeds every text, the old space only the new ones
    assert (est["incremental"]["spaces"]["standby"]["texts"]
            > est["incremental"]["spaces"]["local"]["texts"])
    # primary down: the standby embeds its share, the primary's new texts are its debt
    down = est["primary_down"]
    assert down["spaces"]["local"]["debt"] == report["spaces"]["local"]["texts"]
    assert down["texts"] == report["spaces"]["standby"]["texts"]


def test_full_reembed_and_store_lost_cover_the_whole_kb(built_kb) -> None:
    kb = built_kb()
    est = _estimate(kb)["scenarios"]
    full = kb.cli_json("rebuild", "--full")
    assert full["chunks"]["embedded"] == 0       # --full keeps the cache
    texts = len({c for c in _chunk_hashes(kb)})
    assert est["full_reembed"]["texts"] == texts
    assert est["full_reembed"]["spaces"]["local"]["providers"]["fake:fake-hash"]["texts"] == texts
    assert est["store_lost"]["texts"] == 0
    assert est["store_lost"]["points"]["write"] == full["chunks"]["written"]
    # a KB rebuilt once has history: every figure but the snapshot's is measured
    for name in ("incremental", "store_lost", "full_reembed"):
        assert est[name]["seconds"] is not None, est[name]["basis"]
    assert est["restore_latest"]["seconds"] is None
    assert "kbguard snapshot create" in est["restore_latest"]["basis"]
    assert est["primary_down"]["seconds"] is None
    assert "standby" in est["primary_down"]["basis"]


def _chunk_hashes(kb: KB) -> list[str]:
    return [r[0] for r in manifest_sql(kb.cfg.manifest, "SELECT content_hash FROM chunks")]


def test_restore_latest_counts_the_catch_up_after_the_snapshot(built_kb) -> None:
    kb = built_kb()
    assert kb.cli("snapshot", "create", "--json").code == 0
    edit_corpus(kb, extra_docs=1)
    caught_up = _rebuild(kb)["chunks"]["embedded"]
    assert caught_up > 0
    est = _estimate(kb)["scenarios"]["restore_latest"]
    assert est["texts"] == caught_up        # the snapshot's cache lacks what came after it
    assert est["points"]["restore"] > 0

    restored = kb.cli("restore", "--latest", "--yes", "--json")
    assert restored.code == 0, restored.stdout + restored.stderr
    catch_up = json.loads(restored.stdout)["catch_up"]
    assert catch_up["chunks"]["embedded"] == est["texts"]
    assert catch_up["chunks"]["written"] == est["points"]["write"]


def test_a_kb_never_built_is_estimated_without_creating_anything(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=3)
    est = _estimate(kb)
    assert not (tmp_path / "state").exists()
    inc = est["scenarios"]["incremental"]
    assert inc["seconds"] is None and "--calibrate" in inc["basis"]
    # every document was parsed for the estimate just now: that pace prices a full re-embed
    full = est["scenarios"]["full_reembed"]
    assert full["stages"]["parse"] is not None and full["stages"]["parse"] > 0
    assert "parse at the pace measured now" in full["basis"]
    assert "no document parsed" not in full["basis"]
    report = _rebuild(kb)
    assert inc["texts"] == report["chunks"]["embedded"]
    assert inc["tokens"] == report["cost"]["tokens"]


def test_calibrate_measures_what_has_no_history(tmp_path: Path) -> None:
    kb = make_kb(tmp_path / "kb", docs=2)
    est = _estimate(kb, "--calibrate")
    assert not (kb.root / "state").exists()
    assert est["calibration"]["fake:fake-hash"]["texts"] > 0
    assert est["calibration"]["store"]["points"] > 0
    inc = est["scenarios"]["incremental"]
    assert inc["seconds"] is not None and "calibrated now" in inc["basis"]
    text = kb.cli("rebuild", "--estimate", "--calibrate").stdout
    assert re.search(r"calibrated fake:fake-hash: [\d,]+ texts, [\d,]+ tokens in ", text), text
    assert re.search(r"calibrated store: 512 points written in ", text), text


def test_api_cost_is_the_price_times_the_tokens(tmp_path: Path, server: OpenAIServer) -> None:
    server.report_usage = False     # then the ledger counts with cl100k, as the estimate does
    kb = api_kb(tmp_path, server.url, price=0.5)
    est = _estimate(kb)["scenarios"]["incremental"]
    assert not server.embedding_requests     # estimating calls no API
    primary = est["spaces"]["primary"]
    assert primary["provider"].startswith("openai")
    assert primary["cost_usd"] == pytest.approx(primary["tokens"] * 0.5 / 1_000_000)
    report = _rebuild(kb)
    assert primary["tokens"] == report["cost"]["by_space"]["primary"]["tokens"]
    assert est["cost_usd"] == pytest.approx(report["cost"]["usd"], rel=1e-6)


def test_estimate_takes_no_lock_but_waits_for_none(built_kb) -> None:
    kb = built_kb()
    with kb_lock(kb.cfg.manifest, "rebuild"):
        res = kb.cli("rebuild", "--estimate")
    assert res.code == 3
    assert "rebuild" in res.stderr


def test_calibrate_alone_is_a_usage_error(built_kb) -> None:
    kb = built_kb()
    res = kb.cli("rebuild", "--calibrate")
    assert res.code == 2 and "--estimate" in res.stderr


def test_the_text_output_names_every_scenario(built_kb) -> None:
    kb = built_kb()
    res = kb.cli("rebuild", "--estimate")
    assert res.code == 0, res.stderr
    for name in SCENARIOS:
        assert name in res.stdout
    assert "nothing written" in res.stdout


def test_a_drill_that_restored_a_copy_times_the_restore(built_kb) -> None:
    """Never restored here, but a drill restored a scratch copy of this KB: its restore step
    is the measurement, and the basis names it."""
    from datetime import datetime

    from kbguard.manifest import Manifest

    kb = built_kb()
    assert kb.cli("snapshot", "create").code == 0
    before = _estimate(kb)["scenarios"]["restore_latest"]
    assert before["seconds"] is None and "no restore measured yet" in before["basis"]
    at = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    with Manifest.open(kb.cfg.manifest) as m:
        m.drills.record({"scenario": "manifest-lost", "started_at": at, "finished_at": at,
                         "status": "passed", "healthy": True, "recovery_s": 9.0,
                         "steps": [{"command": "kbguard verify", "seconds": 0.5},
                                   {"command": "kbguard restore --latest --yes", "seconds": 2.5},
                                   {"command": "kbguard verify", "seconds": 6.0}]})
    after = _estimate(kb)["scenarios"]["restore_latest"]
    assert after["stages"]["restore"] == 2.5
    assert "2.5 s in the manifest-lost drill of 2026-11-29" in after["basis"]
    assert after["seconds"] is not None and after["seconds"] >= 2.5


def test_a_lost_manifest_prices_the_restore_a_plain_rebuild_would_refuse(built_kb) -> None:
    kb = built_kb()
    assert kb.cli("snapshot", "create").code == 0
    edit_corpus(kb)
    kb.cfg.manifest.unlink()

    est = _estimate(kb)
    inc = est["scenarios"]["incremental"]
    assert "`kbguard restore --latest`" in inc["refused"]
    assert est["recommended"] == "restore_latest"
    restore = est["scenarios"]["restore_latest"]
    assert restore["refused"] is None and restore["points"]["restore"] > 0
    text = kb.cli("rebuild", "--estimate").stdout
    assert re.search(r"incremental .* refused\n", text), text
    assert "recommended restore_latest" in text

    # as the estimate said: the rebuild is refused, and the restore's catch-up embeds and
    # writes what was priced
    refused = kb.cli("rebuild")
    assert refused.code == 2 and "kbguard restore --latest" in refused.stderr
    restored = kb.cli_json("restore", "--latest", "--yes")
    assert restored["catch_up"]["chunks"]["embedded"] == restore["texts"] > 0
    assert restored["catch_up"]["chunks"]["written"] == restore["points"]["write"]


def test_a_lost_manifest_with_only_the_store_left_recommends_the_full_rebuild(built_kb) -> None:
    kb = built_kb()
    kb.cfg.manifest.unlink()
    est = _estimate(kb)
    assert "`kbguard rebuild --full`" in est["scenarios"]["incremental"]["refused"]
    assert est["recommended"] == "full_reembed"
    assert kb.cli("rebuild").code == 2


def test_a_kb_with_its_manifest_recommends_the_incremental_rebuild(built_kb) -> None:
    est = _estimate(built_kb())
    assert est["recommended"] == "incremental"
    assert all(sc["refused"] is None for sc in est["scenarios"].values())


@pytest.mark.slow
def test_an_outage_does_not_move_the_time_estimate(tmp_path: Path, server: OpenAIServer) -> None:
    """Two copies of one KB share their history but for one run: a normal one in the first, in
    the second one where the primary's API answers some calls 1.5 s late and hangs on others
    until the chain fails over to the standby of the same model. Time spent waiting is not
    throughput: the two estimates of a full re-embed agree."""
    server.latency_s = 0.05                    # a normal call: latency-bound, steady
    normal = api_kb(tmp_path / "normal", server.url, per_request=8, standby_in_chain=True)
    for i in range(3):
        normal.write(f"first/extra{i}.md", long_markdown(f"First {i}", sections=3))
    _rebuild(normal)
    edit_corpus(normal, extra_docs=3)
    _rebuild(normal)
    outage = KB(tmp_path / "outage", tmp_path / "outage" / "corpus",
                tmp_path / "outage" / "kbguard.toml")
    shutil.copytree(normal.root, outage.root)
    outage.config_path.write_text(normal.config_path.read_text().replace(
        normal.corpus.as_posix(), outage.corpus.as_posix()))
    for kb in (normal, outage):
        for i in range(8):
            kb.write(f"later/doc{i}.md", long_markdown(f"Later {i}", sections=3))

    _rebuild(normal)
    before = len(server.embedding_requests)
    server.fail("shuffled", times=4)           # answered in time (in another order)
    server.fail("slow", times=2, seconds=1.5)  # answered, late
    server.fail("hang", times=3, seconds=3)    # no answer within timeout_s: failed over
    report = _rebuild(outage)
    assert [r.fault for r in server.embedding_requests[before:]][:9] == \
        ["shuffled"] * 4 + ["slow"] * 2 + ["hang"] * 3
    assert len(report["spaces"]["primary"]["providers"]) == 2    # the standby took over
    assert report["stages"]["embed"] > 6                          # 3 s late + 3 x 2 s timeouts

    calm, hit = (_estimate(kb)["scenarios"]["full_reembed"] for kb in (normal, outage))
    assert calm["texts"] == hit["texts"] and calm["tokens"] == hit["tokens"]
    api = next(p for p in calm["spaces"]["primary"]["providers"] if p.startswith("openai"))
    for got, want in ((hit["spaces"]["primary"]["providers"][api]["seconds"],
                       calm["spaces"]["primary"]["providers"][api]["seconds"]),
                      (hit["stages"]["embed"], calm["stages"]["embed"])):
        assert want / 1.4 <= got <= want * 1.4, (got, want, hit["basis"])
