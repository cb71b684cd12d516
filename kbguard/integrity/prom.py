"""Prometheus textfile-collector metrics of `kbguard verify`, written atomically.

node_exporter's textfile collector reads every ``*.prom`` file of a folder on each scrape; a
half-written file would be read as garbage, so the metrics go to a temporary file in the same
folder and are renamed over the old one. The time of the last completed check survives a run that
could not check: it is read back from the previous file.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

from kbguard.core.durable import atomic_write_text
from kbguard.core.redact import scrub
from kbguard.errors import ConfigError, KbguardError
from kbguard.integrity.verify import FINDINGS, VerifyReport

LAST_SUCCESS = "kbguard_verify_last_success_timestamp_seconds"


def render_metrics(kb: str, report: VerifyReport | None, *, started: float,
                   last_success: float | None, error: str | None = None) -> str:
    label = f'kb="{_escape(kb)}"'
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{{{labels}}} {_num(value)}")

    metric("kbguard_verify_up", "gauge",
           "1 if the last check could run to the end, 0 if it could not check.",
           [(label, 0 if report is None or report.verdict == report.verdict.COULD_NOT_CHECK else 1)])
    metric("kbguard_verify_healthy", "gauge", "1 if the last check found nothing.",
           [(label, 1 if report is not None and report.healthy else 0)])
    metric("kbguard_verify_exit_code", "gauge",
           "Exit code of the last check: 0 healthy, 1 findings, 2 could not check.",
           [(label, 2 if report is None else int(report.verdict))])
    if report is not None:
        metric("kbguard_verify_findings", "gauge", "Findings of the last check, by class.",
               [(f'{label},finding="{name}"', f.count) for name, f in report.findings.items()])
        metric("kbguard_verify_points_checked", "gauge", "Points compared by the last check.",
               [(label, report.points_checked)])
    else:
        metric("kbguard_verify_findings", "gauge", "Findings of the last check, by class.",
               [(f'{label},finding="{name}"', 0) for name in FINDINGS])
    metric("kbguard_verify_duration_seconds", "gauge", "Wall time of the last check.",
           [(label, round(time.time() - started, 3))])
    metric("kbguard_verify_last_run_timestamp_seconds", "gauge",
           "When the last check started (whatever its outcome).", [(label, round(started, 3))])
    if last_success is not None:
        metric(LAST_SUCCESS, "gauge",
               "When the last check that ran to the end (exit 0 or 1) started.",
               [(label, round(last_success, 3))])
    if error:
        lines.append(f"# could not check: {' '.join(scrub(error).split())}")
    return "\n".join(lines) + "\n"


def check_target(path: Path) -> None:
    """Refuse, before anything is checked, a metrics file that could not be written: its
    folder must exist (it is never created: a typo would otherwise grow a new tree that no
    exporter reads) and take a new file (the atomic write goes through one)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ConfigError(f"--prom-file {path} is a folder; name a file in it, such as "
                          f"{path / 'kbguard.integrity.prom'}. Nothing was checked.")
    if not folder.is_dir():
        raise ConfigError(
            f"--prom-file {path}: the folder {folder} does not exist, and kbguard does not "
            "create it. Point --prom-file into node_exporter's textfile directory (or create "
            "the folder first). Nothing was checked.")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise ConfigError(
            f"--prom-file {path}: cannot write in {folder} ({exc.strerror}). Make the folder "
            "writable for this user, or point --prom-file elsewhere. Nothing was checked."
        ) from exc
    os.close(fd)
    os.unlink(probe)


def write_metrics(path: Path, kb: str, report: VerifyReport | None, *, started: float,
                  error: str | None = None) -> None:
    """Write the metrics of one check to ``path`` atomically."""
    path = Path(path)
    completed = report is not None and report.verdict != report.verdict.COULD_NOT_CHECK
    last_success = started if completed else _previous_success(path)
    text = render_metrics(kb, report, started=started, last_success=last_success, error=error)
    try:
        atomic_write_text(path, text, mode=0o644)  # the exporter usually runs as another user
    except KbguardError:
        raise
    except OSError as exc:
        outcome = ("could not check" if report is None else "healthy" if report.healthy
                   else f"{report.total} findings")
        raise KbguardError(
            f"The check ran ({outcome}), but its metrics could not be written to {path}: "
            f"{exc.strerror or exc}. Fix that file or its folder and run the check again."
        ) from exc


def _previous_success(path: Path) -> float | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(rf"^{LAST_SUCCESS}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
