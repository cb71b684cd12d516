"""A small-multiples line chart as a standalone SVG file, with no plotting library: one panel
per series, y against x from zero, each point labelled, and a dashed line through the first
point and the origin (what proportional growth would look like)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PANEL_W, PANEL_H = 260, 190
PAD_L, PAD_R, PAD_T, PAD_B = 52, 14, 28, 36


def nice_max(value: float) -> float:
    """The smallest 1, 2, 4, 6 or 8 x 10^k at or above ``value`` (quarters stay round)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 4, 6, 8, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _fmt(value: float) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:.3g}"


def _panel(title: str, points: Sequence[tuple[float, float]], x_max: float, x_label: str,
           y_label: str, ox: float, oy: float) -> list[str]:
    w, h = PANEL_W - PAD_L - PAD_R, PANEL_H - PAD_T - PAD_B
    y_max = nice_max(max((y for _, y in points), default=1.0) * 1.05)

    def sx(x: float) -> float:
        return ox + PAD_L + w * x / x_max

    def sy(y: float) -> float:
        return oy + PAD_T + h * (1 - y / y_max)

    out = [f'<text x="{ox + PAD_L}" y="{oy + 16}" class="t">{escape(title)}</text>',
           f'<rect x="{ox + PAD_L}" y="{oy + PAD_T}" width="{w}" height="{h}" class="f"/>']
    for i in range(5):
        y = y_max * i / 4
        out.append(f'<line x1="{ox + PAD_L}" x2="{ox + PAD_L + w}" y1="{sy(y):.1f}" '
                   f'y2="{sy(y):.1f}" class="g"/>')
        out.append(f'<text x="{ox + PAD_L - 4}" y="{sy(y) + 3:.1f}" class="yl">{_fmt(y)}</text>')
    for i in range(5):
        x = x_max * i / 4
        out.append(f'<text x="{sx(x):.1f}" y="{oy + PAD_T + h + 12}" class="xl">{_fmt(x)}</text>')
    out.append(f'<text x="{ox + PAD_L + w / 2}" y="{oy + PANEL_H - 6}" class="xl">'
               f'{escape(x_label)}</text>')
    out.append(f'<text transform="translate({ox + 12},{oy + PAD_T + h / 2}) rotate(-90)" '
               f'class="xl">{escape(y_label)}</text>')
    pts = sorted(points)
    if pts and pts[0][0] > 0:
        x0, y0 = pts[0]
        x_end = x_max
        y_end = y0 * x_end / x0
        if y_end > y_max:
            x_end, y_end = x0 * y_max / y0, y_max
        out.append(f'<line x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(x_end):.1f}" '
                   f'y2="{sy(y_end):.1f}" class="r"/>')
    if len(pts) > 1:
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline points="{path}" class="l"/>')
    for x, y in pts:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" class="p"/>')
        out.append(f'<text x="{sx(x) - 4:.1f}" y="{sy(y) - 6:.1f}" class="v">{y:.3g}</text>')
    return out


def small_multiples(title: str, subtitle: str,
                    panels: Sequence[tuple[str, Sequence[tuple[float, float]]]],
                    *, x_label: str, y_label: str, columns: int = 4) -> str:
    """The SVG document: one panel per (name, points), all panels sharing the x range."""
    x_max = nice_max(max((x for _, pts in panels for x, _ in pts), default=1.0))
    rows = max(1, math.ceil(len(panels) / columns))
    top = 50
    width, height = PANEL_W * columns, PANEL_H * rows + top
    body = [f'<text x="8" y="20" class="h">{escape(title)}</text>',
            f'<text x="8" y="38">{escape(subtitle)}</text>']
    for i, (name, pts) in enumerate(panels):
        body += _panel(name, pts, x_max, x_label, y_label,
                       (i % columns) * PANEL_W, top + (i // columns) * PANEL_H)
    style = ("text{font-family:sans-serif;font-size:10px;fill:#222}"
             ".h{font-size:14px;font-weight:bold}.t{font-size:11px;font-weight:bold}"
             ".yl{text-anchor:end}.xl{text-anchor:middle}.v{text-anchor:end;fill:#1f4e9a}"
             ".f{fill:none;stroke:#999}.g{stroke:#e4e4e4}.l{fill:none;stroke:#1f4e9a;"
             "stroke-width:1.5}.p{fill:#1f4e9a}.r{stroke:#c44;stroke-dasharray:4 3}")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><style>{style}</style>'
            f'<rect width="100%" height="100%" fill="#fff"/>{"".join(body)}</svg>\n')
