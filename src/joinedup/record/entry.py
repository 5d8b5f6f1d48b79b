"""One entry of a person's record opened in full: the source entry in plain words (a letter's or discharge
summary's text from its DocumentReference attachment or Composition sections, a consultation, an encounter), who
recorded it, for which organisation and when, and its version history.

Everything is read through the gate as the reader (`Gate.read`, `Gate.history`): an entry they may not see is
refused exactly as the gate refuses it, and nothing of it is shown.
"""

from __future__ import annotations

import base64
import binascii
import re
from html.parser import HTMLParser
from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.fhir.words import status_words
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.record import service

MAX_TEXT = 200_000  # characters of a document's text shown on the page
# Who wrote an entry, by type: the FHIR R4 element naming its author (first one present wins).
AUTHOR_PATHS: dict[str, tuple[str, ...]] = {
    "Condition": ("recorder", "asserter"), "AllergyIntolerance": ("recorder", "asserter"),
    "MedicationRequest": ("requester", "recorder"), "MedicationStatement": ("informationSource",),
    "Observation": ("performer",), "DiagnosticReport": ("resultsInterpreter", "performer"),
    "DocumentReference": ("author", "authenticator"), "Composition": ("author", "attester.party"),
    "Encounter": ("participant.individual",), "Procedure": ("recorder", "asserter", "performer.actor"),
    "Immunization": ("performer.actor",), "ServiceRequest": ("requester",), "Communication": ("sender",),
    "CommunicationRequest": ("requester",), "Appointment": ("participant.actor",), "CarePlan": ("author",),
    "Goal": ("expressedBy",), "Flag": ("author",), "EpisodeOfCare": ("careManager",), "Task": ("requester",),
    "ClinicalImpression": ("assessor",), "QuestionnaireResponse": ("author",), "Consent": ("performer",),
}
# When an entry was recorded (or happened), by type.
DATE_PATHS: dict[str, tuple[str, ...]] = {
    "Condition": ("recordedDate", "onsetDateTime"), "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "MedicationRequest": ("authoredOn",), "MedicationStatement": ("dateAsserted", "effectiveDateTime",
                                                                  "effectivePeriod.start"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "issued"), "DiagnosticReport": ("issued",
                                                                                                   "effectiveDateTime"),
    "DocumentReference": ("date", "context.period.start"), "Composition": ("date",),
    "Encounter": ("period.start",), "Procedure": ("performedDateTime", "performedPeriod.start"),
    "Immunization": ("occurrenceDateTime", "recorded"), "ServiceRequest": ("authoredOn",),
    "Communication": ("sent", "received"), "Appointment": ("start", "created"), "CarePlan": ("created",
                                                                                              "period.start"),
    "Goal": ("startDate", "statusDate"), "Flag": ("period.start",), "EpisodeOfCare": ("period.start",),
    "Task": ("authoredOn",), "ClinicalImpression": ("date",), "CareTeam": ("period.start",),
    "RelatedPerson": ("period.start",),
}
TYPE_WORDS: dict[str, str] = {
    "Condition": "Problem", "AllergyIntolerance": "Allergy or adverse reaction", "MedicationRequest": "Prescription",
    "MedicationStatement": "Medicines list entry", "Observation": "Result or observation",
    "DiagnosticReport": "Test report", "DocumentReference": "Letter or document", "Composition": "Document",
    "Encounter": "Contact", "Procedure": "Procedure", "Immunization": "Immunisation", "ServiceRequest": "Referral",
    "Communication": "Message", "Appointment": "Appointment", "CarePlan": "Care plan", "Goal": "Goal",
    "Flag": "Alert", "EpisodeOfCare": "Episode of care", "CareTeam": "Care team", "RelatedPerson": "Personal contact",
    "Task": "Task", "ClinicalImpression": "Clinical review", "Consent": "Sharing choice",
}
# The colour class of each care setting's badge (as on the person page).
BADGE = {"GP practice": "gp", "Hospital": "hospital", "Community": "community", "Mental health": "mental",
         "Social care": "social", "Pharmacy": "pharmacy", "Care home": "carehome", "Other": "other"}
# Elements that are bookkeeping, not content (not listed among an entry's details).
_SKIP = {"resourceType", "id", "meta", "text", "contained", "extension", "modifierExtension", "subject", "patient",
         "identifier", "implicitRules", "language", "content", "section", "payload", "note", "status",
         "lifecycleStatus"}
# References that lead to another entry of the person's record (the consultation or admission an entry belongs
# to, the request it answers, the problem it is for), opened in turn on their own pages.
RELATED_PATHS = ("encounter", "context.encounter", "context", "basedOn", "partOf", "reasonReference",
                 "inResponseTo", "episodeOfCare", "addresses", "focus", "derivedFrom", "hasMember")


def open_entry(*, gate: Gate, who: Principal, patient_id: str, rtype: str, rid: str) -> dict[str, Any]:
    """The entry `rtype/rid` of this person's record, with its text, author, organisation, dates and versions."""
    stored = gate.read(who, rtype, rid)  # refused (403) as the gate refuses it; 404/410 when it is not there
    person = gate.read(who, "Patient", patient_id)
    records = _records_of(gate, who, person.content or {})
    if stored.patient_id not in records and not (rtype == "Patient" and rid in records):
        raise FhirError(404, "This entry is not part of this person's record.", code="not-found")
    res = stored.content or {}
    names: dict[str, str] = {}
    dead, died = service.death_of([person.content or {}])
    organisation = _org_name(gate, who, res, names)
    _, versions = gate.history(who, rtype=rtype, rid=rid, count=100)
    return {
        "pid": patient_id, "person": human_name(person.content or {}), "deceased": dead, "deceased_date": died,
        "rtype": rtype, "kind": TYPE_WORDS.get(rtype, _words(rtype)), "title": _title(res),
        "status": _status(rtype, res), "author": _author(gate, who, rtype, res, names),
        "organisation": organisation, "setting": service.organisation_source(
            {"name": organisation} if organisation else None, None).setting,
        "recorded": _first(res, DATE_PATHS.get(rtype, ())), "updated": stored.last_updated,
        "details": _details(gate, who, res, names), "text": _texts(gate, who, res),
        "notes": [n.get("text") for n in res.get("note") or [] if n.get("text")],
        "related": _related(gate, who, res, records),
        "versions": _versions(gate, who, rtype, versions, names),
    }


def _related(gate: Gate, who: Principal, res: dict[str, Any], records: set[str]) -> list[dict[str, str]]:
    """Other entries of the person's record this one points to, that the reader may open (each read through the
    gate; refused ones are left out, so nothing of them shows)."""
    out, seen = [], set()
    for path in RELATED_PATHS:
        for ref in _get(res, path):
            r = ref.get("reference") if isinstance(ref, dict) else None
            m = re.fullmatch(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})", r or "")
            if not m or r in seen:
                continue
            seen.add(r)
            try:
                target = gate.read(who, m.group(1), m.group(2))
            except FhirError:
                continue
            if target.patient_id in records:
                out.append({"ref": r, "kind": TYPE_WORDS.get(m.group(1), _words(m.group(1))),
                            "title": _title(target.content or {})})
    return out


def _records_of(gate: Gate, who: Principal, patient: dict[str, Any]) -> set[str]:
    """The person's records the reader may open: this one, the ones it links to and those with its NHS number."""
    ids = {patient.get("id", "")}
    ids |= {(lk.get("other") or {}).get("reference", "").split("/", 1)[-1] for lk in patient.get("link") or []}
    nhs = service._nhs_number(patient)
    if nhs:
        try:
            found = gate.search(who, "Patient", [("identifier", f"{service.NHS_SYSTEM}|{nhs}"), ("_count", "20")])
            ids |= {s.id for s in found.matches}
        except FhirError as exc:
            if exc.status != 403:
                raise
    ids.discard("")
    return ids


# -- reading the entry --------------------------------------------------------------------------------------
def _get(node: Any, path: str) -> list[Any]:
    """Values at a dotted path (lists flattened)."""
    nodes = [node]
    for part in path.split("."):
        nxt = []
        for n in nodes:
            v = n.get(part) if isinstance(n, dict) else None
            if isinstance(v, list):
                nxt += v
            elif v is not None:
                nxt.append(v)
        nodes = nxt
    return nodes


def _first(res: dict[str, Any], paths: tuple[str, ...]) -> str | None:
    for p in paths:
        for v in _get(res, p):
            if isinstance(v, str):
                return v
    return None


def _concept(cc: Any) -> str:
    if isinstance(cc, list):
        return "; ".join(x for x in (_concept(c) for c in cc) if x)
    if not isinstance(cc, dict):
        return ""
    return cc.get("text") or next((c.get("display") for c in cc.get("coding") or [] if c.get("display")), "") or ""


def _title(res: dict[str, Any]) -> str:
    for key in ("code", "medicationCodeableConcept", "type", "serviceType", "category", "class"):
        v = res.get(key)
        text = _concept(v) or (v.get("display") if isinstance(v, dict) else "")
        if text:
            return text
    desc = res.get("description")
    if isinstance(desc, str) and desc:
        return desc
    if _concept(desc):
        return _concept(desc)
    if isinstance(res.get("title"), str) and res["title"]:
        return res["title"]
    if res.get("name"):
        return human_name(res)
    return TYPE_WORDS.get(res.get("resourceType", ""), "Entry")


def _status(rtype: str, res: dict[str, Any]) -> str:
    code = res.get("status") or res.get("lifecycleStatus")
    if not code and isinstance(res.get("clinicalStatus"), dict):
        code = next((c.get("code") for c in res["clinicalStatus"].get("coding") or []), None)
    return status_words(rtype, code) if isinstance(code, str) else ""


def _name(gate: Gate, who: Principal, ref: Any, names: dict[str, str]) -> str:
    """A person's or organisation's name from a Reference (read through the gate; its display if refused)."""
    if not isinstance(ref, dict):
        return ""
    r = ref.get("reference") or ""
    if r not in names:
        names[r] = ref.get("display") or ""
        rtype, _, rid = r.partition("/")
        if rtype in ("Practitioner", "Organization", "PractitionerRole", "RelatedPerson", "Patient", "Location",
                     "HealthcareService", "CareTeam") and rid:
            try:
                content = gate.read(who, rtype, rid).content or {}
                if rtype == "PractitionerRole":
                    inner = _name(gate, who, content.get("practitioner"), names)
                    role = _concept(content.get("code"))
                    names[r] = ", ".join(x for x in (inner, role) if x) or names[r]
                elif rtype in ("Organization", "Location", "HealthcareService", "CareTeam"):
                    names[r] = content.get("name") or names[r]
                else:
                    names[r] = human_name(content) or names[r]
            except FhirError:
                pass
    return names[r] or ref.get("display") or ""


def _org_name(gate: Gate, who: Principal, res: dict[str, Any], names: dict[str, str]) -> str:
    src = (res.get("meta") or {}).get("source")
    if isinstance(src, str) and src.startswith("Patient/"):
        return "The person themselves"
    if isinstance(src, str) and src.startswith("Organization/"):
        return _name(gate, who, {"reference": src}, names) or "an organisation not in the directory"
    return ""


def _author(gate: Gate, who: Principal, rtype: str, res: dict[str, Any], names: dict[str, str]) -> str:
    for path in AUTHOR_PATHS.get(rtype, ()):
        found = [_name(gate, who, r, names) for r in _get(res, path) if isinstance(r, dict)]
        found = [x for x in found if x]
        if found:
            return ", ".join(dict.fromkeys(found))
    return ""


def _value(gate: Gate, who: Principal, v: Any, names: dict[str, str]) -> str:
    """A FHIR element in words (concepts by their text, references by name, quantities with units)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        return f"{v:g}"
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "; ".join(x for x in (_value(gate, who, i, names) for i in v) if x)
    if not isinstance(v, dict):
        return ""
    if "reference" in v or ("display" in v and len(v) == 1):
        return _name(gate, who, v, names)
    if "coding" in v or "text" in v and isinstance(v.get("text"), str) and len(v) <= 2:
        return _concept(v)
    if "value" in v and isinstance(v.get("value"), (int, float)):
        return f"{v['value']:g} {v.get('unit') or v.get('code') or ''}".strip()
    if "start" in v or "end" in v:
        return " to ".join(x for x in (v.get("start"), v.get("end")) if x)
    if "low" in v or "high" in v:
        lo, hi = (_value(gate, who, v.get(k), names) for k in ("low", "high"))
        return f"{lo} to {hi}" if lo and hi else (f"at least {lo}" if lo else f"up to {hi}")
    return "; ".join(f"{_words(k)}: {t}" for k, x in v.items() if k not in ("extension", "id")
                     for t in [_value(gate, who, x, names)] if t)


def _details(gate: Gate, who: Principal, res: dict[str, Any], names: dict[str, str]) -> list[tuple[str, str]]:
    """Every element of the entry in words, bookkeeping left out."""
    out = []
    for key, v in res.items():
        if key in _SKIP:
            continue
        text = _value(gate, who, v, names)
        if text:
            out.append((_words(key), text))
    return out


def _words(key: str) -> str:
    text = re.sub(r"(?<!^)(?=[A-Z])", " ", key).lower()
    text = re.sub(r" (date time|period|string|quantity|codeable concept|reference|boolean)$", "", text)
    return text[:1].upper() + text[1:]


class _Text(HTMLParser):
    """Plain text of XHTML narrative (no markup is ever rendered from an entry)."""

    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCK:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("• ")

    def handle_endtag(self, tag):
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)


def plain_text(xhtml: str) -> str:
    p = _Text()
    p.feed(xhtml or "")
    p.close()
    return re.sub(r"\n\s*\n+", "\n\n", "".join(p.parts)).strip()


def _texts(gate: Gate, who: Principal, res: dict[str, Any]) -> list[dict[str, str]]:
    """The words of the entry: a document's attachments (inline data or text), Composition sections, message
    payloads, else its narrative."""
    out: list[dict[str, str]] = []
    for c in res.get("content") or []:
        att = c.get("attachment") or {}
        text = _attachment(gate, who, att)
        if text:
            out.append({"title": att.get("title") or "", "text": text[:MAX_TEXT]})
    for s in _sections(res.get("section") or []):
        out.append(s)
    for p in res.get("payload") or []:
        if p.get("contentString"):
            out.append({"title": "", "text": p["contentString"][:MAX_TEXT]})
        elif p.get("contentAttachment"):
            text = _attachment(gate, who, p["contentAttachment"])
            if text:
                out.append({"title": p["contentAttachment"].get("title") or "", "text": text[:MAX_TEXT]})
    if not out and (res.get("text") or {}).get("div"):
        out.append({"title": "", "text": plain_text(res["text"]["div"])[:MAX_TEXT]})
    return out


def _sections(sections: list[dict[str, Any]], depth: int = 0) -> list[dict[str, str]]:
    out = []
    for s in sections:
        text = plain_text((s.get("text") or {}).get("div") or "")
        if text or s.get("title"):
            out.append({"title": s.get("title") or _concept(s.get("code")), "text": text[:MAX_TEXT]})
        if depth < 4:
            out += _sections(s.get("section") or [], depth + 1)
    return out


def _attachment(gate: Gate, who: Principal, att: dict[str, Any]) -> str:
    """Text of an attachment: inline base64 data of a text type, or a Binary / Composition it points to."""
    ctype = (att.get("contentType") or "text/plain").split(";")[0].strip().lower()
    if att.get("data"):
        try:
            raw = base64.b64decode(att["data"], validate=False).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            return ""
        if ctype in ("text/html", "application/xhtml+xml"):
            return plain_text(raw)
        return raw if ctype.startswith("text/") else ""
    url = att.get("url") or ""
    m = re.fullmatch(r"(?:.*/)?(Composition|Binary)/([A-Za-z0-9\-.]{1,64})", url)
    if m:
        try:
            target = gate.read(who, m.group(1), m.group(2)).content or {}
        except FhirError:
            return ""
        if m.group(1) == "Composition":
            return "\n\n".join(f"{s['title']}\n{s['text']}" if s["title"] else s["text"]
                               for s in _sections(target.get("section") or []))
        return _attachment(gate, who, {"contentType": target.get("contentType"), "data": target.get("data")})
    return ""


def _versions(gate: Gate, who: Principal, rtype: str, rows: list[dict[str, Any]],
              names: dict[str, str]) -> list[dict[str, Any]]:
    """Each version the reader may see, newest first: when, by whom (organisation and person where recorded),
    what changed from the version before."""
    ordered = sorted(rows, key=lambda r: r.get("version") or 0)
    out = []
    prev: dict[str, Any] | None = None
    for row in ordered:
        content = row.get("content") or {}
        edited = next((e for e in (content.get("meta") or {}).get("extension") or []
                       if e.get("url") == codes.LAST_EDITED_BY), None)
        by = ""
        if edited:
            parts = {p.get("url"): p for p in edited.get("extension") or []}
            who_ref = (parts.get("practitioner") or parts.get("patient") or {}).get("valueReference")
            org_ref = (parts.get("organization") or {}).get("valueReference")
            by = ", ".join(x for x in (_name(gate, who, who_ref, names), _name(gate, who, org_ref, names)) if x)
        if row.get("deleted"):
            what = "Removed"
        elif prev is None:
            what = "First recorded"
        else:
            changed = sorted(_words(k) for k in set(content) | set(prev) if k not in ("meta", "text", "id")
                             and content.get(k) != prev.get(k))
            what = ("Changed: " + ", ".join(changed).lower()) if changed else "Saved again with no change"
            if content.get("status") != prev.get("status") and content.get("status"):
                what += f" (now {status_words(rtype, content.get('status')).lower()})"
        out.append({"version": row.get("version"), "when": row.get("last_updated"), "by": by, "what": what})
        if not row.get("deleted"):
            prev = content
    return list(reversed(out))
