"""The process map as server-side SVG (no script, no CDN): steps as boxes in columns by kind (requests, hospital,
community, tasks, plans and episodes), the commonest directly-follows transitions as arrows whose width grows with
their count, each labelled with its (suppressed) count and median wait in days."""

from __future__ import annotations

import math
from typing import Any

from markupsafe import Markup, escape

BOX_W, BOX_H, COL_GAP, ROW_GAP, PAD = 170, 40, 110, 44, 20
MAX_ARROWS = 25
COLUMNS = {1: "Requests and advice", 2: "Hospital", 3: "Community, GP and outpatients", 4: "Tasks",
           5: "Plans and episodes"}


def _fmt(count: Any) -> str:
    return f"{count:,}" if isinstance(count, int) else str(count)


def render(published: dict[str, Any], *, shown) -> Markup:
    """The map of `published["map"]` (service.publish); `shown` words a suppressed count."""
    nodes = published["map"]["nodes"]
    if not nodes:
        return Markup('<p class="small">No steps recorded in this period.</p>')
    cols: dict[int, list[dict]] = {}
    for n in nodes:
        cols.setdefault(n["order"] // 10, []).append(n)
    keys = sorted(cols)
    pos: dict[str, tuple[float, float]] = {}
    for ci, k in enumerate(keys):
        for ri, n in enumerate(cols[k]):
            pos[n["code"]] = (PAD + ci * (BOX_W + COL_GAP), PAD + 30 + ri * (BOX_H + ROW_GAP))
    width = PAD * 2 + len(keys) * BOX_W + (len(keys) - 1) * COL_GAP + 60
    height = PAD * 2 + 30 + max(len(c) for c in cols.values()) * (BOX_H + ROW_GAP) + 20
    edges = [e for e in published["map"]["edges"] if e["from"] in pos and e["to"] in pos][:MAX_ARROWS]
    top = max((e["count"] for e in edges if isinstance(e["count"], int)), default=1) or 1
    title = (f"Process map, {published['period']['from']} to {published['period']['to']}: the {len(edges)} commonest "
             "transitions between steps, with how many times each happened and the median days between the steps")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="process-map" role="img" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" aria-labelledby="pm-title"><title id="pm-title">{escape(title)}</title>',
           '<defs><marker id="pm-arrow" viewBox="0 0 10 10" refX="9" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" '
           'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#425563"/></marker></defs>']
    for ci, k in enumerate(keys):
        x = PAD + ci * (BOX_W + COL_GAP)
        out.append(f'<text x="{x}" y="{PAD + 12}" font-size="12" font-weight="700" fill="#425563">'
                   f'{escape(COLUMNS.get(k, ""))}</text>')
    labels: list[str] = []
    placed: list[tuple[float, float, float, float]] = []
    side = dict.fromkeys(keys, 0)  # arrows already drawn around each column's right-hand side

    def place(x: float, y: float, text: str, anchor: str = "middle") -> None:
        """Put a label where no other label is (moved down a line at a time)."""
        w = 6.2 * len(text)
        for _ in range(12):
            x0 = x - w / 2 if anchor == "middle" else x
            if not any(x0 < b[2] and b[0] < x0 + w and y - 10 < b[3] and b[1] < y + 2 for b in placed):
                break
            y += 12
        placed.append((x0, y - 10, x0 + w, y + 2))
        labels.append(f'<text x="{x:.0f}" y="{y:.0f}" font-size="10" text-anchor="{anchor}" fill="#212b32" '
                      f'paint-order="stroke" stroke="#fff" stroke-width="3">{escape(text)}</text>')

    for e in edges:
        (x1, y1), (x2, y2) = pos[e["from"]], pos[e["to"]]
        w = 1 + 5 * math.sqrt((e["count"] if isinstance(e["count"], int) else 0) / top)
        wait = "" if e["median_days"] is None else f" · {e['median_days']:g} d"
        label = f"{shown(e['count'])}{wait}"
        if e["from"] == e["to"]:  # a step followed by itself: a loop above the box
            sx, sy = x1 + BOX_W * 0.55, y1
            d = f"M{sx:.0f},{sy} C{sx - 6:.0f},{sy - 24} {sx + 30:.0f},{sy - 24} {sx + 24:.0f},{sy}"
            lx, ly, anchor = sx + 32, sy - 8, "start"
        elif x2 > x1:
            sx, sy, tx, ty = x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2
            cx, cy = (sx + tx) / 2, (sy + ty) / 2 - 18
            d = f"M{sx},{sy} Q{cx},{cy} {tx},{ty}"
            lx, ly, anchor = cx, (sy + ty) / 2 - 6, "middle"
        else:  # same column or backwards: around the right-hand side, each arrow a little further out
            col = next(k for k in keys if any(n["code"] == e["from"] for n in cols[k]))
            side[col] += 1
            sx, sy, tx, ty = x1 + BOX_W, y1 + BOX_H / 2 + 6, x2 + BOX_W, y2 + BOX_H / 2 - 6
            cx = max(sx, tx) + 14 + 16 * side[col]
            d = f"M{sx},{sy} C{cx},{sy} {cx},{ty} {tx},{ty}"
            lx, ly, anchor = cx - 10, (sy + ty) / 2 + 4, "start"
        out.append(f'<path d="{d}" fill="none" stroke="#768692" stroke-opacity=".75" stroke-width="{w:.1f}" '
                   f'marker-end="url(#pm-arrow)"><title>{escape(e["from_name"])} → {escape(e["to_name"])}: '
                   f'{escape(label)}</title></path>')
        place(lx, ly, label, anchor)
    for n in nodes:
        x, y = pos[n["code"]]
        out.append(f'<g><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" fill="#e8edee" '
                   f'stroke="#005eb8" stroke-width="1.5"/><text x="{x + 8}" y="{y + 16}" font-size="12" '
                   f'font-weight="700">{escape(n["name"])}</text><text x="{x + 8}" y="{y + 32}" font-size="11" '
                   f'fill="#425563">{escape(shown(n["count"]))} times</text></g>')
    out += labels
    out.append("</svg>")
    return Markup("".join(out))
