"""Server-rendered SVG charts for the board report (no script, no CDN): one bar chart per framework."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

WIDTH = 640
ROW = 26
LABEL = 250
MAX_SCORE = 5


def framework_chart(framework: dict[str, Any]) -> Markup:
    """Latest score (bar) and previous round's score (tick) of each item of one framework, 0-5."""
    rows = framework["items"]
    plot = WIDTH - LABEL - 60
    height = ROW * len(rows) + 40
    title = f"{framework['title']}: latest score of each item (bar) and the round before (tick)"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {WIDTH} {height}" '
             f'width="{WIDTH}" height="{height}" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for n in range(MAX_SCORE + 1):
        x = LABEL + plot * n / MAX_SCORE
        parts.append(f'<line x1="{x:.1f}" y1="10" x2="{x:.1f}" y2="{height - 24}" class="grid" stroke="#ccc"/>'
                     f'<text x="{x:.1f}" y="{height - 8}" font-size="11" text-anchor="middle">{n}</text>')
    for i, it in enumerate(rows):
        y = 14 + i * ROW
        latest = (it.get("latest_score") or {}).get("score")
        previous = (it.get("previous_score") or {}).get("score")
        parts.append(f'<text x="{LABEL - 8}" y="{y + 13}" font-size="12" text-anchor="end">'
                     f'{escape(it["title"][:38])}</text>')
        if latest:
            w = plot * latest / MAX_SCORE
            parts.append(f'<rect x="{LABEL}" y="{y + 2}" width="{w:.1f}" height="16" fill="#005eb8">'
                         f'<title>{escape(it["title"])}: {latest}</title></rect>')
        else:
            parts.append(f'<text x="{LABEL + 4}" y="{y + 14}" font-size="11" fill="#555">not scored</text>')
        if previous:
            x = LABEL + plot * previous / MAX_SCORE
            parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 20}" stroke="#d5281b" stroke-width="3">'
                         f'<title>previous round: {previous}</title></line>')
    parts.append("</svg>")
    return Markup("".join(parts))


COLOURS = ("#005eb8", "#d5281b", "#007f3b", "#7c2855")


def trend_chart(title: str, labels: list[str], series: list[tuple[str, list[Any]]], *, width: int = WIDTH,
                height: int = 220, compact: bool = False) -> Markup:
    """Published monthly figures as lines, one per series (the workforce view): a suppressed point ('*') or a missing
    one breaks the line and is marked '*' on the axis, never drawn as a number. `compact`: a small multiple for a
    table row (no legend; only the first and last month named)."""
    left, right, top, bottom = (30, 22, 8, 18) if compact else (44, 16, 30, 34)
    plot_w, plot_h = width - left - right, height - top - bottom
    numbers = [v for _, vals in series for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
    top_value = max(numbers or [0]) or 1
    step = _nice_step(top_value)
    top_value = step * -(-top_value // step)
    n = max(len(labels), 1)

    def x(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n)

    def y(v: float) -> float:
        return top + plot_h - plot_h * v / top_value

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'width="{width}" height="{height}" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    tick = 0
    while tick <= top_value:
        parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - right}" y2="{y(tick):.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="11" text-anchor="end">{tick:g}</text>')
        tick += step
    for i, label in enumerate(labels):
        if (i in (0, len(labels) - 1)) if compact else (len(labels) <= 12 or i % 2 == 0):
            parts.append(f'<text x="{x(i):.1f}" y="{height - (4 if compact else 18)}" font-size="10" '
                         f'text-anchor="middle">{escape(label)}</text>')
    legend_x = left
    for k, (name, values) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        run: list[str] = []
        for i, v in enumerate(values):
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                run.append(f"{x(i):.1f},{y(v):.1f}")
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"><title>'
                             f'{escape(name)}, {escape(labels[i])}: {v:g}</title></circle>')
                continue
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
            run = []
            if v == "*":
                parts.append(f'<text x="{x(i):.1f}" y="{top + plot_h - 4 - 12 * k}" font-size="12" fill="{colour}" '
                             f'text-anchor="middle"><title>{escape(name)}, {escape(labels[i])}: small number, not '
                             f'published</title>*</text>')
        if len(run) > 1:
            parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
        if not compact:
            parts.append(f'<rect x="{legend_x}" y="6" width="12" height="12" fill="{colour}"/>'
                         f'<text x="{legend_x + 16}" y="16" font-size="12">{escape(name)}</text>')
            legend_x += 16 + 7 * len(name) + 18
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice_step(top: float) -> int:
    """A round gridline step giving about four lines up to `top`."""
    for step in (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000):
        if top / step <= 5:
            return step
    return int(10 ** len(str(int(top))) / 10)
