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
