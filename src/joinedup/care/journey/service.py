"""Journey tracker: where a person is in the integrated service now, since when, and what happens next.

Derived, through the gate with the caller's own access, from the person's Encounters (an open admission →
the ward; an open A&E attendance), EpisodesOfCare (care home placement, virtual ward, community caseload,
care package), Appointments (next booked), ServiceRequests and advice Communications (waiting for an answer),
Tasks (open, overdue first) and a planned discharge (the open admission's `period.end` when it lies ahead).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from joinedup.fhir import codes, words
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import concept_text as _text
from joinedup.fhir.values import reference_id as _rid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.record.service import death_of, section_access

TYPES = {"Patient", "Encounter", "EpisodeOfCare", "Appointment", "ServiceRequest", "Communication", "Task",
         "Location", "Organization", "HealthcareService"}
INPATIENT = {"IMP", "ACUTE", "NONAC"}
OPEN = {"arrived", "triaged", "in-progress", "onleave"}
WARD_SYSTEM = codes.CARE_SETTING
ADVICE_WAIT_DAYS = 180
# the kinds of entry each part of the journey is built from (to say what is not shown to the reader, and why)
WHERE_TYPES = ("Encounter", "EpisodeOfCare")
NEXT_TYPES = ("Appointment", "ServiceRequest", "Communication", "Task")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00")) if len(value) > 10 else \
            datetime.fromisoformat(value).replace(tzinfo=UTC)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def episode_kind(eoc: dict) -> str | None:
    """'virtual-ward', 'care-home', 'community' (caseload or care package) or None (e.g. GP registration)."""
    type_codes = {c.get("code") for t in eoc.get("type") or [] for c in t.get("coding") or []}
    text = " ".join(_text(t) for t in eoc.get("type") or []).lower()
    if "virtual-ward" in type_codes or "virtual ward" in text:
        return "virtual-ward"
    if any(w in text for w in ("residential", "nursing home", "care home", "placement")):
        return "care-home"
    if "registration" in text:
        return None
    if text:
        return "community"
    return None


def journey(*, gate: Gate, who: Principal, patient_id: str, now: datetime | None = None) -> dict[str, Any]:
    """{where, setting, since, days, also, next, sources} for one person, as this professional may see it."""
    now = now or datetime.now(UTC)
    items, withheld = gate.everything_and_withheld(who, patient_id, types=TYPES)
    by: dict[str, list[dict]] = {}
    for s in items:
        by.setdefault(s.rtype, []).append(s.content)
    if not by.get("Task"):  # Task is not in the FHIR patient compartment: find the person's tasks by search
        try:
            found = gate.search(who, "Task", [("patient", patient_id), ("_count", "200")])
            by["Task"] = [s.content for s in found.matches]
        except FhirError:
            by["Task"] = []
    names = {f"{r['resourceType']}/{r['id']}": r.get("name") for t in ("Location", "Organization",
                                                                          "HealthcareService")
             for r in by.get(t, [])}
    patient = next((p for p in by.get("Patient", []) if p.get("id") == patient_id), {})
    sources: set[str] = set()

    def src(r: dict) -> str | None:
        s = (r.get("meta") or {}).get("source")
        if s:
            sources.add(s)
        return names.get(s) or s

    where, setting, since, detail = "Home", "home", None, None
    nxt: list[dict[str, Any]] = []
    also: list[dict[str, Any]] = []
    encounters = [e for e in by.get("Encounter", []) if _rid(e.get("subject"), "Patient") == patient_id]
    open_adm = sorted((e for e in encounters if (e.get("class") or {}).get("code") in INPATIENT
                       and e.get("status") in OPEN), key=lambda e: (e.get("period") or {}).get("start") or "")
    open_ae = sorted((e for e in encounters if (e.get("class") or {}).get("code") == "EMER"
                      and e.get("status") in OPEN), key=lambda e: (e.get("period") or {}).get("start") or "")
    episodes = [e for e in by.get("EpisodeOfCare", []) if e.get("status") in ("active", "onhold", "waitlist")]
    deceased, died = death_of([patient])
    if deceased:
        where, setting = "Died", "died"
        since = patient.get("deceasedDateTime")
    elif open_adm:
        e = open_adm[-1]
        loc = next((_rid(x.get("location"), "Location") for x in reversed(e.get("location") or [])
                    if x.get("status") in (None, "active", "planned")), None)
        ward = names.get(f"Location/{loc}") or _text(e.get("serviceType")) or "ward not recorded"
        where, setting, since = f"Hospital: {ward}", "hospital", (e.get("period") or {}).get("start")
        detail = " · ".join(x for x in (_text(e.get("serviceType")), src(e)) if x)
        planned = (e.get("period") or {}).get("end")
        pd = _parse(planned)
        ext = next((x.get("valueDateTime") for x in e.get("extension") or []
                    if "planned-discharge" in (x.get("url") or "")), None)
        if ext and (_parse(ext) or now) >= now:
            planned, pd = ext, _parse(ext)
        if pd and pd >= now:
            nxt.append({"kind": "planned-discharge", "what": "Planned discharge", "when": planned,
                        "status": "Planned", "overdue": False, "source": f"Encounter/{e['id']}",
                        "organisation": src(e)})
    elif open_ae:
        e = open_ae[-1]
        loc = next((_rid(x.get("location"), "Location") for x in e.get("location") or []), None)
        where, setting = f"A&E: {names.get(f'Location/{loc}') or 'Emergency department'}", "a-and-e"
        since, detail = (e.get("period") or {}).get("start"), src(e)
    for eoc in sorted(episodes, key=lambda e: (e.get("period") or {}).get("start") or ""):
        kind = episode_kind(eoc)
        if kind is None:
            continue
        label = _text(eoc.get("type")) or "Episode of care"
        org = names.get(f"Organization/{_rid(eoc.get('managingOrganization'), 'Organization')}") or src(eoc)
        start = (eoc.get("period") or {}).get("start")
        if setting == "home" and kind in ("virtual-ward", "care-home"):
            where = label if kind == "virtual-ward" else f"Care home: {org or label}"
            setting, since, detail = kind, start, org
        else:
            also.append({"what": label, "kind": kind, "since": start, "organisation": org,
                         "source": f"EpisodeOfCare/{eoc['id']}"})
    if setting == "home":
        ends = [(e.get("period") or {}).get("end") for e in encounters
                if (e.get("class") or {}).get("code") in INPATIENT | {"EMER"} and e.get("status") == "finished"]
        ends += [(e.get("period") or {}).get("end") for e in by.get("EpisodeOfCare", [])
                 if episode_kind(e) in ("care-home", "virtual-ward") and e.get("status") == "finished"]
        ends = [x for x in ends if x and (_parse(x) or now) <= now]
        if ends:
            since, detail = max(ends, key=lambda x: _parse(x) or now), "since last discharge"
        else:
            reg = [(e.get("period") or {}).get("start") for e in by.get("EpisodeOfCare", [])
                   if "registration" in _text(e.get("type")).lower()]
            since = min((x for x in reg if x), default=None)
            detail = "registered with their GP practice" if since else None

    for a in by.get("Appointment", []):
        start = _parse(a.get("start"))
        if a.get("status") in ("proposed", "pending", "booked", "arrived", "checked-in", "waitlist") and \
                (start is None or start >= now):
            nxt.append({"kind": "appointment", "what": a.get("description") or _text(a.get("serviceType"))
                        or _text(a.get("appointmentType")) or "Appointment", "when": a.get("start"),
                        "status": words.status_words("Appointment", a.get("status")), "overdue": False,
                        "source": f"Appointment/{a['id']}",
                        "organisation": src(a)})
    for sr in by.get("ServiceRequest", []):
        if sr.get("status") in ("draft", "active", "on-hold"):
            advice = "advice" in " ".join(_text(c) for c in sr.get("category") or []).lower()
            nxt.append({"kind": "advice" if advice else "referral",
                        "what": _text(sr.get("code")) or ("Advice request" if advice else "Referral"),
                        "when": sr.get("authoredOn"), "status": words.request_words(sr), "overdue": False,
                        "source": f"ServiceRequest/{sr['id']}", "organisation": src(sr)})
    comms = by.get("Communication", [])
    answered = {_rid(r, "Communication") for c in comms for r in c.get("inResponseTo") or []}
    for c in comms:
        cat = " ".join(_text(x) for x in c.get("category") or []).lower()
        sent = _parse(c.get("sent"))
        kind = words.message_kind(c)
        if kind == "correction":  # a person asking for their record to be corrected: not an advice request
            if c.get("status") not in ("stopped", "entered-in-error") and \
                    (sent is None or (now - sent).days <= ADVICE_WAIT_DAYS):
                nxt.append({"kind": "correction", "what": words.message_words(c), "when": c.get("sent"),
                            "status": "Waiting for the care team", "overdue": False,
                            "source": f"Communication/{c['id']}", "organisation": src(c)})
            continue
        if "request" in cat and not c.get("inResponseTo") and c["id"] not in answered and \
                c.get("status") not in ("stopped", "entered-in-error") and \
                (sent is None or (now - sent).days <= ADVICE_WAIT_DAYS):
            nxt.append({"kind": "advice", "what": "Advice request awaiting a reply", "when": c.get("sent"),
                        "status": words.conversation_words("awaiting-reply"), "overdue": False,
                        "source": f"Communication/{c['id']}",
                        "organisation": src(c)})
    for t in by.get("Task", []):
        if t.get("status") in ("completed", "cancelled", "entered-in-error", "rejected", "failed"):
            continue
        due = ((t.get("restriction") or {}).get("period") or {}).get("end")
        dd = _parse(due)
        nxt.append({"kind": "task", "what": t.get("description") or _text(t.get("code")) or "Task", "when": due,
                    "status": words.status_words("Task", t.get("status")), "overdue": bool(dd and dd < now),
                    "source": f"Task/{t['id']}",
                    "organisation": src(t)})
    nxt.sort(key=lambda x: (not x["overdue"], x["kind"] != "planned-discharge",
                            _parse(x["when"]) or datetime.max.replace(tzinfo=UTC)))
    if deceased:  # nothing is next for someone who has died
        nxt = []
    access = {"where": section_access(withheld, WHERE_TYPES, 1, who).model_dump(),
              "next": section_access(withheld, NEXT_TYPES, len(nxt), who).model_dump()}
    sd = _parse(since)
    return {"deceased": deceased, "deceased_date": died, "access": access, "patient": patient_id, "where": where, "setting": setting, "since": since,
            "days": (now - sd).days if sd and sd <= now else None, "detail": detail, "also": also, "next": nxt,
            "overdue": sum(1 for x in nxt if x["overdue"]), "sources": sorted(sources),
            "as_of": now.strftime("%Y-%m-%dT%H:%M:%SZ")}
