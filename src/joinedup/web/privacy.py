"""The privacy officer's pages: the break-glass review queue with decisions, requests to link records, the audit
search (by person, user and date), subject access reports, and people's sharing choices in force.

Everything goes through the gate as the privacy officer (the `review-audit` activity): `governance.service` for the
queue and decisions, `Gate.identify` for who people are (name, NHS number, birth date; nothing else of their record),
`Gate.search("AuditEvent")` for the audit trail and `Gate.subject_access` for a subject access report.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import orjson
from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from joinedup.fhir.errors import FhirError
from joinedup.governance import service
from joinedup.governance.gate import Gate, access_entry
from joinedup.governance.identity import Principal
from joinedup.governance.policy import rules
from joinedup.interop.linkage import service as linkage
from joinedup.record.own import PLAIN_TYPES
from joinedup.web.pages import Viewer, area_of, error_page, gate_of, page, service_page

router = APIRouter(include_in_schema=False)
ACTIONS = {"read": "Opened", "vread": "Opened an earlier version", "search": "Searched", "history": "Looked at changes",
           "everything": "Opened the whole record", "create": "Added", "update": "Changed", "delete": "Removed",
           "break-glass": "Used emergency access", "review": "Reviewed", "subject-access": "Subject access report",
           "export": "Exported", "extract": "De-identified extract", "login": "Logged in", "logout": "Logged out",
           "link": "Linked records", "link-review": "Decided a link request"}
CHOICE_WORDS = {"all": "Objects to sharing with anyone outside the organisation that recorded each entry",
                "organization": "Objects to sharing with one organisation",
                "opt-out": "National Data Opt-out (no research or planning use)"}
COUNT = 100


def _names(gate: Gate, who: Principal, ids: set[str]) -> dict[str, dict[str, Any]]:
    return {p["id"]: p for p in gate.identify(who, patient_ids=sorted(ids))} if ids else {}


def _role(role: str | None) -> str:
    return (rules()["roles"].get(role or "") or {}).get("display", role or "")


def _queue(gate: Gate, who: Principal, status: str) -> dict[str, Any]:
    grants = service.review_queue(gate, who, status=status)
    pending = service.link_requests(gate, who, status="pending")
    # pairs proposed by record linkage have their own clerical review (the two records side by side, field by field)
    links = [x for x in pending if not _from_linkage(x)]
    linkage_pairs = len(pending) - len(links)
    ids = {g["patient"].removeprefix("Patient/") for g in grants}
    ids |= {x[k].removeprefix("Patient/") for x in links for k in ("patient", "other_patient") if x.get(k)}
    people = _names(gate, who, ids)
    for g in grants:
        g["person"] = people.get(g["patient"].removeprefix("Patient/"))
        g["role_name"] = _role(g["role"])
        g["category"] = service.REASON_CATEGORIES.get(g["reason_category"], g["reason_category"])
    for x in links:
        x["person"] = people.get(x["patient"].removeprefix("Patient/"))
        x["other"] = people.get((x.get("other_patient") or "").removeprefix("Patient/"))
        x["role_name"] = _role(x.get("requested_role"))
    return {"grants": grants, "links": links, "linkage_pairs": linkage_pairs, "status": status, "tab": "queue"}


def _person_by_nhs(gate: Gate, who: Principal, nhs: str) -> tuple[dict[str, Any] | None, str, str | None]:
    """(person, the ten digits, None), or (None, digits, what to tell the privacy officer) for a typed NHS number."""
    try:
        digits = service.normalise_nhs_number(nhs)
    except ValueError as exc:
        return None, "", f"{exc}. Check it and try again."
    found = gate.identify(who, nhs_number=digits)
    if not found:
        return None, digits, (f"No one with NHS number {digits[:3]} {digits[3:6]} {digits[6:]} is known to the shared "
                              "record.")
    return found[0], digits, None


def _from_linkage(request: dict[str, Any]) -> bool:
    return str(request.get("reason") or "").startswith(linkage.REASON_PREFIX)


@router.get("/privacy")
def queue_page(request: Request, status: str = "pending", done: str = ""):
    """Emergency access (break glass) waiting for review, and requests to link two records of one person."""
    return service_page(request, "roles/privacy_queue.html", lambda gate, who: {
        **_queue(gate, who, status if status in ("pending", "reviewed", "all") else "pending"), "done": done})


@router.post("/privacy/reviews/{grant_id}")
def review_submit(request: Request, who: Viewer, grant_id: str, outcome: str = Form(""), note: str = Form("")):
    try:
        service.record_review(gate_of(request), who, grant_id, outcome=outcome or None, note=note or None)
    except FhirError as exc:
        if exc.status in (403, 404):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        message = {"value": "Choose whether the emergency access was appropriate or not.",
                   "required": "Say what was inappropriate: it goes to the follow-up."}.get(exc.issues[0].get("code"),
                                                                                            exc.diagnostics)
        return service_page(request, "roles/privacy_queue.html", lambda gate, w: {
            **_queue(gate, w, "pending"), "error": {"grant": grant_id, "message": message,
                                                    "outcome": outcome, "note": note}}, who=who, status=exc.status)
    return RedirectResponse("/privacy?done=review", status_code=303)


@router.post("/privacy/links/{request_id}")
def link_submit(request: Request, who: Viewer, request_id: str, outcome: str = Form(""), note: str = Form("")):
    try:
        gate = gate_of(request)
        pending = {x["id"]: x for x in service.link_requests(gate, who, status="pending")}
        # a pair from record linkage is decided as its review page decides it: an approval also records Patient.link
        decide = linkage.decide_review if _from_linkage(pending.get(request_id) or {}) else service.decide_link
        decide(gate, who, request_id, outcome=outcome or None, note=note or None)
    except FhirError as exc:
        if exc.status in (403, 404):
            return error_page(request, exc.status, exc.diagnostics, who=who)
        return service_page(request, "roles/privacy_queue.html", lambda gate, w: {
            **_queue(gate, w, "pending"), "link_error": {"id": request_id, "message": "Choose approve or reject.",
                                                         "note": note}}, who=who, status=exc.status)
    return RedirectResponse("/privacy?done=link", status_code=303)


# -- the audit search ---------------------------------------------------------------------------------------------
def _nhs_digits(text: str) -> str:
    return re.sub(r"[\s-]", "", text or "")


def audit_search(gate: Gate, who: Principal, *, nhs: str, user: str, since: str, until: str, offset: int) -> dict[str, Any]:
    form = {"nhs": nhs, "user": user, "since": since, "until": until}
    ctx: dict[str, Any] = {"form": form, "entries": None, "error": None, "tab": "audit", "offset": offset}
    if not any(form.values()):
        return ctx
    params: list[tuple[str, str]] = [("_count", str(COUNT)), ("_offset", str(offset))]
    person = None
    if nhs:
        person, _digits, error = _person_by_nhs(gate, who, nhs)
        if error:
            return {**ctx, "error": error}
        params.append(("patient", person["id"]))
    if user.strip():
        params.append(("agent-name", user.strip()))
    for value, prefix, what in ((since, "ge", "From"), (until, "le", "To")):
        if value:
            try:
                day = date.fromisoformat(value)
            except ValueError:
                return {**ctx, "error": f"{what} date '{value}' is not a date: use the date picker (day, month, year)."}
            params.append(("date", f"{prefix}{day.isoformat()}" + ("T23:59:59Z" if prefix == "le" else "")))
    result = gate.search(who, "AuditEvent", params, query_text="privacy officer audit search")
    entries = [access_entry(s.content) for s in result.matches]
    pids = set()
    for e, s in zip(entries, result.matches):
        e["patient_id"] = next((w.removeprefix("Patient/") for w in e["what"] if w.startswith("Patient/")),
                               (s.content.get("_patient") or None))
        e["what_text"] = ", ".join(dict.fromkeys(PLAIN_TYPES.get(w.split("/")[0], w.split("/")[0].lower())
                                                 for w in e["what"] if "/" in w and not w.startswith(("Patient/",
                                                                                                      "page:"))))
        e["action_text"] = ACTIONS.get(e["action"] or "", (e["action"] or "").replace("-", " ").capitalize())
        e["role"] = _role(e["role"]) if e["role"] else None
        page_area = next((area_of(w.removeprefix("page:")) for w in e["what"] if w.startswith("page:")), None)
        if any(w.startswith("page:") for w in e["what"]):
            e["what_text"] = f"the {page_area['menu']} pages" if page_area else "a page"
        if e["patient_id"]:
            pids.add(e["patient_id"])
    people = _names(gate, who, pids)
    for e in entries:
        e["person"] = people.get(e["patient_id"] or "")
    return {**ctx, "entries": entries, "total": result.total, "person": person, "more": result.has_more,
            "next_offset": offset + len(entries)}


@router.get("/privacy/audit")
def audit_page(request: Request, nhs: str = "", user: str = "", since: str = "", until: str = "", offset: int = 0):
    """Search the audit trail by person (NHS number), user name and dates."""
    return service_page(request, "roles/privacy_audit.html", lambda gate, who: audit_search(
        gate, who, nhs=nhs.strip(), user=user.strip(), since=since.strip(), until=until.strip(),
        offset=max(0, min(offset, 10_000))))


# -- subject access -----------------------------------------------------------------------------------------------
def _sar(gate: Gate, who: Principal, nhs: str) -> dict[str, Any]:
    digits = service.normalise_nhs_number(nhs)
    people = gate.identify(who, nhs_number=digits)
    if not people:
        raise LookupError(f"No one with NHS number {digits[:3]} {digits[3:6]} {digits[6:]} is known to the shared "
                          "record.")
    records = []
    for p in people:
        entries = gate.subject_access(who, p["id"])
        gate.flush_audit()
        total, log = gate.access_log(who, p["id"], count=100_000)
        records.append({"person": p, "entries": [s.content for s in entries], "access_log": log,
                        "access_log_total": total})
    return {"nhs_number": digits, "records": records}


@router.get("/privacy/subject-access")
def sar_page(request: Request, nhs: str = ""):
    """Find the person by NHS number; the report itself is a download (their whole record and its access log)."""
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        ctx: dict[str, Any] = {"nhs": nhs, "tab": "sar", "person": None, "error": None}
        if nhs.strip():
            person, digits, error = _person_by_nhs(gate, who, nhs)
            if error:
                return {**ctx, "error": error}
            ctx["person"] = person
            ctx["digits"] = digits
        return ctx

    return service_page(request, "roles/privacy_sar.html", build)


@router.post("/privacy/subject-access")
def sar_download(request: Request, who: Viewer, nhs: str = Form("")):
    """The subject access report as a JSON file (the person's entries and who accessed their record)."""
    try:
        report = _sar(gate_of(request), who, nhs)
    except FhirError as exc:
        return error_page(request, exc.status, exc.diagnostics, who=who)
    except (ValueError, LookupError) as exc:
        return page(request, "roles/privacy_sar.html", {"nhs": nhs, "tab": "sar", "person": None,
                                                        "error": str(exc)}, who=who, status=422)
    doc = {"report": "subject access report", "nhs_number": report["nhs_number"], "generated_by": who.name,
           "records": [{"patient": f"Patient/{r['person']['id']}", "entries": r["entries"],
                        "access_log": r["access_log"], "access_log_total": r["access_log_total"]}
                       for r in report["records"]]}
    return Response(orjson.dumps(doc, option=orjson.OPT_INDENT_2), media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="subject-access-{report["nhs_number"]}.json"'})


# -- sharing choices ----------------------------------------------------------------------------------------------
@router.get("/privacy/choices")
def choices_page(request: Request):
    """People's objections to sharing and National Data Opt-outs in force, and changes made on their behalf."""
    def build(gate: Gate, who: Principal) -> dict[str, Any]:
        choices = gate.choices_in_force(who)
        changes = service.choice_changes(gate, who)
        people = _names(gate, who, {c["patient_id"] for c in choices} |
                        {c["patient"].removeprefix("Patient/") for c in changes})
        for c in choices:
            c["person"] = people.get(c["patient_id"])
            c["words"] = CHOICE_WORDS.get(c["kind"], c["kind"].replace("-", " "))
        for c in changes:
            c["person"] = people.get(c["patient"].removeprefix("Patient/"))
        return {"choices": choices, "changes": changes, "tab": "choices"}

    return service_page(request, "roles/privacy_choices.html", build)
