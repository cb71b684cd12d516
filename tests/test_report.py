"""`kbguard report`: one HTML page, opened in a real headless browser with the network cut off,
whose four charts must have drawn every point of the KB's history."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kbguard.manifest import Manifest, now
from kbguard.operations.report import (
    EMPTY,
    NO_RECOVERY,
    ReportData,
    _findings_chart,
    _recovery_chart,
    _size_chart,
)
from tests.kbtest import KB, manifest_sql

CHARTS = ("recovery", "findings", "spend", "size")
NASTY_SCENARIO = "<b>bold</b> lost"
NASTY_MESSAGE = "needs a standby </td><script>document.title='pwned'</script><img src=x>"


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


DRILLS = [
    # scenario, started, status, recovery_s, objective_s, message
    ("store-lost", _utc(2026, 1, 1, 3), "passed", 12.5, 900.0, None),
    ("manifest-lost", _utc(2026, 1, 2, 3), "passed", 40.0, 900.0, None),
    ("everything-lost", _utc(2026, 1, 3, 3), "missed", 4000.0, 3600.0, "slower than 3600 s"),
    ("provider-down", _utc(2026, 1, 4, 3), "not-possible", None, 900.0, NASTY_MESSAGE),
    (NASTY_SCENARIO, _utc(2026, 1, 5, 3), "passed", 20.0, 900.0, None),
    ("store-lost", _utc(2026, 1, 8, 3), "passed", 9.0, 900.0, "ok"),
]


def _record_drills(kb: KB) -> None:
    with Manifest.open(kb.cfg.manifest) as m:
        for scenario, started, status, recovery, objective, message in DRILLS:
            m.drills.record({
                "scenario": scenario, "started_at": started, "finished_at": started,
                "status": status, "healthy": status != "failed", "detection_s": 1.5,
                "recovery_s": recovery, "objective_s": objective, "message": message})


def _record_old_spend(kb: KB) -> None:
    """A priced API month long ago, beside the fake provider's free tokens of this month."""
    manifest_sql(kb.cfg.manifest, "INSERT INTO ledger VALUES (NULL, 'rebuild', 'local', 'x', "
                 "'openai:small', 100, 20000, 3, 1.0, 0.42, ?)", [_utc(2025, 1, 15, 12)],
                 write=True)


def _browser_dom(page: Path, tmp_path: Path) -> str:
    """The page's DOM after a headless Chromium ran its scripts, with every host name
    unresolvable: a page that needed the network would draw nothing."""
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is not installed: run `make browser` (as root)"
    res = subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--window-size=1200,2000", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "</html>" in res.stdout, res.stderr[-2000:]
    return res.stdout


def _sections(dom: str) -> dict[str, str]:
    parts = dom.split('<section id="')[1:]
    return {p[:p.index('"')]: p for p in parts}


def _drawn(section: str) -> dict[str, object]:
    """What Plotly drew in a chart: its SVG roots, its markers and bars, trace kinds, labels."""
    return {"svg": section.count('class="main-svg"'),
            "points": section.count('class="point"'),
            "traces": re.findall(r'class="trace (scatter|bars)', section),
            "legend": re.findall(r'class="legendtext"[^>]*>(.*?)</text>', section),
            "annotations": re.findall(r'class="annotation-text"[^>]*>(.*?)</text>', section)}


def _no_remote_resource(page: str) -> None:
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed)\b[^>]*>", page, re.IGNORECASE)
    assert tags, "the page has no tag at all: nothing was checked"
    for tag in tags:
        assert not re.search(r"\b(src|href)\s*=", tag, re.IGNORECASE), tag


def test_report_draws_every_chart_offline(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    kb.write("added.md", "# Added\n\nA new page about otters and their dams.\n")
    assert kb.cli("rebuild").code == 0
    assert kb.cli("verify").code == 0
    kb.write("added.md", "# Added\n\nOtters changed their minds.\n")
    assert kb.cli("verify").code == 1
    _record_drills(kb)
    _record_old_spend(kb)
    with Manifest.open(kb.cfg.manifest, read_only=True) as m:
        chunks = m.chunks.count()

    out = tmp_path / "report.html"
    data = kb.cli_json("report", "-o", str(out))
    assert data["path"] == str(out)
    assert data["charts"] == {"recovery": 5, "findings": 2, "spend": 2, "size": 2}
    assert data["empty"] == {}
    assert [d["scenario"] for d in data["drills"]] == [d[0] for d in DRILLS]
    assert data["drills"][0]["started_at"] == "2026-01-01 03:00:00"
    assert data["objectives"] == {"single_failure_s": 900.0, "full_rebuild_s": 3600.0}
    assert [c["findings"]["corpus_changed"] for c in data["checks"]] == [0, 1]
    assert [c["status"] for c in data["checks"]] == ["ok", "findings"]
    month = now().strftime("%Y-%m")
    assert [(s["month"], s["provider"], s["cost_usd"]) for s in data["spend"]] == [
        ("2025-01", "openai:small", 0.42), (month, "fake:fake-hash", 0.0)]
    assert [(s["kind"], s["documents"]) for s in data["sizes"]] == [("rebuild", 3),
                                                                    ("rebuild", 4)]
    assert data["sizes"][-1]["chunks"] == chunks
    assert data["bytes"] == out.stat().st_size
    assert out.stat().st_mode & 0o777 == 0o644

    res = kb.cli("report", "-o", str(out))
    assert res.code == 0, res.stderr
    assert re.fullmatch(rf"Report of KB 'testkb' written to {re.escape(str(out))} "
                        r"\(\d+\.\d MB\)\.\n", res.stdout)
    page = out.read_text()
    _no_remote_resource(page)
    assert page.count("<script>") == 5   # plotly.js once, then one small script per chart
    for raw in (NASTY_SCENARIO, NASTY_MESSAGE, "<img"):
        assert raw not in page
    assert "&lt;/td&gt;&lt;script&gt;document.title=&#x27;pwned&#x27;" in page

    dom = _browser_dom(out, tmp_path)
    assert "<title>kbguard report: testkb</title>" in dom
    assert "<img" not in dom and "pwned" not in dom.split("</title>")[0]
    drawn = {name: _drawn(section) for name, section in _sections(dom).items()}
    assert list(drawn) == list(CHARTS)
    for name in CHARTS:
        assert drawn[name]["svg"] >= 1, f"the {name} chart was not drawn"
    # recovery: one marker per measured drill, a line per scenario, one per objective
    assert drawn["recovery"]["points"] == 5
    assert drawn["recovery"]["traces"] == ["scatter"] * 4
    assert sorted(drawn["recovery"]["legend"]) == sorted(
        ["everything-lost", "manifest-lost", "store-lost", "&lt;b&gt;bold&lt;/b&gt; lost"])
    assert drawn["recovery"]["annotations"] == [
        "objective 900 s (15.0 min): &lt;b&gt;bold&lt;/b&gt; lost, manifest-lost, store-lost",
        "objective 3600 s (60.0 min): everything-lost"]
    # findings: a bar per check of each class ever found, and the total's markers
    assert drawn["findings"]["points"] == 2 + 2
    assert drawn["findings"]["traces"] == ["bars", "scatter"]
    assert drawn["findings"]["legend"] == ["total findings", "corpus_changed"]
    # spend: a bar per month of the one space, and the tokens' markers
    assert drawn["spend"]["points"] == 2 + 2
    assert drawn["spend"]["traces"] == ["bars", "scatter"]
    # size: chunks and documents after each of the two rebuilds
    assert drawn["size"]["points"] == 2 + 2
    assert drawn["size"]["legend"] == ["chunks", "documents"]
    # the tables under the charts hold the latest numbers, printable
    sections = _sections(dom)
    assert "<td>provider-down</td><td>2026-01-04 03:00:00</td><td>not-possible</td>" in \
        sections["recovery"]
    assert '<td>store-lost</td><td>2026-01-08 03:00:00</td><td>passed</td><td class="num">' \
        '1.5 s</td><td class="num">9.0 s</td><td class="num">900 s (15.0 min)</td>' \
        "<td>2 of 2</td><td>ok</td>" in sections["recovery"]
    assert '<td>corpus_changed</td><td class="num">1</td><td>1 of 2</td>' in sections["findings"]
    assert "to date: $0.4200" in sections["spend"]
    assert f'<td class="num">{chunks:,}</td>' in sections["size"]


def test_a_kb_without_history_says_what_fills_each_chart(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    out = tmp_path / "built.html"
    res = kb.cli("report", "-o", str(out))
    assert res.code == 0, res.stderr
    assert res.stdout.splitlines()[1:] == [f"  recovery: {EMPTY['recovery']}",
                                           f"  findings: {EMPTY['findings']}"]
    sections = _sections(_browser_dom(out, tmp_path))
    for name in ("recovery", "findings"):
        assert 'class="main-svg"' not in sections[name]
        assert f'<p class="empty" id="empty-{name}">' in sections[name]
    assert "No drill yet: run <code>kbguard drill</code> to rehearse" in sections["recovery"]
    assert "No check yet: run <code>kbguard verify</code>" in sections["findings"]
    for name in ("spend", "size"):
        assert _drawn(sections[name])["points"] == 2, name

    # a manifest with no run at all: four notes and no script, so a page of a few KB
    manifest = kb.cfg.manifest
    shutil.rmtree(manifest.parent)   # the manifest and the store
    Manifest.open(manifest, kb="testkb").close()
    data = kb.cli_json("report", "-o", str(tmp_path / "bare.html"))
    assert data["charts"] == dict.fromkeys(CHARTS, 0)
    assert data["empty"] == EMPTY
    page = (tmp_path / "bare.html").read_text()
    assert "<script" not in page and len(page) < 10_000
    sections = _sections(_browser_dom(tmp_path / "bare.html", tmp_path))
    for name in CHARTS:
        assert f'<p class="empty" id="empty-{name}">' in sections[name]
        assert "<table" not in sections[name]


def test_drills_that_measured_no_recovery_say_so(built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    with Manifest.open(kb.cfg.manifest) as m:
        m.drills.record({"scenario": "provider-down", "started_at": _utc(2026, 2, 1),
                         "finished_at": _utc(2026, 2, 1), "status": "not-possible",
                         "healthy": True, "message": "no standby space"})
    data = kb.cli_json("report", "-o", str(tmp_path / "r.html"))
    assert data["charts"]["recovery"] == 0
    assert data["empty"]["recovery"] == NO_RECOVERY
    page = (tmp_path / "r.html").read_text()
    assert "<td>provider-down</td><td>2026-02-01 00:00:00</td><td>not-possible</td>" in page


def test_default_output_is_named_after_the_kb_in_the_current_folder(
        built_kb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kb = built_kb(tmp_path / "kb")
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    res = kb.cli("report")
    assert res.code == 0, res.stderr
    assert [p.name for p in here.iterdir()] == ["testkb-report.html"]


def test_bad_output_and_missing_manifest_are_refused_and_nothing_is_written(
        built_kb, tmp_path: Path) -> None:
    kb = built_kb(tmp_path / "kb")
    res = kb.cli("report", "-o", str(tmp_path / "nowhere" / "r.html"))
    assert res.code == 2
    assert res.stderr.replace("\n", "") == (
        f"Error: The report output {tmp_path}/nowhere/r.html: the folder {tmp_path}/nowhere "
        "does not exist, and kbguard does not create it. Create it first, or choose another "
        "file with -o.")
    assert not (tmp_path / "nowhere").exists()

    res = kb.cli("report", "-o", str(tmp_path))
    assert res.code == 2
    assert f"The report output {tmp_path} is a folder; name a file in it, such as " \
        f"{tmp_path}/report.html." in res.stderr.replace("\n", "")

    # a report already there stays as it was when the new one cannot be made
    out = tmp_path / "r.html"
    out.write_text("the previous report")
    shutil.rmtree(kb.cfg.manifest.parent)   # manifest, store and snapshots: never built
    res = kb.cli("report", "-o", str(out), "--json")
    assert res.code == 2
    assert json.loads(res.stdout)["error"] == (
        f"No manifest at {kb.cfg.manifest}: this KB has not been built yet. Run "
        "`kbguard rebuild`.")
    assert out.read_text() == "the previous report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kb", "r.html"]


def _history(*times: str) -> ReportData:
    """A history of one drill, one check and one rebuild at each of ``times``."""
    return ReportData(
        kb="t", generated_at=times[-1], manifest="m.duckdb",
        objectives={"single_failure_s": 900.0, "full_rebuild_s": 3600.0},
        drills=[{"drill_id": i, "scenario": "store-lost", "started_at": t, "status": "passed",
                 "healthy": True, "detection_s": 1.0, "recovery_s": 12.0, "objective_s": 900.0,
                 "cost_usd": 0.0, "message": None} for i, t in enumerate(times)],
        checks=[{"run_id": i, "kind": "verify", "started_at": t, "status": "findings",
                 "points_checked": 10, "findings": {"missing_points": 3}}
                for i, t in enumerate(times)],
        spend=[], sizes=[{"run_id": i, "kind": "rebuild", "finished_at": t, "documents": 34,
                          "chunks": 805} for i, t in enumerate(times)])


@pytest.mark.parametrize("chart", [_recovery_chart, _findings_chart, _size_chart],
                         ids=["recovery", "findings", "size"])
def test_a_time_axis_with_one_moment_spans_days_not_milliseconds(chart) -> None:
    fig, points, _ = chart(_history("2026-12-05 17:55:12"))
    assert points == 1
    lo, hi = (datetime.fromisoformat(x) for x in fig.layout.xaxis.range)
    assert (lo, hi) == (datetime(2026, 12, 4, 17, 55, 12), datetime(2026, 12, 6, 17, 55, 12))
    for trace in fig.data:   # a bar is hours wide, not a millisecond (the axis is in ms)
        if trace.type == "bar":
            assert trace.width == 4 * 3600 * 1000
    # two moments: Plotly's own range fits them
    fig, points, _ = chart(_history("2026-12-05 17:55:12", "2026-12-06 03:00:00"))
    assert points == 2 and fig.layout.xaxis.range is None
    assert all(trace.width is None for trace in fig.data if trace.type == "bar")
