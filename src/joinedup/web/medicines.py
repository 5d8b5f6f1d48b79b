"""The medicines review worklist (pharmacists and prescribers): the people this professional cares for whose
current medicines have conflict findings, most severe first, each opening the person's medicines-safety page.

Built on the conflicts engine's population screen (`conflicts.screen.iter_screen`), which reads whole records through
`Gate.records` with the caller's own reach (only people they have a relationship with, each entry filtered as on
every other path) and audits the screen as one access with its purpose. People recorded as deceased get no findings
and so are not on the list.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from joinedup.conflicts import screen
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.web.pages import service_page

router = APIRouter(include_in_schema=False)
SEVERITY_WORDS = {"critical": "Critical", "high": "High", "moderate": "Moderate", "low": "Low"}
MAX_ROWS = 500


def worklist(gate: Gate, who: Principal, *, severity: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    screened = 0
    for _practice, row in screen.iter_screen(gate=gate, who=who, severity=severity):
        screened += 1
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (screen.SEVERITY_ORDER[r["highest"]], -r["critical"], -r["high"], -r["moderate"],
                             r["name"]))
    for r in rows:
        r["id"] = r["patient"].split("/", 1)[1]
        r["display_name"] = _display(r["name"])
    return {"rows": rows[:MAX_ROWS], "more": max(0, len(rows) - MAX_ROWS), "screened": screened,
            "flagged": len(rows), "severity": severity, "severities": SEVERITY_WORDS}


def _display(name: str) -> str:
    """'STEVENS, Lucy' (the screen's sortable form) → 'Lucy Stevens'."""
    if ", " in name:
        family, given = name.split(", ", 1)
        return f"{given} {family.title()}"
    return name


@router.get("/medicines-reviews")
def medicines_reviews(request: Request, severity: str = "moderate"):
    """Medicines to review across the people I care for, with the conflict findings that make them urgent."""
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        chosen = severity if severity in SEVERITY_WORDS else "moderate"
        return {**worklist(gate, who, severity=chosen), "bad_severity": severity not in SEVERITY_WORDS}

    return service_page(request, "roles/medicines_reviews.html", build)
