"""`kbguard verify`: each injected fault is reported as exactly its class, and `--repair` heals it.

Every test builds a real KB (real DuckDB manifest, real store under tmp_path, the fake embedder),
damages it with `kbguard.integrity.chaos`, and reads the verdict through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest

from benchmarks.synthetic import fill_synthetic
from kbguard.integrity.chaos import inject
from kbguard.integrity.verify import FINDINGS
from kbguard.manifest import Manifest
from kbguard.providers import chain_for
from tests.kbtest import KB, long_markdown, make_kb, manifest_sql, store_contents

CANARY = """
[[canaries]]
query = "Document 1 part 2 topic2"
expect = ["doc1.md"]
k = 3
"""


def verify(kb: KB, *args: str) -> tuple[int, dict]:
    res = kb.cli("verify", "--json", *args)
    assert res.code in (0, 1, 2), (res.code, res.stdout, res.stderr, res.exception)
    return res.code, json.loads(res.stdout)


def nonzero(report: dict) -> dict[str, int]:
    return {k: v["count"] for k, v in report["findings"].items() if v["count"]}


def embedded(kb: KB) -> int:
    return sum(chain_for(s).texts_embedded for s in kb.cfg.spaces)


def repair(kb: KB, *args: str) -> dict:
    before = embedded(kb)
    res = kb.cli("verify", "--repair", "--json", *args)
    assert res.code == 0, (res.code, res.stdout, res.stderr, res.exception)
    report = json.loads(res.stdout)
    assert report["healthy"] and nonzero(report) == {}
    report["embed_calls"] = embedded(kb) - before
    return report


# -- a healthy KB --------------------------------------------------------------------------

def test_healthy_kb_reports_every_class_at_zero(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend, extra=CANARY)
    code, report = verify(kb)
    assert code == 0
    assert report["healthy"] is True
    assert set(report["findings"]) == set(FINDINGS)
    assert all(f["count"] == 0 for f in report["findings"].values())
    assert report["findings"]["canary_failures"]["checked"] is True
    assert report["findings"]["embedding_drift"]["checked"] is False  # no --deep/--sample
    assert report["points_checked"] == report["manifest_points"] > 0
    assert report["run_id"] is not None


def test_human_output_and_exit_code_on_findings(built_kb) -> None:
    kb = built_kb()
    inject(kb.cfg, "delete-points", count=2, seed=1)
    res = kb.cli("verify")
    assert res.code == 1
    assert "2 findings" in res.stdout
    assert "missing_points     2" in res.stdout
    assert "fix: `kbguard verify --repair` writes them from the embedding cache." in res.stdout


# -- one class per fault, exact counts, then repair with no embedding calls ----------------

CASES = [
    # (chaos action, count, finding, expected count)
    ("delete-points", 3, "missing_points", 3),
    ("add-orphans", 2, "orphan_points", 2),
    ("stale-points", 2, "stale_points", 2),
    ("flip-bits", 4, "vector_corruption", 4),
    ("wrong-model", 3, "wrong_space", 3),
    ("nan-vectors", 2, "invalid_vectors", 2),
    ("zero-vectors", 2, "invalid_vectors", 2),
    ("damage-payloads", 3, "payload_damage", 3),
    ("drift-config", 1, "config_drift", 1),
]


@pytest.mark.parametrize("action,n,finding,expected", CASES, ids=[c[0] for c in CASES])
def test_each_fault_is_exactly_its_class_and_repair_heals_it(
        built_kb, backend: str, action: str, n: int, finding: str, expected: int) -> None:
    kb = built_kb(backend=backend)
    healthy_points = store_contents(kb.cfg)
    inject(kb.cfg, action, count=n, seed=7)

    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {finding: expected}
    examples = report["findings"][finding]["examples"]
    assert len(examples) == min(expected, 5)
    if finding not in ("config_drift",):
        assert all("point_id" in e and "path" in e for e in examples)

    fixed = repair(kb)
    assert fixed["embed_calls"] == 0
    assert fixed["repair"]["before"]["counts"][finding] == expected
    assert store_contents(kb.cfg) == healthy_points
    assert verify(kb)[0] == 0


def test_dropped_collection_is_all_points_missing_and_refilled_from_cache(
        built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    healthy_points = store_contents(kb.cfg)
    inject(kb.cfg, "drop-collection")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"missing_points": len(healthy_points)}
    fixed = repair(kb)
    assert fixed["embed_calls"] == 0
    assert store_contents(kb.cfg) == healthy_points


def test_file_level_bit_flips_in_an_edge_shard_are_detected(built_kb) -> None:
    kb = built_kb(backend="edge")
    healthy_points = store_contents(kb.cfg)
    result = inject(kb.cfg, "flip-file-bits", count=6, seed=3)
    assert result.count == 6
    damaged = store_contents(kb.cfg)
    changed = {pid for pid in healthy_points if damaged[pid] != healthy_points[pid]}
    assert changed, "the flips must land in stored vectors"

    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"vector_corruption": len(changed)}
    assert {e["point_id"] for e in report["findings"]["vector_corruption"]["examples"]} <= changed
    fixed = repair(kb)
    assert fixed["embed_calls"] == 0
    assert store_contents(kb.cfg) == healthy_points


@pytest.mark.parametrize("action", ["damage-cache", "drop-cache-rows"])
def test_damaged_cache_rows_are_manifest_damage_and_only_they_are_re_embedded(
        built_kb, backend: str, action: str) -> None:
    kb = built_kb(backend=backend)
    healthy_points = store_contents(kb.cfg)
    inject(kb.cfg, action, count=3, seed=5)
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"manifest_damage": 3}
    fixed = repair(kb)
    assert fixed["embed_calls"] == 3
    assert fixed["repair"]["actions"]["cache_rows_replaced"] == 3
    assert store_contents(kb.cfg) == healthy_points


def test_a_store_that_cannot_be_opened_is_a_finding_and_repair_refuses(
        built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    inject(kb.cfg, "truncate-store")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"store_unreadable": 1}
    assert report["findings"]["missing_points"]["checked"] is False
    res = kb.cli("verify", "--repair")
    assert res.code == 2
    assert "this is a restore" in res.stderr
    assert "kbguard restore --latest" in res.stderr


def test_an_unreadable_manifest_is_a_finding_and_repair_refuses(built_kb) -> None:
    kb = built_kb()
    inject(kb.cfg, "damage-manifest")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"manifest_damage": 1}
    assert "cannot be read" in report["findings"]["manifest_damage"]["examples"][0]["error"]
    res = kb.cli("verify", "--repair")
    assert res.code == 2
    assert "this is a restore" in res.stderr


def test_a_damaged_manifest_in_a_folder_named_like_a_lock_is_still_a_finding(
        built_kb, tmp_path: Path) -> None:
    """Damage is told from a busy manifest by what the error carries, not by its text, which
    quotes the file's path."""
    kb = built_kb(tmp_path / "padlock")
    inject(kb.cfg, "damage-manifest")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"manifest_damage": 1}
    assert report["findings"]["manifest_damage"]["examples"][0]["error"].startswith(
        "the DuckDB file cannot be read: ")


def test_a_table_that_fails_to_read_mid_check_keeps_what_was_found_before(built_kb) -> None:
    kb = built_kb()
    [(runs,)] = manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM runs")
    [(points,)] = manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM chunks")
    # read by the comparison of the points only, after the cache, the corpus and the store's count
    manifest_sql(kb.cfg.manifest, "ALTER TABLE chunks RENAME COLUMN section TO heading",
                 write=True)
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"manifest_damage": 1}
    error = report["findings"]["manifest_damage"]["examples"][0]["error"]
    assert error.startswith("the DuckDB file cannot be read: Binder Error: "), error
    assert report["store_points"] == points   # counted before the manifest failed
    assert "the check is not recorded: the manifest cannot be read" in report["notes"]
    assert manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM runs") == [(runs,)]


def test_a_corpus_change_since_the_build_is_reported_and_left_to_rebuild(built_kb) -> None:
    kb = built_kb()
    kb.write("doc1.md", "# Changed\n\nNew text entirely.\n")
    kb.write("new.md", "# New\n\nA new document.\n")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"corpus_changed": 2}
    changes = {e["path"]: e["change"] for e in report["findings"]["corpus_changed"]["examples"]}
    assert changes == {"doc1.md": "changed", "new.md": "added"}
    kb.cli_json("rebuild")
    assert verify(kb)[0] == 0


def test_wrong_model_everywhere_is_seen_only_by_fresh_embeddings(built_kb) -> None:
    kb = built_kb()
    healthy_points = store_contents(kb.cfg)
    inject(kb.cfg, "poison-cache", count=3, seed=2)
    # the cache and the store agree, so checksums and comparisons pass
    assert verify(kb)[0] == 0
    code, report = verify(kb, "--deep")
    assert code == 1
    assert nonzero(report) == {"embedding_drift": 3}
    code, report = verify(kb, "--sample", "1000")
    assert code == 1 and nonzero(report) == {"embedding_drift": 3}
    fixed = repair(kb, "--deep")
    assert fixed["repair"]["actions"]["cache_rows_replaced"] == 3
    assert store_contents(kb.cfg) == healthy_points


def test_sample_re_embeds_exactly_n_points(built_kb) -> None:
    kb = built_kb()
    before = embedded(kb)
    code, report = verify(kb, "--sample", "5")
    assert code == 0
    assert report["sampled"] == 5
    assert embedded(kb) - before == 5


def test_a_failing_canary_is_reported(built_kb) -> None:
    kb = built_kb(extra=CANARY + """
[[canaries]]
query = "something about nothing"
expect = ["absent.md"]
k = 3
""")
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {"canary_failures": 1}
    assert report["findings"]["canary_failures"]["examples"][0]["missing"] == ["absent.md"]


# -- verify only reads ---------------------------------------------------------------------

def _tree(path: Path) -> dict[str, str]:
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def _kb_content(kb: KB) -> dict[str, list]:
    return {t: manifest_sql(kb.cfg.manifest, f"SELECT * FROM {t} ORDER BY ALL")
            for t in ("meta", "documents", "chunks", "embeddings", "store_state")}


def test_verify_changes_neither_store_nor_manifest_content(built_kb, backend: str) -> None:
    kb = built_kb(backend=backend)
    inject(kb.cfg, "flip-bits", count=2, seed=1)  # findings too: still nothing may change
    # Qdrant Edge rewrites its config file the first time it loads a shard it created; after
    # that a load changes no byte. A no-op rebuild does that first load.
    kb.cli_json("rebuild")
    store_before, content_before = _tree(kb.cfg.store_path), _kb_content(kb)
    contents_before = store_contents(kb.cfg)
    [(runs,)] = manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM runs")
    for args in ((), ("--deep",), ("--sample", "3")):
        assert verify(kb, *args)[0] == 1
    assert _tree(kb.cfg.store_path) == store_before
    assert _kb_content(kb) == content_before
    assert store_contents(kb.cfg) == contents_before
    assert manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM runs") == [(runs + 3,)]
    assert manifest_sql(kb.cfg.manifest, "SELECT count(*) FROM findings") == [
        (3 * len(FINDINGS),)]


SECOND_SPACE = """
[[spaces]]
name = "second"
provider = "fake"
model = "fake-hash-b"
dim = 24
"""


@pytest.mark.parametrize("action,n,finding", [("flip-bits", 4, "vector_corruption"),
                                              ("wrong-model", 3, "wrong_space"),
                                              ("drop-cache-rows", 2, "manifest_damage")])
def test_the_cache_joined_in_several_passes_gives_the_same_verdict(
        built_kb, monkeypatch: pytest.MonkeyPatch, action: str, n: int,
        finding: str) -> None:
    import kbguard.integrity.verify

    kb = built_kb(extra=SECOND_SPACE)
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        cache_bytes = sum(4 * s.dim * m.cache.count(s.space_id) for s in kb.cfg.spaces)
    monkeypatch.setattr(kbguard.integrity.verify, "JOIN_BYTES", cache_bytes // 4)  # four passes, not one
    code, report = verify(kb)
    assert code == 0 and report["points_checked"] == report["manifest_points"]
    inject(kb.cfg, action, count=n, seed=5)
    code, report = verify(kb)
    assert code == 1
    assert nonzero(report) == {finding: n}


def test_a_cache_row_many_points_share_is_one_finding_however_the_points_are_batched(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kbguard.integrity.verify

    kb = make_kb(tmp_path, docs=0)
    for i in range(6):  # six copies: every text is cached once and used by six points
        kb.write(f"copy{i}.md", long_markdown("Same", sections=2))
    kb.cli_json("rebuild")
    monkeypatch.setattr(kbguard.integrity.verify, "BATCH", 4)  # the copies of a text land in many batches
    inject(kb.cfg, "drop-cache-rows", count=2, seed=1)
    code, report = verify(kb, "--deep")
    assert code == 1
    assert nonzero(report) == {"manifest_damage": 2}
    assert report["points_checked"] == report["manifest_points"]
    assert report["sampled"] == report["manifest_points"] - 12  # all but the points of the 2 rows
    fixed = repair(kb, "--deep")
    assert fixed["repair"]["actions"]["cache_rows_replaced"] == 2
    assert fixed["repair"]["actions"]["points_rewritten"] == 12


# -- history, status, metrics, lock --------------------------------------------------------

def test_every_check_is_recorded_and_status_shows_the_last(built_kb) -> None:
    kb = built_kb()
    inject(kb.cfg, "delete-points", count=1, seed=4)
    code, report = verify(kb)
    assert code == 1
    rows = dict(manifest_sql(kb.cfg.manifest, "SELECT finding, count FROM findings "
                             "WHERE run_id = ?", [report["run_id"]]))
    [(status,)] = manifest_sql(kb.cfg.manifest, "SELECT status FROM runs WHERE run_id = ?",
                               [report["run_id"]])
    assert rows == {name: (1 if name == "missing_points" else 0) for name in FINDINGS}
    assert status == "findings"
    st = kb.cli_json("status")
    assert st["last_check"]["run_id"] == report["run_id"]
    assert st["last_check"]["findings"] == {"missing_points": 1}
    text = kb.cli("status").stdout
    assert "last check" in text and "missing_points 1" in text


def _prom_sample(text: str, name: str) -> str:
    """The value of the one sample of ``name`` for KB testkb: the whole line, or the test fails."""
    lines = [line for line in text.splitlines() if line.startswith(f"{name}{{")]
    assert len(lines) == 1, (name, lines)
    match = re.fullmatch(rf'{name}\{{kb="testkb"\}} (\S+)', lines[0])
    assert match, lines[0]
    return match.group(1)


def test_prom_file_is_written_atomically_with_every_class(tmp_path: Path, built_kb) -> None:
    kb = built_kb()
    prom = tmp_path / "metrics" / "kbguard.integrity.prom"
    prom.parent.mkdir()
    t0 = time.time()
    assert kb.cli("verify", "--prom-file", str(prom)).code == 0
    t1 = time.time()
    text = prom.read_text()
    for name in FINDINGS:
        assert f'kbguard_verify_findings{{kb="testkb",finding="{name}"}} 0\n' in text
    assert _prom_sample(text, "kbguard_verify_up") == "1"
    assert int(_prom_sample(text, "kbguard_verify_points_checked")) == 27
    # Unix seconds with at most three decimals, from the moment the check started
    last_text = _prom_sample(text, "kbguard_verify_last_success_timestamp_seconds")
    assert re.fullmatch(r"\d{10}(\.\d{1,3})?", last_text), last_text
    last = float(last_text)
    assert t0 - 0.001 <= last <= t1
    assert float(_prom_sample(text, "kbguard_verify_last_run_timestamp_seconds")) == last
    assert [p.name for p in prom.parent.iterdir()] == ["kbguard.integrity.prom"]  # no temp file left

    kb.cfg.manifest.unlink()  # now it cannot check: the last success time must survive
    t2 = time.time()
    assert kb.cli("verify", "--prom-file", str(prom)).code == 2
    text = prom.read_text()
    assert _prom_sample(text, "kbguard_verify_up") == "0"
    assert _prom_sample(text, "kbguard_verify_last_success_timestamp_seconds") == last_text
    assert float(_prom_sample(text, "kbguard_verify_last_run_timestamp_seconds")) >= t2 - 0.001


def test_no_manifest_means_could_not_check(tmp_path: Path) -> None:
    kb = make_kb(tmp_path)
    res = kb.cli("verify")
    assert res.code == 2
    assert "has not been built yet" in res.stderr


def test_verify_does_not_wait_for_a_busy_kb(built_kb) -> None:
    from kbguard.core.lock import kb_lock

    kb = built_kb()
    with kb_lock(kb.cfg.manifest, "rebuild"):
        res = kb.cli("verify")
    assert res.code == 3
    assert "busy" in res.stderr


# -- scale ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_healthy_10k_point_kb_never_reports_a_finding(tmp_path: Path) -> None:
    kb = make_kb(tmp_path, docs=0, dim=32)
    assert fill_synthetic(kb.cfg, points=10_000, words=12) == 10_000
    [(text,)] = manifest_sql(
        kb.cfg.manifest, "SELECT text FROM chunks WHERE path = 'synthetic/doc000042.md' AND seq = 7")
    with open(kb.config_path, "a") as fh:  # a canary that must find that chunk's document
        fh.write(f'\n[[canaries]]\nquery = """{text}"""\nexpect = ["synthetic/doc000042.md"]\n')
    for args in ((), (), ("--sample", "200")):
        code, report = verify(kb, *args)
        assert code == 0, nonzero(report)
        assert report["points_checked"] == 10_000
        assert report["findings"]["canary_failures"]["checked"] is True
