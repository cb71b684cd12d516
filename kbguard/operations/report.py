"""The report: one HTML page of a KB's history, for a review or a printout.

Four charts, each with a table of the latest numbers under it: recovery time per drill scenario
against its objective, verify findings per check, embedding spend per month, and the KB's size
after each rebuild. Plotly draws them: its JavaScript is embedded once in the page, so the file
opens offline (no CDN, nothing fetched) and the charts stay interactive (hover for the exact
values); the tables keep the page useful on paper. A chart with no history says what fills it.

Everything from the data (scenario, space and provider names, messages, paths) is escaped: in
the page's HTML, and in the charts' labels, which Plotly reads as a subset of HTML.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from kbguard.config import Config
from kbguard.core.durable import atomic_write_text
from kbguard.errors import ConfigError
from kbguard.kb.lost_manifest import missing_manifest
from kbguard.kb.preflight import Needs, preflight_checks
from kbguard.manifest import Manifest

TABLE_ROWS = 10   # rows of history a table shows under its chart (newest first)

EMPTY = {
    "recovery": "No drill yet: run `kbguard drill` to rehearse a failure and measure how long "
                "the recovery takes.",
    "findings": "No check yet: run `kbguard verify` (nightly, from cron or a systemd timer).",
    "spend": "No embedding recorded yet: the ledger fills as `kbguard rebuild` embeds.",
    "size": "No successful rebuild yet: run `kbguard rebuild`.",
}
NO_RECOVERY = ("No drill has measured a recovery yet (see the table: each says why). Run "
               "`kbguard drill` again once the KB has what the drill needs.")


@dataclass
class ReportData:
    """The series behind the charts; every timestamp is UTC, ISO 8601."""

    kb: str
    generated_at: str
    manifest: str
    objectives: dict[str, float]    # single_failure_s, full_rebuild_s (from the config)
    drills: list[dict[str, Any]]    # oldest first
    checks: list[dict[str, Any]]    # oldest first; findings: class -> count
    spend: list[dict[str, Any]]     # per month (YYYY-MM), space and provider
    sizes: list[dict[str, Any]]     # oldest first: documents and chunks after each rebuild

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReportResult:
    """What `kbguard report` wrote: the page, its size, the points each chart draws, and what
    the page says in place of each chart that has no history yet."""

    path: Path
    bytes: int
    charts: dict[str, int]
    empty: dict[str, str]
    data: ReportData = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "bytes": self.bytes, "charts": self.charts,
                "empty": self.empty, **self.data.to_dict()}


def default_report_path(cfg: Config) -> Path:
    """``<kb>-report.html`` in the current folder (a KB name is safe in a file name)."""
    return Path.cwd() / f"{cfg.kb}-report.html"


def report_data(cfg: Config) -> ReportData:
    """Read the history the report shows from the KB's manifest (read-only)."""
    preflight_checks(cfg, Needs("report", unlocked=True, manifest=missing_manifest))
    with Manifest.open(cfg.manifest, read_only=True) as m:
        drills, checks = m.drills.history(), m.checks.history()
        spend, sizes = m.ledger.monthly_spend(), m.runs.size_history()
    return ReportData(
        kb=cfg.kb, generated_at=_iso(datetime.now(UTC)), manifest=str(cfg.manifest),
        objectives={"single_failure_s": cfg.rto_single_failure_s,
                    "full_rebuild_s": cfg.rto_full_rebuild_s},
        drills=[{"drill_id": d["drill_id"], "scenario": d["scenario"],
                 "started_at": _iso(d["started_at"]), "status": d["status"],
                 "healthy": d["healthy"], "detection_s": d["detection_s"],
                 "recovery_s": d["recovery_s"], "objective_s": d["objective_s"],
                 "cost_usd": d["cost_usd"], "message": d["message"]} for d in drills],
        checks=[{**c, "started_at": _iso(c["started_at"])} for c in checks],
        spend=spend,
        sizes=[{**s, "finished_at": _iso(s["finished_at"])} for s in sizes],
    )


def write_report(cfg: Config, output: Path | None = None) -> ReportResult:
    """Write the report of ``cfg``'s KB to ``output`` (default: ``default_report_path``)
    atomically: a reader sees the previous page or the new one, never half of either."""
    path = Path(output) if output is not None else default_report_path(cfg)
    _check_output(path)   # before the manifest is read: a bad -o costs nothing
    data = report_data(cfg)
    page, charts, empty = render_page(data)
    try:
        # readable by others, as a page to share is (a temporary file would be 0600)
        atomic_write_text(path, page, mode=0o644)   # a full disk raises DiskFullError
    except OSError as exc:
        raise ConfigError(f"Cannot write the report to {path}: {exc.strerror or exc}. Make the "
                          "folder writable for this user, or choose another file with -o.") \
            from exc
    return ReportResult(path=path, bytes=len(page.encode("utf-8")), charts=charts, empty=empty,
                        data=data)


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise ConfigError(f"The report output {path} is a folder; name a file in it, such as "
                          f"{path / 'report.html'}.")
    if not path.parent.is_dir():
        raise ConfigError(f"The report output {path}: the folder {path.parent} does not exist, "
                          "and kbguard does not create it. Create it first, or choose another "
                          "file with -o.")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"Cannot write the report to {path}: the folder {path.parent} is not "
                          "writable for this user. Choose another file with -o.")


# -- the page --------------------------------------------------------------------------------

def render_page(data: ReportData) -> tuple[str, dict[str, int], dict[str, str]]:
    """The page's HTML, the points each chart draws, and the notes shown instead of charts."""
    sections, charts, notes = [], {}, {}
    for name, title, build, table in (
            ("recovery", "Recovery time per drill scenario", _recovery_chart, _recovery_table),
            ("findings", "Verify findings per check", _findings_chart, _findings_table),
            ("spend", "Embedding spend per month", _spend_chart, _spend_table),
            ("size", "KB size after each rebuild", _size_chart, _size_table)):
        fig, points, empty = build(data)
        charts[name] = points
        if fig is None:
            notes[name] = empty
        body = (_figure_html(fig, name) if fig is not None
                else f'<p class="empty" id="empty-{name}">{_code(empty)}</p>')
        sections.append(f'<section id="{name}">\n<h2>{html.escape(title)}</h2>\n{body}\n'
                        f"{table(data)}\n</section>")
    script = ""
    if any(charts.values()):
        from plotly.offline import get_plotlyjs

        # once for the page; "</script" cannot occur inside it (checked: it would end the tag)
        js = get_plotlyjs()
        if "</script" in js.lower():
            raise RuntimeError("the embedded plotly.js holds '</script': it cannot be inlined")
        script = f"<script>{js}</script>\n"
    kb = html.escape(data.kb)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kbguard report: {kb}</title>
<style>{_CSS}</style>
{script}</head>
<body>
<header>
<h1>kbguard report: {kb}</h1>
<p>Generated {html.escape(data.generated_at)} (UTC) from the manifest
<code>{html.escape(data.manifest)}</code>. Recovery objectives in the config:
{_seconds(data.objectives["single_failure_s"])} for a single failure,
{_seconds(data.objectives["full_rebuild_s"])} for a full rebuild.</p>
</header>
{chr(10).join(sections)}
</body>
</html>
"""
    return page, charts, notes


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; padding: 0 1em; max-width: 1100px;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; }
p.empty { padding: 1em; background: #f4f4f4; border-left: 4px solid #999; }
table { border-collapse: collapse; margin-top: 0.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
@media print { section { break-inside: avoid; } body { margin: 0; } }
"""


def _figure_html(fig: Any, name: str) -> str:
    fig.update_layout(height=380, margin={"l": 60, "r": 60, "t": 30, "b": 50},
                      legend={"orientation": "h", "y": -0.2}, template="plotly_white")
    html: str = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}",
                            default_height="380px",
                            config={"displaylogo": False, "responsive": True})
    return html


def _figure() -> Any:
    import plotly.graph_objects as go

    return go.Figure()


def _label(text: object) -> str:
    """A string from the data as a chart label: Plotly reads labels as a subset of HTML."""
    return html.escape(str(text))


def _recovery_chart(data: ReportData) -> tuple[Any, int, str]:
    import plotly.graph_objects as go

    if not data.drills:
        return None, 0, EMPTY["recovery"]
    measured = [d for d in data.drills if d["recovery_s"] is not None]
    if not measured:
        return None, 0, NO_RECOVERY
    fig = _figure()
    scenarios = sorted({d["scenario"] for d in measured})
    symbols = {"passed": "circle", "missed": "triangle-up", "failed": "x"}
    for i, scenario in enumerate(scenarios):
        rows = [d for d in measured if d["scenario"] == scenario]
        color = _COLORS[i % len(_COLORS)]
        name = _label(scenario)
        fig.add_trace(go.Scatter(
            x=[d["started_at"] for d in rows], y=[d["recovery_s"] for d in rows],
            mode="lines+markers", name=name, line={"color": color},
            marker={"size": 9, "symbol": [symbols.get(d["status"], "diamond") for d in rows]},
            text=[_label(d["status"]) for d in rows],
            hovertemplate=f"{name}<br>%{{x}}<br>recovery %{{y:.1f}} s (%{{text}})<extra></extra>"))
    objectives: dict[float, set[str]] = {}
    for d in measured:
        if d["objective_s"] is not None:
            objectives.setdefault(d["objective_s"], set()).add(d["scenario"])
    # recoveries of seconds beside objectives of an hour: a log axis shows both
    log = all(d["recovery_s"] > 0 for d in measured)
    for objective, names in sorted(objectives.items()):
        fig.add_hline(y=objective, line={"dash": "dash", "color": "#d62728", "width": 1.5})
        # placed by hand: on a log axis an annotation's y is the exponent
        fig.add_annotation(
            x=0, xref="paper", xanchor="left", yanchor="bottom", showarrow=False,
            y=math.log10(objective) if log else objective, yref="y",
            font={"color": "#d62728", "size": 11},
            text=_label(f"objective {_seconds(objective)}: {', '.join(sorted(names))}"))
    fig.update_yaxes(title_text="seconds" + (" (log scale)" if log else ""),
                     type="log" if log else "linear")
    _time_axis(fig, [d["started_at"] for d in measured], "drill started (UTC)")
    return fig, len(measured), ""


def _recovery_table(data: ReportData) -> str:
    if not data.drills:
        return ""
    latest: dict[str, dict[str, Any]] = {}
    runs: dict[str, list[dict[str, Any]]] = {}
    for d in data.drills:
        latest[d["scenario"]] = d
        runs.setdefault(d["scenario"], []).append(d)
    rows = []
    for scenario in sorted(latest):
        d, all_runs = latest[scenario], runs[scenario]
        passed = sum(1 for r in all_runs if r["status"] == "passed")
        rows.append([scenario, d["started_at"], d["status"], _seconds(d["detection_s"]),
                     _seconds(d["recovery_s"]), _seconds(d["objective_s"]),
                     f"{passed} of {len(all_runs)}", d["message"] or ""])
    return _table("Latest drill of each scenario",
                  ["scenario", "started (UTC)", "status", "detection", "recovery", "objective",
                   "passed", "message"], rows, numeric={3, 4, 5})


def _findings_chart(data: ReportData) -> tuple[Any, int, str]:
    import plotly.graph_objects as go

    if not data.checks:
        return None, 0, EMPTY["findings"]
    fig = _figure()
    xs = [c["started_at"] for c in data.checks]
    found = sorted({name for c in data.checks for name, n in c["findings"].items() if n})
    for i, name in enumerate(found):
        fig.add_trace(go.Bar(
            x=xs, y=[c["findings"].get(name, 0) for c in data.checks], name=_label(name),
            marker={"color": _COLORS[i % len(_COLORS)]},
            hovertemplate=f"{_label(name)}: %{{y}}<br>%{{x}}<extra></extra>"))
    totals = [sum(c["findings"].values()) for c in data.checks]
    fig.add_trace(go.Scatter(
        x=xs, y=totals, mode="lines+markers", name="total findings",
        line={"color": "#222"}, text=[_label(c["status"]) for c in data.checks],
        hovertemplate="total %{y} (%{text})<br>%{x}<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="findings", rangemode="tozero")
    _time_axis(fig, xs, "check (UTC)")
    return fig, len(data.checks), ""


def _findings_table(data: ReportData) -> str:
    if not data.checks:
        return ""
    last = data.checks[-1]
    seen = {name: sum(1 for c in data.checks if c["findings"].get(name)) for name in
            {n for c in data.checks for n in c["findings"]}}
    # the classes ever found: a table of a dozen zeros says less than one line
    rows = [[name, str(last["findings"].get(name, 0)), f"{n} of {len(data.checks)}"]
            for name, n in sorted(seen.items(), key=lambda kv: (-last["findings"].get(kv[0], 0),
                                                                 kv[0])) if n]
    if not rows:
        return (f"<p>Latest check: {html.escape(last['started_at'])}: healthy, as was every "
                f"check shown ({len(data.checks)}).</p>")
    head = (f"Latest check: {last['started_at']} ({last['kind']}), {last['status']}, "
            f"{last['points_checked'] if last['points_checked'] is not None else '?'} points "
            "checked")
    return _table(head, ["finding", "count", "checks that found it"], rows, numeric={1})


def _spend_chart(data: ReportData) -> tuple[Any, int, str]:
    import plotly.graph_objects as go

    if not data.spend:
        return None, 0, EMPTY["spend"]
    fig = _figure()
    months = sorted({s["month"] for s in data.spend})
    spaces = sorted({s["space"] for s in data.spend})
    for i, space in enumerate(spaces):
        usd = {m: 0.0 for m in months}
        for s in data.spend:
            if s["space"] == space:
                usd[s["month"]] += s["cost_usd"]
        fig.add_trace(go.Bar(
            x=months, y=[round(usd[m], 6) for m in months], name=f"{_label(space)} (USD)",
            marker={"color": _COLORS[i % len(_COLORS)]},
            hovertemplate=f"{_label(space)}: $%{{y:.4f}}<br>%{{x}}<extra></extra>"))
    tokens = {m: 0 for m in months}
    for s in data.spend:
        tokens[s["month"]] += s["tokens"]
    # a local model costs nothing: the tokens still show how much was embedded
    fig.add_trace(go.Scatter(
        x=months, y=[tokens[m] for m in months], mode="lines+markers", name="tokens",
        yaxis="y2", line={"color": "#222", "dash": "dot"},
        hovertemplate="%{y:,} tokens<br>%{x}<extra></extra>"))
    fig.update_layout(barmode="stack", yaxis={"title": {"text": "USD"}, "rangemode": "tozero"},
                      yaxis2={"title": {"text": "tokens"}, "overlaying": "y", "side": "right",
                              "rangemode": "tozero", "showgrid": False})
    fig.update_xaxes(title_text="month (UTC)", type="category")
    return fig, len(months), ""


def _spend_table(data: ReportData) -> str:
    if not data.spend:
        return ""
    months = sorted({s["month"] for s in data.spend}, reverse=True)[:TABLE_ROWS]
    rows = [[s["month"], s["space"], s["provider"], f"{s['texts']:,}", f"{s['tokens']:,}",
             f"{s['requests']:,}", f"${s['cost_usd']:.4f}"]
            for s in sorted(data.spend, key=lambda s: (s["month"], s["space"], s["provider"]),
                            reverse=True) if s["month"] in months]
    total = sum(s["cost_usd"] for s in data.spend)
    return _table(f"Spend by month, space and provider (to date: ${total:.4f})",
                  ["month", "space", "provider", "texts", "tokens", "requests", "USD"], rows,
                  numeric={3, 4, 5, 6})


def _size_chart(data: ReportData) -> tuple[Any, int, str]:
    import plotly.graph_objects as go

    sizes = [s for s in data.sizes if s["chunks"] is not None]
    if not sizes:
        return None, 0, EMPTY["size"]
    fig = _figure()
    xs = [s["finished_at"] for s in sizes]
    fig.add_trace(go.Scatter(
        x=xs, y=[s["chunks"] for s in sizes], mode="lines+markers", name="chunks",
        line={"color": _COLORS[0]}, hovertemplate="%{y:,} chunks<br>%{x}<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=xs, y=[s["documents"] for s in sizes], mode="lines+markers", name="documents",
        yaxis="y2", line={"color": _COLORS[1], "dash": "dot"},
        hovertemplate="%{y:,} documents<br>%{x}<extra></extra>"))
    fig.update_layout(yaxis={"title": {"text": "chunks"}, "rangemode": "tozero"},
                      yaxis2={"title": {"text": "documents"}, "overlaying": "y",
                              "side": "right", "rangemode": "tozero", "showgrid": False})
    _time_axis(fig, xs, "rebuild finished (UTC)")
    return fig, len(sizes), ""


def _size_table(data: ReportData) -> str:
    if not data.sizes:
        return ""
    rows = [[s["finished_at"], s["kind"], str(s["run_id"]), f"{s['documents']:,}",
             f"{s['chunks']:,}" if s["chunks"] is not None else "?"]
            for s in reversed(data.sizes[-TABLE_ROWS:])]
    return _table("Latest rebuilds", ["finished (UTC)", "kind", "run", "documents", "chunks"],
                  rows, numeric={2, 3, 4})


# -- helpers ---------------------------------------------------------------------------------

SINGLE_MOMENT_SPAN = timedelta(days=1)   # either side of a chart's only moment
SINGLE_MOMENT_BAR = timedelta(hours=4)   # the width of a bar at that moment


def _time_axis(fig: Any, times: list[str], title: str) -> None:
    """A date axis titled ``title``. Where every point of a chart falls on one moment (one
    drill, one check, one rebuild), Plotly zooms to a millisecond around it and draws its bars
    a millisecond wide: show a day either side, and bars a few hours wide, instead."""
    fig.update_xaxes(title_text=title)
    if len(set(times)) != 1:
        return
    at = datetime.fromisoformat(times[0])
    fig.update_xaxes(range=[_iso(at - SINGLE_MOMENT_SPAN), _iso(at + SINGLE_MOMENT_SPAN)])
    fig.update_traces(width=SINGLE_MOMENT_BAR.total_seconds() * 1000, selector={"type": "bar"})

_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _table(caption: str, head: list[str], rows: list[list[str]], *,
           numeric: frozenset[int] | set[int] = frozenset()) -> str:
    def cell(i: int, value: str, tag: str = "td") -> str:
        cls = ' class="num"' if tag == "td" and i in numeric else ""
        return f"<{tag}{cls}>{html.escape(str(value))}</{tag}>"

    out = [f"<table><caption>{html.escape(caption)}</caption>",
           "<tr>" + "".join(cell(i, h, "th") for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell(i, v) for i, v in enumerate(row)) + "</tr>" for row in rows]
    out.append("</table>")
    return "\n".join(out)


def _code(text: str) -> str:
    """``text`` escaped, with its `command` spans set as code."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value:.0f} s ({value / 60:.1f} min)"


def _iso(value: Any) -> str:
    """A time as UTC without its zone: Plotly's date axes take no zone offset."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return str(value.replace(tzinfo=None).isoformat(sep=" ", timespec="seconds"))
    return str(value)
