"""The analyst's page: the de-identified extracts and reports the analyst role may run, with their actions.

Analysts never see identifiable records (governance.md): every action here reads through
`Gate.deidentified_records` (the `pseudonymised-analytics` activity; National Data Opt-out excluded, keyed
pseudonyms, dates coarsened, no free text) and is audited with its purpose. Published counts are suppressed
(`governance.deid.suppress`). Population dashboards come later (the population-health pages).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from starlette.responses import Response

from joinedup.fhir.errors import FhirError
from joinedup.governance import deid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.web.pages import Viewer, error_page, gate_of, page, service_page

router = APIRouter(include_in_schema=False)
PURPOSES = {"research": "Research (approved studies)", "planning": "Planning and commissioning"}
BIRTH = {"year": "Year of birth", "month": "Month and year of birth"}
SUMMARY_TYPES = {"Patient"}


def _context(**extra: Any) -> dict[str, Any]:
    return {"purposes": PURPOSES, "birth": BIRTH, "summary": None, "error": None,
            "form": {"purpose": "research", "birth": "year"}, **extra}


@router.get("/analytics")
def analytics_page(request: Request):
    """What the analyst may run: de-identified extracts and the published population summary."""
    return service_page(request, "roles/analytics.html", lambda gate, who: _context())


@router.get("/analytics/summary")
def summary_page(request: Request, purpose: str = "planning"):
    """The population summary (people by sex and decade of birth), counts suppressed for publication."""
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        if purpose not in PURPOSES:
            return _context(error="Choose research or planning as the purpose.")
        by_sex: dict[str, int] = {}
        by_decade: dict[str, int] = {}
        people = 0
        for record in gate.deidentified_records(who, purpose=f"{purpose}:summary", types=SUMMARY_TYPES):
            p = record[0] if record else {}
            people += 1
            sex = p.get("gender") or "unknown"
            by_sex[sex] = by_sex.get(sex, 0) + 1
            born = (p.get("birthDate") or "")[:3]
            decade = f"{born}0s" if born.isdigit() else "not recorded"
            by_decade[decade] = by_decade.get(decade, 0) + 1
        summary = {"people": deid.suppress(people), "purpose": PURPOSES[purpose],
                   "by_sex": deid.suppress_table(dict(sorted(by_sex.items()))),
                   "by_decade": deid.suppress_table(dict(sorted(by_decade.items())))}
        return _context(summary=summary, form={"purpose": purpose, "birth": "year"})

    return service_page(request, "roles/analytics.html", build)


@router.post("/analytics/extract")
def extract_download(request: Request, who: Viewer, purpose: str = Form(""), birth: str = Form("year")):
    """A de-identified extract as a zip of NDJSON files (one per resource type) with its suppressed summary."""
    form = {"purpose": purpose, "birth": birth}
    if purpose not in PURPOSES or birth not in BIRTH:
        return page(request, "roles/analytics.html", _context(
            form=form, error="Choose a purpose (research or planning) and how much of the birth date to keep."),
            who=who, status=422)
    try:
        records = gate_of(request).deidentified_records(who, purpose=purpose, birth_precision=birth)
        with tempfile.TemporaryDirectory(prefix="joinedup-extract-") as tmp:
            folder = Path(tmp)
            deid.write_extract(records, folder)
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(folder.iterdir()):
                    zf.write(f, f.name)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    gate_of(request).flush_audit()
    return Response(buf.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="joinedup-{purpose}-extract.zip"'})
