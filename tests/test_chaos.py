"""`kbguard chaos`: damage on purpose, only when asked, exactly as much as asked."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kbguard.errors import KbguardError
from kbguard.integrity.chaos import ACTIONS, inject
from tests.kbtest import store_contents


def test_chaos_refuses_without_yes_and_changes_nothing(built_kb) -> None:
    kb = built_kb()
    before = store_contents(kb.cfg)
    res = kb.cli("chaos", "delete-points", "--count", "2")
    assert res.code == 2
    assert "pass --yes to confirm" in res.stderr
    assert store_contents(kb.cfg) == before


def test_chaos_does_what_it_says_and_is_repeatable_by_seed(tmp_path: Path, built_kb) -> None:
    results = []
    for run in ("a", "b"):
        kb = built_kb(tmp_path / run)
        before = store_contents(kb.cfg)
        out = kb.cli_json("chaos", "delete-points", "--count", "3", "--seed", "9", "--yes")
        after = store_contents(kb.cfg)
        assert out["count"] == 3 and len(set(out["point_ids"])) == 3
        assert set(before) - set(after) == set(out["point_ids"])
        results.append(out["point_ids"])
    assert results[0] == results[1]


def test_unknown_action_and_impossible_counts_are_clear_errors(built_kb) -> None:
    kb = built_kb(backend="qdrant")
    res = kb.cli("chaos", "melt", "--yes")
    assert res.code == 2 and "Unknown chaos action 'melt'" in res.stderr
    with pytest.raises(KbguardError, match="cannot damage 100000"):
        inject(kb.cfg, "flip-bits", count=100_000)
    with pytest.raises(KbguardError, match="Qdrant Edge shard folder only"):
        inject(kb.cfg, "flip-file-bits", count=1)


def test_every_action_is_documented() -> None:
    import kbguard.integrity.chaos as chaos

    # the first word of each row of the table in the module docstring, header aside
    documented = set(re.findall(r"^    ([a-z]+(?:-[a-z]+)*) ", chaos.__doc__ or "", re.M))
    assert documented - {"action"} == set(ACTIONS)
