"""The holistic view: merge one person's resources from every organisation into a summary and a timeline.

Everything is read through the one gate (`Gate.everything` for the person, plus a search for other records
with the same NHS number and one for organisations named only in meta.source); nothing here touches the store.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from joinedup.fhir import codes
from joinedup.fhir import words as fhir_words
from joinedup.fhir.errors import FhirError
from joinedup.fhir.search_params import split_reference
from joinedup.fhir.values import age_on as _age
from joinedup.fhir.values import human_name as _human_name
from joinedup.governance import policy
from joinedup.governance.gate import Gate, Withheld
from joinedup.governance.identity import Principal
from joinedup.record.models import (
    Alert,
    Allergy,
    CarePackage,
    Carer,
    Event,
    Flag,
    GpPractice,
    Medicine,
    MedicineEntry,
    NextStep,
    Person,
    Problem,
    ProblemEntry,
    Professional,
    Provenance,
    Referral,
    Result,
    ResultPoint,
    SectionAccess,
    Source,
    Summary,
    Timeline,
    WhatMatters,
)

NHS_SYSTEM = codes.NHS_NUMBER
# what the person added to their own record themselves (meta.source Patient/...)
PERSON_SOURCE = Source(id=None, name="The person themselves", setting="The person")
TIMELINE_TYPES = ("encounter", "appointment", "episode", "referral", "advice", "document")
CHART_POINTS = 12
_ACTIVE_MED = {"active", "on-hold", "intended"}
_STOPPED_MED = {"stopped", "completed", "cancelled", "entered-in-error", "not-taken"}
_OPEN_REFERRAL = {"draft", "active", "on-hold"}
# Which kinds of entry each section of the summary is built from (to say what is not shown, and why).
SECTION_TYPES: dict[str, tuple[str, ...]] = {
    "alerts": ("Flag",),
    "problems": ("Condition",),
    "medicines": ("MedicationRequest", "MedicationStatement"),
    "allergies": ("AllergyIntolerance",),
    "results": ("Observation",),
    "what_matters": ("CarePlan", "Goal"),
    "key_worker": ("CareTeam",),
    "care_team": ("CareTeam",),
    "carers": ("RelatedPerson",),
    "referrals": ("ServiceRequest", "Communication"),
    "social_care": ("EpisodeOfCare",),
    "next_steps": ("Appointment", "ServiceRequest", "Communication"),
    "timeline": ("Encounter", "Appointment", "EpisodeOfCare", "ServiceRequest", "Communication", "DocumentReference"),
}
# Kinds of entry in plain words (one, many).
KIND_WORDS: dict[str, tuple[str, str]] = {
    "Condition": ("problem", "problems"), "MedicationRequest": ("prescription", "prescriptions"),
    "MedicationStatement": ("medicines list entry", "medicines list entries"),
    "AllergyIntolerance": ("allergy", "allergies"), "Observation": ("result or observation", "results and observations"),
    "Flag": ("alert", "alerts"), "CarePlan": ("care plan", "care plans"), "Goal": ("goal", "goals"),
    "CareTeam": ("care team", "care teams"), "RelatedPerson": ("personal contact", "personal contacts"),
    "ServiceRequest": ("referral", "referrals"), "Communication": ("message", "messages"),
    "EpisodeOfCare": ("episode of care", "episodes of care"), "Encounter": ("contact", "contacts"),
    "Appointment": ("appointment", "appointments"), "DocumentReference": ("letter or document", "letters and documents"),
    "Task": ("task", "tasks"), "Procedure": ("procedure", "procedures"), "Immunization": ("immunisation", "immunisations"),
}
# Every kind of entry the summary and the timeline are built from, and the directory entries they name (sources,
# care team members, locations, referral recipients, medicines given by reference). Only these are read: a lifetime
# record's procedures, immunisations, claims and the like are never shown here, so reading, deciding and parsing
# them would only make the view slower as the record grows. Each section's "not shown" counts are of its own kinds,
# as before, and whether anything of the record is withheld at the person's request or restricted is still asked of
# the whole record (`_record_and_withheld`).
RECORD_TYPES = frozenset({"Patient", "Flag", "Condition", "MedicationRequest", "MedicationStatement",
                          "AllergyIntolerance", "Observation", "CarePlan", "Goal", "CareTeam", "RelatedPerson",
                          "ServiceRequest", "Communication", "EpisodeOfCare", "Appointment", "Encounter",
                          "DocumentReference"})
NAMED_TYPES = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService",
                         "Medication", "Group"})
SUMMARY_TYPES = RECORD_TYPES | NAMED_TYPES
AT_REQUEST = "Some information in this record is withheld at the person's request."
SEALED = ("Some entries are restricted to the organisation that recorded them; ask that organisation if you need "
          "them.")
_RESUSCITATION = re.compile(r"(?i:resuscitat|dnacpr|\bdnar\b)|\bReSPECT\b")


# -- public functions ---------------------------------------------------------------------------------------
def summarise(*, gate: Gate, who: Principal, patient_id: str, today: date | None = None) -> Summary:
    """The whole person on one screen: every section, every item with its source and freshness."""
    bundle = _gather(gate=gate, who=who, patient_id=patient_id, withheld=True)
    return _build(bundle, today=today or datetime.now(UTC).date(), who=who)


# The summary API's answers (JSON), by (database, person, reader's role, day), each with what it was built from: every
# entry's (type, id, version, lastUpdated) as the gate returned them to this reader, and what the gate withheld.
# Every request still reads the record through the gate (one decision per entry, one audit event) and the
# answer is reused only when all of that is the same, so it is what building it again would give (any write to any
# entry changes its version; any change in what the reader may see changes the entries or the tally).
ANSWERS_KEPT = 64
_answers: OrderedDict[tuple, tuple[tuple, bytes, bytes]] = OrderedDict()
_answers_lock = threading.Lock()
_GENERATED = b'"generated":"'


def summary_json(*, gate: Gate, who: Principal, patient_id: str, today: date | None = None) -> bytes:
    """`summarise` as the JSON the API answers with; built again only when what the gate returned for this reader
    changed since the last answer to a reader of the same role about the same person on the same day."""
    day = today or datetime.now(UTC).date()
    bundle = _gather(gate=gate, who=who, patient_id=patient_id, withheld=True)
    key = (gate.database_url, patient_id, who.role, day)
    made = (tuple(bundle.read), tuple(sorted(bundle.withheld.by_type.items())), bundle.withheld.at_request,
            bundle.withheld.sealed, tuple(bundle.linked_records))
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    with _answers_lock:
        hit = _answers.get(key)
        if hit is not None and hit[0] == made:
            _answers.move_to_end(key)
            return hit[1] + now + hit[2]
    body = _build(bundle, today=day, who=who).model_dump_json().encode()
    at = body.rfind(_GENERATED) + len(_GENERATED)
    head, tail = body[:at], body[body.index(b'"', at):]
    with _answers_lock:
        _answers[key] = (made, head, tail)
        _answers.move_to_end(key)
        while len(_answers) > ANSWERS_KEPT:
            _answers.popitem(last=False)
    return head + now + tail


def timeline(*, gate: Gate, who: Principal, patient_id: str, setting: str | None = None,
             type: str | None = None, today: date | None = None) -> Timeline:
    """Contacts across settings, newest first, optionally filtered by setting and by type."""
    if type and type not in TIMELINE_TYPES:
        raise FhirError(400, f"Unknown timeline type '{type}': use one of {', '.join(TIMELINE_TYPES)}",
                        code="value")
    bundle = _gather(gate=gate, who=who, patient_id=patient_id)
    bundle.fill()
    events = _timeline(bundle, today or datetime.now(UTC).date())
    return filter_timeline(patient_id=patient_id, events=events, setting=setting, type=type)


def filter_timeline(*, patient_id: str, events: list[Event], setting: str | None = None,
                    type: str | None = None) -> Timeline:
    """Narrow a timeline to one setting and/or one type of event."""
    settings = sorted({e.setting for e in events})
    types = [t for t in TIMELINE_TYPES if any(e.type == t for e in events)]
    chosen = [e for e in events if (not setting or e.setting == setting) and (not type or e.type == type)]
    return Timeline(patient=patient_id, total=len(chosen), settings=settings, types=types, events=chosen)


def parse_search(*, text: str) -> list[tuple[str, str]]:
    """FHIR Patient search parameters for what a person typed: NHS number, date of birth and/or name."""
    text = (text or "").strip()
    params: list[tuple[str, str]] = []
    digits = re.sub(r"[\s-]", "", text)
    if digits.isdigit() and len(digits) == 10:
        return [("identifier", f"{NHS_SYSTEM}|{digits}")]
    rest = []
    for word in text.replace(",", " ").split():
        d = parse_date(word)
        if d:
            params.append(("birthdate", d))
        else:
            rest.append(word)
    for word in rest:
        params.append(("name", word))
    return params


def parse_date(text: str) -> str | None:
    """ISO date from 'YYYY-MM-DD' or 'DD/MM/YYYY' (UK order), else None."""
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", text) or None
    if m:
        y, mo, d = (int(x) for x in m.groups())
    else:
        m = re.fullmatch(r"(\d{1,2})[/.](\d{1,2})[/.](\d{4})", text)
        if not m:
            return None
        d, mo, y = (int(x) for x in m.groups())
    try:
        return date(y, mo, d).isoformat()
    except ValueError:
        return None


def my_patients(*, gate: Gate, who: Principal, limit: int = 200,
                include_deceased: bool = False) -> list[dict[str, Any]]:
    """People the professional cares for: in their care team, or registered with them as usual GP. People who
    have died are left out unless `include_deceased` (then each row says so)."""
    if not who.practitioner_id:
        return []
    me = f"Practitioner/{who.practitioner_id}"
    found: dict[str, dict[str, Any]] = {}
    reasons: dict[str, set[str]] = {}

    def add(patient: dict[str, Any], reason: str) -> None:
        pid = patient.get("id")
        if not pid:
            return
        found.setdefault(pid, patient)
        reasons.setdefault(pid, set()).add(reason)

    try:
        gp = gate.search(who, "Patient", [("general-practitioner", me), ("_count", str(limit))])
        for s in gp.matches:
            add(s.content, "usual GP")
    except FhirError as exc:
        if exc.status != 403:
            raise
    try:
        teams = gate.search(who, "CareTeam", [("participant", me), ("_include", "CareTeam:subject"),
                                              ("_count", str(limit))])
        patients = {s.id: s.content for s in teams.included if s.rtype == "Patient"}
        for s in teams.matches:
            role = "care team"
            for p in s.content.get("participant") or []:
                if (p.get("member") or {}).get("reference") == me and _role_text(p):
                    role = f"care team ({_role_text(p)})"
            ref = (s.content.get("subject") or {}).get("reference", "")
            pid = ref.split("/", 1)[1] if ref.startswith("Patient/") else None
            if pid and pid in patients:
                add(patients[pid], role)
    except FhirError as exc:
        if exc.status != 403:
            raise
    out = []
    for pid, p in found.items():
        dead, died = death_of([p])
        if dead and not include_deceased:
            continue
        out.append({"id": pid, "name": _human_name(p), "nhs_number": _nhs_number(p), "birth_date": p.get("birthDate"),
                    "gender": p.get("gender"), "why": ", ".join(sorted(reasons[pid])), "deceased": dead,
                    "deceased_date": died})
    out.sort(key=lambda r: (r["name"].split(" ")[-1].lower(), r["name"].lower()))
    return out


def find_by_nhs_number(*, gate: Gate, who: Principal, nhs_number: str) -> list[dict[str, Any]]:
    """Patients holding this NHS number (the person's main record first)."""
    result = gate.search(who, "Patient", [("identifier", f"{NHS_SYSTEM}|{nhs_number}"), ("_count", "20")])
    people = [s.content for s in result.matches]
    people.sort(key=lambda p: (bool(p.get("link")) is False and bool(p.get("generalPractitioner")) is False,
                               p.get("id", "")))
    return people


# -- gathering ----------------------------------------------------------------------------------------------
class _Bundle:
    """The person's resources, indexed, with the organisation directory needed to name sources."""

    def __init__(self, patient_id: str) -> None:
        self.patient_id = patient_id
        self.patient: dict[str, Any] = {}
        self.by_type: dict[str, list[tuple[dict[str, Any], str]]] = {}
        self.by_ref: dict[str, dict[str, Any]] = {}
        self.linked_records: list[str] = []
        self.read: list[tuple[str, str, int, str]] = []  # (type, id, version, lastUpdated) of all the gate returned
        self._taken: list[Any] = []  # returned entries not yet indexed (`fill`: only when a view is built)
        self._refs: set[str] = set()  # "Type/id" of every returned entry
        self.withheld = Withheld()
        self.count = 0
        self._sources: dict[str | None, Source] = {}
        self._by_source: dict[str, Source] = {}  # meta.source -> Source (asked for every entry, often twice)

    def add(self, content: dict[str, Any], last_updated: str) -> None:
        rtype = content.get("resourceType")
        ref = f"{rtype}/{content.get('id')}"
        if ref in self.by_ref:
            return
        self.by_ref[ref] = content
        self.by_type.setdefault(rtype, []).append((content, last_updated))
        self.count += 1

    def take(self, stored: Iterable[Any]) -> None:
        """Note what the gate returned (Stored entries) with each entry's version; `fill` indexes them."""
        for s in stored:
            self.read.append((s.rtype, s.id, s.version, s.last_updated))
            if s.content is not None:
                self._taken.append(s)
                self._refs.add(f"{s.rtype}/{s.id}")

    def fill(self) -> None:
        """Index what was taken, in the order the gate returned it (the first of an entry returned twice wins)."""
        for s in self._taken:
            self.add(s.content, s.last_updated)
        self._taken = []

    def of(self, rtype: str) -> list[tuple[dict[str, Any], str]]:
        return self.by_type.get(rtype, [])

    def source(self, content: dict[str, Any]) -> Source:
        src = (content.get("meta") or {}).get("source")
        known = self._by_source.get(src) if isinstance(src, str) else None
        if known is not None:
            return known
        if isinstance(src, str):
            known = self._by_source[src] = self._source(src)
            return known
        return self._source(src)

    def _source(self, src: Any) -> Source:
        if isinstance(src, str) and src.startswith("Patient/"):
            return PERSON_SOURCE
        org_id = src.split("/", 1)[1] if isinstance(src, str) and src.startswith("Organization/") else None
        hit = self._sources.get(org_id)
        if hit is None:
            org = self.by_ref.get(f"Organization/{org_id}") if org_id else None
            hit = self._sources[org_id] = organisation_source(org, org_id)
        return hit

    def prov(self, content: dict[str, Any], last_updated: str, recorded: str | None) -> Provenance:
        return Provenance(ref=f"{content.get('resourceType')}/{content.get('id')}", source=self.source(content),
                          recorded=_day(recorded), last_updated=_instant(last_updated))

    def name_of(self, ref: str | None) -> str | None:
        if not ref:
            return None
        res = self.by_ref.get(ref)
        if res is None:
            return None
        if res.get("resourceType") in ("Practitioner", "Patient", "RelatedPerson"):
            return _human_name(res)
        return res.get("name") or res.get("title")


def _gather(*, gate: Gate, who: Principal, patient_id: str, withheld: bool = False) -> _Bundle:
    b = _Bundle(patient_id)
    if withheld:
        stored, hidden = _record_and_withheld(gate, who, patient_id)
        b.withheld.merge(hidden)
    else:
        stored = gate.everything(who, patient_id, types=set(SUMMARY_TYPES), shared=True)
    b.take(stored)
    b.patient = next((s.content for s in b._taken if s.rtype == "Patient" and s.id == patient_id), None) or {}
    # other organisations' records of the same person: linked explicitly, or holding the same NHS number
    others = {(lk.get("other") or {}).get("reference", "").split("/", 1)[-1]
              for lk in b.patient.get("link") or [] if (lk.get("other") or {}).get("reference", "")
              .startswith("Patient/")}
    nhs = _nhs_number(b.patient)
    if nhs:
        try:
            same = gate.search(who, "Patient", [("identifier", f"{NHS_SYSTEM}|{nhs}"), ("_count", "20")])
            others.update(s.id for s in same.matches)
        except FhirError as exc:
            if exc.status != 403:
                raise
    others.discard(patient_id)
    others.discard("")
    for other in sorted(others):
        try:
            found, hidden = _record_and_withheld(gate, who, other) if withheld else \
                (gate.everything(who, other, types=set(SUMMARY_TYPES), shared=True), None)
            b.take(found)
            b.linked_records.append(f"Patient/{other}")
            if hidden is not None:
                b.withheld.merge(hidden)
        except FhirError as exc:
            if exc.status not in (403, 404, 410):
                raise
    # organisations named only in meta.source (one directory search through the gate)
    wanted = set()
    for s in b._taken:
        src = (s.content.get("meta") or {}).get("source")
        if isinstance(src, str) and src.startswith("Organization/") and src not in b._refs:
            wanted.add(src.split("/", 1)[1])
    if wanted:
        try:
            orgs = gate.search(who, "Organization", [("_id", ",".join(sorted(wanted))),
                                                     ("_count", str(len(wanted)))])
            b.take(orgs.matches)
        except FhirError as exc:
            if exc.status != 403:
                raise
    return b


def _record_and_withheld(gate: Gate, who: Principal, patient_id: str) -> tuple[list[Any], Withheld]:
    """The entries of one record the view is built from (SUMMARY_TYPES), and what of the whole record is withheld
    from `who`. Usually one read of those types; when an entry of another type could be withheld (a private or
    sealed entry, an objection to sharing), one read of the whole record, so that "withheld at the person's
    request" and "restricted" stay true of the record, keeping the same entries as the narrow read."""
    if not gate.may_withhold_beyond(who, patient_id, RECORD_TYPES):
        return gate.everything_and_withheld(who, patient_id, types=set(SUMMARY_TYPES), shared=True)
    found, hidden = gate.everything_and_withheld(who, patient_id, shared=True)
    kept = [s for s in found if s.rtype in RECORD_TYPES]
    named: list[str] = []
    for s in kept:
        _references(s.content, named)
    wanted = set(named)
    return kept + [s for s in found if s.rtype in NAMED_TYPES and s.rtype not in RECORD_TYPES
                   and f"{s.rtype}/{s.id}" in wanted], hidden


def _references(node: Any, out: list[str]) -> None:
    """Every literal reference in a resource (as the gate collects those it reads with a record)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                t, i = split_reference(v)
                if t and i:
                    out.append(f"{t}/{i}")
            elif isinstance(v, (dict, list)):
                _references(v, out)
    elif isinstance(node, list):
        for item in node:
            _references(item, out)


# -- organisations and settings -----------------------------------------------------------------------------
_SETTING_WORDS = [
    ("Mental health", ("mental health", "psychiatr", "memory assessment", "talking therap")),
    ("Social care", ("social care", "council", "social services", "local authority")),
    ("Care home", ("care home", "nursing home", "residential home")),
    ("Pharmacy", ("pharmacy", "chemist")),
    ("Community", ("community", "district nursing")),
    ("Hospital", ("hospital", "infirmary", "acute", "teaching hospitals", "foundation trust")),
    ("GP practice", ("surgery", "medical centre", "medical center", "health centre", "practice", "primary care")),
]
_ODS_PREFIX = [(re.compile(r"^[A-HJ-NP-Z]\d{5}$"), "GP practice"), (re.compile(r"^F[A-Z0-9]{4}$"), "Pharmacy"),
               (re.compile(r"^V[A-Z0-9]{4}$"), "Care home")]


def organisation_source(org: dict[str, Any] | None, org_id: str | None) -> Source:
    """Name and care setting of an organisation (from its name, type and ODS code)."""
    if org is None:
        return Source(id=org_id, name=f"Organisation {org_id}" if org_id else "Unknown organisation",
                      setting=_setting_from_text(org_id or "") or "Other")
    name = org.get("name") or f"Organisation {org_id}"
    setting = _setting_from_text(name)
    if setting is None:
        for ident in org.get("identifier") or []:
            if "ods" in (ident.get("system") or ""):
                for pattern, s in _ODS_PREFIX:
                    if pattern.match(ident.get("value") or ""):
                        setting = s
        types = " ".join(c.get("display") or c.get("code") or "" for t in org.get("type") or []
                         for c in t.get("coding") or [])
        setting = setting or _setting_from_text(types) or "Other"
    return Source(id=org_id, name=name, setting=setting)


def _setting_from_text(text: str) -> str | None:
    t = text.lower()
    for setting, words in _SETTING_WORDS:
        if any(w in t for w in words):
            return setting
    if t.startswith("org-gp"):
        return "GP practice"
    return None


# -- building the summary -----------------------------------------------------------------------------------
def death_of(patients: Iterable[dict[str, Any]]) -> tuple[bool, str | None]:
    """(deceased, date of death) from Patient.deceasedBoolean / deceasedDateTime on any of the person's records."""
    dead, when = False, None
    for p in patients:
        if p.get("deceasedDateTime"):
            dead = True
            when = min(when or p["deceasedDateTime"], p["deceasedDateTime"])
        elif p.get("deceasedBoolean") is True:
            dead = True
    return dead, _day(when)


def _build(b: _Bundle, *, today: date, who: Principal | None = None) -> Summary:
    b.fill()
    p = b.patient
    p_lu = next((lu for c, lu in b.of("Patient") if c is p), None)
    mine = {b.patient_id} | {r.split("/", 1)[1] for r in b.linked_records}
    dead, died = death_of(c for c, _ in b.of("Patient") if c.get("id") in mine)
    age_day = date.fromisoformat(died) if died and re.fullmatch(r"\d{4}-\d{2}-\d{2}", died) else today
    person = Person(id=b.patient_id, name=_human_name(p), nhs_number=_nhs_number(p), birth_date=p.get("birthDate"),
                    age=None if dead and not died else _age(p.get("birthDate"), age_day), gender=p.get("gender"),
                    address=_address(p), telecom=[t.get("value") for t in p.get("telecom") or [] if t.get("value")],
                    deceased=dead, deceased_date=died, provenance=b.prov(p, p_lu or "", None))
    key_worker, care_team = _care_team(b)
    events = _timeline(b, today)
    orgs: dict[str | None, Source] = {}
    for items in b.by_type.values():
        for content, _ in items:
            if content.get("resourceType") in ("Organization", "Practitioner", "PractitionerRole", "Location"):
                continue
            src = b.source(content)
            if src.id:
                orgs.setdefault(src.id, src)
    medicines, alerts, referrals = _medicines(b), _alerts(b), _referrals(b)
    warnings = [a for a in alerts if _RESUSCITATION.search(f"{a.text} {a.category or ''}")]
    steps = _next_steps(events, referrals)
    if dead:  # the dead have no current medicines, alerts or next steps
        for m in medicines:
            m.current = False
        alerts, warnings, steps = [], [], []
    summary = Summary(
        person=person, gp_practice=_gp(b), key_worker=key_worker, care_team=care_team,
        problems=_problems(b), medicines=medicines, allergies=_allergies(b), results=_results(b),
        timeline=events, referrals=referrals, social_care=_social_care(b), carers=_carers(b),
        alerts=alerts, what_matters=_what_matters(b), next_steps=steps, warnings=warnings,
        organisations=sorted(orgs.values(), key=lambda s: (s.setting, s.name)),
        linked_records=b.linked_records, resources=b.count,
        generated=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    shown = {"alerts": len(alerts), "problems": sum(1 for x in summary.problems if x.active),
             "medicines": len(medicines), "allergies": len(summary.allergies), "results": len(summary.results),
             "what_matters": len(summary.what_matters), "key_worker": int(key_worker is not None),
             "care_team": len(care_team), "carers": len(summary.carers), "referrals": len(referrals),
             "social_care": len(summary.social_care), "next_steps": len(steps), "timeline": len(events)}
    summary.access = {name: section_access(b.withheld, SECTION_TYPES[name], n, who) for name, n in shown.items()}
    return summary


def role_words(who: Principal | None) -> str:
    """'a social worker': the reader's role in words, with its article."""
    display = ((policy.rules()["roles"].get(who.role if who else "") or {}).get("display") or "your role")
    if display == "your role":
        return display
    display = display.split(" / ")[0]
    display = display if display[:3].isupper() else display[:1].lower() + display[1:]
    return ("an " if display[:1].lower() in "aeiou" else "a ") + display


def kinds_words(counts: dict[str, int]) -> str:
    """'12 prescriptions and 3 problems'."""
    parts = [f"{n} {KIND_WORDS.get(t, (t, t))[0 if n == 1 else 1]}" for t, n in sorted(counts.items()) if n]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1] if parts else ""


def section_access(withheld: Withheld, types: Iterable[str], shown: int, who: Principal | None) -> SectionAccess:
    """Why a section shows what it shows: the gate's count of entries of its kinds the reader's role may not see,
    and whether anything is withheld at the person's request or sealed (never which entries)."""
    hidden = {t: withheld.by_type[t] for t in types if withheld.by_type.get(t)}
    notes = []
    if hidden:
        n = sum(hidden.values())
        notes.append(f"{kinds_words(hidden)} {'is' if n == 1 else 'are'} recorded but not shown to "
                     f"{role_words(who)}. Ask the person's GP or care team if you need {'it' if n == 1 else 'them'}.")
    if withheld.at_request:
        notes.append(AT_REQUEST)
    if withheld.sealed:
        notes.append(SEALED)
    if shown:
        state = "shown"
    elif hidden:
        state = "not shown to your role"
    elif withheld.at_request:
        state = "withheld at the person's request"
    elif withheld.sealed:
        state = "restricted by the recording organisation"
    else:
        state = "none recorded"
    return SectionAccess(shown=shown, state=state, not_shown_to_role={KIND_WORDS.get(t, (t, t))[1]: n
                                                                     for t, n in sorted(hidden.items())},
                         withheld_at_request=withheld.at_request, restricted=withheld.sealed,
                         note=" ".join(notes) or None, role_note=notes[0] if hidden else None)


def _next_steps(events: list[Event], referrals: list[Referral]) -> list[NextStep]:
    """What happens next: booked appointments and planned contacts (soonest first), then open referrals and
    advice requests (oldest first)."""
    upcoming = sorted((e for e in events if e.upcoming), key=lambda e: e.date or "9999")
    out = [NextStep(what=e.title, when=_day(e.date), kind=e.type, status=e.status, provenance=e.provenance)
           for e in upcoming]
    out += [NextStep(what=r.title + (f" to {r.to}" if r.to else ""), when=r.date, kind=r.kind, status=r.status,
                     provenance=r.provenance) for r in sorted(referrals, key=lambda r: r.date or "")]
    return out


def _gp(b: _Bundle) -> GpPractice:
    out = GpPractice()
    for g in b.patient.get("generalPractitioner") or []:
        ref = g.get("reference") or ""
        if ref.startswith("Organization/") and not out.practice:
            out.practice, out.practice_id = b.name_of(ref) or g.get("display") or ref, ref.split("/", 1)[1]
        elif ref.startswith("Practitioner") and not out.usual_gp:
            out.usual_gp, out.usual_gp_id = b.name_of(ref) or g.get("display") or ref, ref.split("/", 1)[1]
    return out


def _care_team(b: _Bundle) -> tuple[Professional | None, list[Professional]]:
    key_worker = None
    members: dict[str, Professional] = {}
    for team, lu in b.of("CareTeam"):
        if team.get("status") not in (None, "active", "proposed"):
            continue
        prov = b.prov(team, lu, (team.get("period") or {}).get("start"))
        for part in team.get("participant") or []:
            ref = (part.get("member") or {}).get("reference")
            if not ref:
                continue
            role = _role_text(part)
            org = b.name_of((part.get("onBehalfOf") or {}).get("reference"))
            pro = Professional(name=b.name_of(ref) or (part.get("member") or {}).get("display") or ref, role=role,
                               organisation=org, practitioner_id=ref.split("/", 1)[1], provenance=prov)
            members.setdefault(ref, pro)
            if role and re.search(r"key worker|care co-?ordinator|care navigator", role, re.IGNORECASE) and key_worker is None:
                key_worker = pro
    return key_worker, list(members.values())


def _problems(b: _Bundle) -> list[Problem]:
    groups: dict[str, Problem] = {}
    for c, lu in b.of("Condition"):
        if _code(c.get("verificationStatus")) in ("entered-in-error", "refuted"):
            continue
        concept = c.get("code") or {}
        sct = next((x for x in concept.get("coding") or [] if "snomed" in (x.get("system") or "")), None)
        coding = sct or next(iter(concept.get("coding") or []), None) or {}
        display = concept.get("text") or coding.get("display") or "Unnamed problem"
        key = f"sct:{sct['code']}" if sct and sct.get("code") else f"text:{_norm(display)}"
        status = _code(c.get("clinicalStatus")) or "active"
        onset = _day(c.get("onsetDateTime") or (c.get("onsetPeriod") or {}).get("start"))
        entry = ProblemEntry(display=display, status=status, onset=onset,
                             provenance=b.prov(c, lu, c.get("recordedDate") or onset))
        prob = groups.get(key)
        if prob is None:
            prob = groups[key] = Problem(key=key, display=coding.get("display") or display, code=coding.get("code"),
                                         system=coding.get("system"), active=False, entries=[])
        prob.entries.append(entry)
    out = []
    for prob in groups.values():
        prob.active = any(e.status in ("active", "recurrence", "relapse") for e in prob.entries)
        onsets = {e.onset for e in prob.entries if e.onset}
        prob.onset = min(onsets) if onsets else None
        prob.entries.sort(key=lambda e: (e.provenance.source.setting != "GP practice", e.provenance.source.name))
        # a date given only to the month or year agrees with any day inside it
        if any(not (a.startswith(b) or b.startswith(a)) for a in onsets for b in onsets):
            per = "; ".join(f"{e.provenance.source.name}: {e.onset}" for e in prob.entries if e.onset)
            prob.notes.append(f"Onset differs between records ({per})")
        out.append(prob)
    out.sort(key=lambda p: (not p.active, p.display.lower()))
    return out


_FORM = frozenset("""tablet tablets capsule capsules caplet caplets dispersible soluble effervescent modified release
gastro-resistant gastro resistant oral solution suspension liquid injection cream ointment gel inhaler inhalers spray
drops patch patches chewable film-coated coated sugar free mg microgram micrograms mcg ml g unit units dose doses
sachet sachets powder for e/c m/r mr sr xl""".split())


def _ingredient_words(component: str) -> str:
    """The ingredient words of one component: those before the strength, form words dropped."""
    words = []
    for w in re.split(r"\s+", component.strip()):
        lw = w.lower().strip("(),")
        if not lw or re.search(r"\d", lw):
            break
        if lw in _FORM:
            continue
        words.append(lw)
    return " ".join(words)


def medicine_key(concept: dict[str, Any] | None) -> tuple[str, str]:
    """(ingredient key, readable name) of a medication concept: the words before the strength, form dropped.
    Combination products named with " / " between components (dm+d style, e.g. "Beclometasone 100micrograms/dose /
    Formoterol 6micrograms/dose inhaler") keep every ingredient, so they never merge with a single-ingredient
    product."""
    concept = concept or {}
    text = concept.get("text") or next((c.get("display") for c in concept.get("coding") or []
                                        if c.get("display")), None) or ""
    key = _ingredients_key(text)
    if key:
        return key, key[:1].upper() + key[1:]
    code = next((c.get("code") for c in concept.get("coding") or [] if c.get("code")), None)
    return (f"code:{code}" if code else "unknown"), (text or "Unnamed medicine")


@lru_cache(maxsize=8192)
def _ingredients_key(text: str) -> str:
    """The ingredient words of every component of a product's name (a long record names the same few products
    hundreds of times: each name is split once)."""
    return " / ".join(w for w in (_ingredient_words(c) for c in re.split(r"\s+/\s+", text.strip())) if w)


class _Prov:
    """Provenance of an entry the medicines section may not show (a long record has hundreds of prescriptions
    of which it shows the latest per organisation): a plain object until it is shown."""

    __slots__ = ("ref", "source", "recorded", "last_updated")

    def __init__(self, ref: str, source: Source, recorded: str | None, last_updated: str | None) -> None:
        self.ref, self.source, self.recorded, self.last_updated = ref, source, recorded, last_updated


class _Dose:
    """One prescription or medicines-list entry with the fields of `MedicineEntry`, made one only when shown."""

    __slots__ = ("kind", "product", "dose", "status", "date", "note", "provenance")

    def __init__(self, kind: str, product: str, dose: str | None, status: str, date: str | None, note: str | None,
                 provenance: _Prov) -> None:
        self.kind, self.product, self.dose, self.status, self.date, self.note = kind, product, dose, status, date, note
        self.provenance = provenance

    def entry(self, *, earlier: int) -> MedicineEntry:
        p = self.provenance
        return MedicineEntry(kind=self.kind, product=self.product, dose=self.dose, status=self.status,
                             date=self.date, note=self.note, earlier=earlier,
                             provenance=Provenance(ref=p.ref, source=p.source, recorded=p.recorded,
                                                   last_updated=p.last_updated))


def _medicines(b: _Bundle) -> list[Medicine]:
    groups: dict[str, tuple[str, list[_Dose]]] = {}

    def add(res: dict[str, Any], lu: str, kind: str, dosage: list[dict[str, Any]] | None, when: str | None) -> None:
        concept = res.get("medicationCodeableConcept")
        if concept is None:
            mref = (res.get("medicationReference") or {}).get("reference")
            concept = (b.by_ref.get(mref) or {}).get("code") if mref else None
            concept = concept or {"text": (res.get("medicationReference") or {}).get("display") or ""}
        key, name = medicine_key(concept)
        product = concept.get("text") or next((c.get("display") for c in concept.get("coding") or []
                                               if c.get("display")), name)
        dose = next((d.get("text") for d in dosage or [] if d.get("text")), None)
        note = next((n.get("text") for n in res.get("note") or [] if n.get("text")), None)
        sr = res.get("statusReason")
        reason = _text_list(sr) if isinstance(sr, list) else _text(sr)
        entry = _Dose(kind, product, dose, res.get("status") or "unknown", _day(when), reason or note,
                      _Prov(f"{res.get('resourceType')}/{res.get('id')}", b.source(res), _day(when),
                            _instant(lu)))
        groups.setdefault(key, (name, []))[1].append(entry)

    for r, lu in b.of("MedicationRequest"):
        if r.get("intent") in ("plan", "proposal") or r.get("status") == "draft":
            continue
        add(r, lu, "prescription", r.get("dosageInstruction"), r.get("authoredOn"))
    for r, lu in b.of("MedicationStatement"):
        when = r.get("dateAsserted") or (r.get("effectivePeriod") or {}).get("end") \
            or (r.get("effectivePeriod") or {}).get("start") or r.get("effectiveDateTime")
        add(r, lu, "statement", r.get("dosage"), when)

    out = []
    for key, (name, entries) in groups.items():
        latest: dict[tuple[str | None, str], _Dose] = {}
        counts: dict[tuple[str | None, str], int] = {}
        for e in sorted(entries, key=lambda e: (e.date or "", e.provenance.ref)):
            k = (e.provenance.source.id, e.kind)
            counts[k] = counts.get(k, 0) + 1
            latest[k] = e
        shown = []
        for k, e in latest.items():
            shown.append(e.entry(earlier=counts[k] - 1))
        shown.sort(key=lambda e: (e.provenance.source.setting != "GP practice", -_ord(e.date)))
        chosen = {id(e) for e in latest.values()}
        superseded = [e for e in entries if id(e) not in chosen]
        med = Medicine(key=key, name=name, current=any(e.status in _ACTIVE_MED for e in shown), entries=shown,
                       flags=_reconcile(shown) + _earlier_changes(shown, superseded))
        out.append(med)
    out.sort(key=lambda m: (not m.current, not m.flags, m.name.lower()))
    return out


def _reconcile(entries: list[MedicineEntry]) -> list[Flag]:
    """Discrepancies between organisations' latest entries for one medicine."""
    flags: list[Flag] = []
    gp_active = [e for e in entries if e.kind == "prescription" and e.status in _ACTIVE_MED
                 and e.provenance.source.setting == "GP practice"]
    others = [e for e in entries if e.provenance.source.setting != "GP practice" or e.kind == "statement"]
    for g in gp_active:
        for o in others:
            if o.provenance.source.id == g.provenance.source.id:
                continue
            if o.status in _STOPPED_MED and _ord(o.date) >= _ord(g.date):
                where = "at discharge" if o.provenance.source.setting == "Hospital" else "by " + o.provenance.source.name
                flags.append(Flag(kind="stopped_elsewhere_still_on_gp_list", severity="high",
                                  text=f"Stopped {where} ({o.provenance.source.name}, {o.date or 'date unknown'})"
                                       f" but still on the GP repeat list ({g.provenance.source.name})"))
    active = [e for e in entries if e.status in _ACTIVE_MED]
    doses = {}
    for e in active:
        if e.dose:
            doses.setdefault(_norm(e.dose), []).append(e)
    if len(doses) > 1:
        ordered = sorted(doses.values(), key=lambda g: -max(_ord(e.date) for e in g))
        parts = "; ".join(f"'{g[0].dose}' from " + ", ".join(
            f"{e.provenance.source.name} ({e.date or 'undated'})" for e in g) for g in ordered)
        flags.append(Flag(kind="dose_differs", severity="warning", text=f"Different doses: {parts}"))
    products = {_norm(e.product) for e in active}
    if len(products) > 1 and len(doses) <= 1:
        flags.append(Flag(kind="product_differs", severity="info",
                          text="Different products recorded: " + "; ".join(
                              f"{e.provenance.source.name}: {e.product}" for e in active)))
    return flags


def _earlier_changes(shown: list[MedicineEntry], superseded: list[_Dose]) -> list[Flag]:
    """Changes made by another organisation after the GP's prescription, since superseded by a later entry."""
    flags = []
    for g in shown:
        if g.kind != "prescription" or g.status not in _ACTIVE_MED or g.provenance.source.setting != "GP practice":
            continue
        for e in superseded:
            if e.provenance.source.id == g.provenance.source.id or _ord(e.date) < _ord(g.date):
                continue
            if e.status in _STOPPED_MED:
                what = "stopped"
            elif e.dose and g.dose and _norm(e.dose) != _norm(g.dose):
                what = f"changed to '{e.dose}'"
            else:
                continue
            flags.append(Flag(kind="earlier_change", severity="info",
                              text=f"{e.provenance.source.name} {what} on {e.date}; its later list no longer "
                                   f"shows this change: check which is intended"))
    return flags


def _allergies(b: _Bundle) -> list[Allergy]:
    out = []
    for a, lu in b.of("AllergyIntolerance"):
        if _code(a.get("verificationStatus")) in ("entered-in-error", "refuted"):
            continue
        reaction = "; ".join(m.get("text") or next((c.get("display") for c in m.get("coding") or []), "") or ""
                             for r in a.get("reaction") or [] for m in r.get("manifestation") or []) or None
        out.append(Allergy(substance=_text(a.get("code")) or "Unnamed substance", reaction=reaction,
                           criticality=a.get("criticality"), status=_code(a.get("clinicalStatus")),
                           provenance=b.prov(a, lu, a.get("recordedDate") or a.get("onsetDateTime"))))
    return out


@lru_cache(maxsize=1)
def result_display() -> dict[str, Any]:
    """Short names, clinical direction and cited default ranges of results (knowledge/record/results.yaml)."""
    text = resources.files("joinedup.knowledge").joinpath("record/results.yaml").read_text()
    return yaml.safe_load(text)["results"]


# FHIR R4 ObservationInterpretation (http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation) codes
_INTERPRETATION = {"H": "high", "HH": "high", "HU": "high", ">": "high", "L": "low", "LL": "low", "LU": "low",
                   "<": "low", "A": "abnormal", "AA": "abnormal", "N": "normal"}


def _own_range(o: dict[str, Any]) -> tuple[float | None, float | None]:
    """The referenceRange the result carries (for the whole observation; components carry their own)."""
    for rr in o.get("referenceRange") or []:
        lo, hi = (rr.get("low") or {}).get("value"), (rr.get("high") or {}).get("value")
        if lo is not None or hi is not None:
            return lo, hi
    return None, None


def _flag(value: float, o: dict[str, Any], lo: float | None, hi: float | None) -> str | None:
    for cc in o.get("interpretation") or []:
        for c in cc.get("coding") or []:
            if c.get("code") in _INTERPRETATION:
                return _INTERPRETATION[c["code"]]
    if hi is not None and value > hi:
        return "high"
    if lo is not None and value < lo:
        return "low"
    if lo is not None or hi is not None:
        return "normal"
    return None


def _meaning(trend: str, better: str | None, prev: float | None, value: float, lo: float | None,
             hi: float | None) -> str:
    """Whether a change is good or bad news, by the result's clinical direction."""
    if trend in ("none", "steady"):
        return trend
    if better == "higher":
        return "better" if trend == "up" else "worse"
    if better == "lower":
        return "better" if trend == "down" else "worse"
    if prev is not None and (lo is not None or hi is not None):
        def distance(x: float) -> float:
            return max((lo - x) if lo is not None else 0, (x - hi) if hi is not None else 0, 0)
        d0, d1 = distance(prev), distance(value)
        return "better" if d1 < d0 else "worse" if d1 > d0 else "changed"
    return "changed"


def _results(b: _Bundle) -> list[Result]:
    series: dict[str, list[tuple[str, float, str, str | None, dict, str]]] = {}
    for o, lu in b.of("Observation"):
        if o.get("status") in ("entered-in-error", "cancelled"):
            continue
        when = o.get("effectiveDateTime") or (o.get("effectivePeriod") or {}).get("start") or o.get("issued")
        if not when:
            continue
        parts = [(o.get("code"), o.get("valueQuantity"))]
        parts += [(c.get("code"), c.get("valueQuantity")) for c in o.get("component") or []]
        for concept, q in parts:
            if not q or not isinstance(q.get("value"), (int, float)):
                continue
            coding = next((c for c in (concept or {}).get("coding") or [] if "loinc" in (c.get("system") or "")),
                          None) or next(iter((concept or {}).get("coding") or []), {})
            code = coding.get("code") or _norm(_text(concept) or "")
            display = coding.get("display") or _text(concept) or code
            series.setdefault(code, []).append((when, float(q["value"]), display, q.get("unit"), o, lu))
    out = []
    known = result_display()
    for code, points in series.items():
        points.sort(key=lambda p: p[0])
        when, value, display, unit, o, lu = points[-1]
        prev = points[-2][1] if len(points) > 1 else None
        k = known.get(code) or {}
        own_lo, own_hi = (None, None) if o.get("component") else _own_range(o)
        if own_lo is not None or own_hi is not None:
            lo, hi, source, verified = own_lo, own_hi, "as reported with the result", True
        elif ("low" in k or "high" in k) and (not k.get("unit") or _norm(k["unit"]) == _norm(unit or "")):
            lo, hi = k.get("low"), k.get("high")
            source, verified = f"usual adult range: {k.get('source')}", bool(k.get("verified"))
        else:
            lo = hi = source = None
            verified = True
        # an unverified default range is shown, never used to flag; a panel's interpretation is not its parts'
        flag = _flag(value, {} if o.get("component") else o, lo if verified else None, hi if verified else None)
        trend = _trend(prev, value)
        out.append(Result(code=code, display=k.get("short") or _short_display(display), unit=unit, latest=value,
                          latest_date=_day(when), previous=prev, trend=trend, count=len(points),
                          points=[ResultPoint(date=_day(p[0]), value=p[1]) for p in points[-CHART_POINTS:]],
                          full_name=display, low=lo, high=hi, range_source=source, range_verified=verified,
                          flag=flag, better=k.get("better"),
                          trend_meaning=_meaning(trend, k.get("better"), prev, value, lo, hi),
                          provenance=b.prov(o, lu, when)))
    out.sort(key=lambda r: r.latest_date, reverse=True)
    return out


def _trend(prev: float | None, value: float) -> str:
    if prev is None:
        return "none"
    if abs(value - prev) <= max(abs(prev) * 0.03, 1e-9):
        return "steady"
    return "up" if value > prev else "down"


def _short_display(display: str) -> str:
    return {"Oxygen saturation in Arterial blood by Pulse oximetry": "Oxygen saturation (pulse oximetry)",
            "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood by "
            "Creatinine-based formula (CKD-EPI)": "eGFR (CKD-EPI)"}.get(display, display)


def _timeline(b: _Bundle, today: date) -> list[Event]:
    now = today.isoformat()
    events: list[Event] = []

    def add(res: dict[str, Any], lu: str, *, when: str | None, end: str | None, etype: str, title: str,
            detail: str | None = None, status: str | None = None, upcoming: bool | None = None) -> None:
        src = b.source(res)
        day = _day(when)
        up = upcoming if upcoming is not None else bool(day and day > now)
        events.append(Event(date=when, end=end, kind=res["resourceType"], type=etype, title=title, detail=detail,
                            status=status, setting=src.setting, upcoming=up, provenance=b.prov(res, lu, when)))

    for e, lu in b.of("Encounter"):
        period = e.get("period") or {}
        title = _text_list(e.get("type")) or (e.get("class") or {}).get("display") or "Contact"
        where = b.name_of(_first_reference(e.get("location"), "location"))
        who = b.name_of(_first_reference(e.get("participant"), "individual"))
        detail = ", ".join(x for x in (_text(e.get("serviceType")), who, where) if x) or None
        add(e, lu, when=period.get("start"), end=period.get("end"), etype="encounter", title=title, detail=detail,
            status=e.get("status"), upcoming=e.get("status") in ("planned", "arrived") or None)
    for a, lu in b.of("Appointment"):
        title = a.get("description") or _text_list(a.get("serviceType")) or _text(a.get("appointmentType")) \
            or "Appointment"
        add(a, lu, when=a.get("start"), end=a.get("end"), etype="appointment", title=title,
            status=a.get("status"), upcoming=(a.get("status") in ("booked", "pending", "proposed")
                                              and _day(a.get("start") or "") >= now) or None)
    for ep, lu in b.of("EpisodeOfCare"):
        period = ep.get("period") or {}
        manager = b.name_of((ep.get("careManager") or {}).get("reference"))
        add(ep, lu, when=period.get("start"), end=period.get("end"), etype="episode",
            title=_text_list(ep.get("type")) or "Episode of care", detail=f"Care manager: {manager}" if manager else None,
            status=ep.get("status"), upcoming=False)
    for sr, lu in b.of("ServiceRequest"):
        to = ", ".join(b.name_of(p.get("reference")) or p.get("display") or "" for p in sr.get("performer") or [])
        add(sr, lu, when=sr.get("authoredOn"), end=None, etype="referral",
            title=_text(sr.get("code")) or _text_list(sr.get("category")) or "Referral",
            detail=f"To {to}" if to else None, status=sr.get("status"), upcoming=False)
    for c, lu in b.of("Communication"):
        text = next((p.get("contentString") for p in c.get("payload") or [] if p.get("contentString")), None)
        add(c, lu, when=c.get("sent") or c.get("received"), end=None, etype="advice",
            title=_text_list(c.get("category")) or "Message", detail=text, status=c.get("status"), upcoming=False)
    for d, lu in b.of("DocumentReference"):
        if d.get("status") == "entered-in-error":
            continue
        title = _text(d.get("type")) or next((x.get("attachment", {}).get("title") for x in d.get("content") or []),
                                             None) or "Document"
        period = (d.get("context") or {}).get("period") or {}
        detail = f"{period.get('start')} to {period.get('end')}" if period.get("start") else None
        add(d, lu, when=d.get("date"), end=None, etype="document", title=title, detail=detail,
            status=d.get("status"), upcoming=False)
    events.sort(key=lambda e: e.date or "", reverse=True)
    return events


def _referrals(b: _Bundle) -> list[Referral]:
    out = []
    for sr, lu in b.of("ServiceRequest"):
        if sr.get("status") not in _OPEN_REFERRAL:
            continue
        to = ", ".join(b.name_of(p.get("reference")) or p.get("display") or "" for p in sr.get("performer") or [])
        out.append(Referral(kind="referral", title=_text(sr.get("code")) or "Referral", status=sr.get("status"),
                            date=_day(sr.get("authoredOn")), to=to or None,
                            detail=_text_list(sr.get("category")), provenance=b.prov(sr, lu, sr.get("authoredOn"))))
    answered = {(r.get("reference") or "") for c, _ in b.of("Communication") for r in c.get("inResponseTo") or []}
    for c, lu in b.of("Communication"):
        cat = _text_list(c.get("category")) or ""
        if "response" in cat.lower() or c.get("inResponseTo"):
            continue
        if f"Communication/{c.get('id')}" in answered or c.get("status") in ("entered-in-error", "stopped"):
            continue
        kind = fhir_words.message_kind(c)  # a person's request to correct their record is not an advice request
        if kind != "correction" and "advice" not in cat.lower() and "request" not in cat.lower():
            continue
        to = ", ".join(b.name_of(r.get("reference")) or "" for r in c.get("recipient") or [])
        text = next((p.get("contentString") for p in c.get("payload") or [] if p.get("contentString")), None)
        if kind == "correction":
            out.append(Referral(kind="correction request", title=fhir_words.message_words(c), status="awaiting reply",
                                date=_day(c.get("sent")), to=to or None, detail=text,
                                provenance=b.prov(c, lu, c.get("sent"))))
            continue
        out.append(Referral(kind="advice request", title=cat or "Advice request", status="awaiting reply",
                            date=_day(c.get("sent")), to=to or None, detail=text,
                            provenance=b.prov(c, lu, c.get("sent"))))
    out.sort(key=lambda r: r.date or "", reverse=True)
    return out


def _social_care(b: _Bundle) -> list[CarePackage]:
    out = []
    for ep, lu in b.of("EpisodeOfCare"):
        src = b.source(ep)
        title = _text_list(ep.get("type")) or "Episode of care"
        if src.setting not in ("Social care", "Care home") and "care package" not in title.lower():
            continue
        period = ep.get("period") or {}
        out.append(CarePackage(title=title, status=ep.get("status"), start=_day(period.get("start")),
                               end=_day(period.get("end")),
                               manager=b.name_of((ep.get("careManager") or {}).get("reference")),
                               provenance=b.prov(ep, lu, period.get("start"))))
    out.sort(key=lambda c: (c.status != "active", c.start or ""), reverse=False)
    return out


def _carers(b: _Bundle) -> list[Carer]:
    out = []
    for rp, lu in b.of("RelatedPerson"):
        if rp.get("active") is False:
            continue
        rel = ", ".join(x for x in (c.get("text") or next((k.get("display") for k in c.get("coding") or []), None)
                                    for c in rp.get("relationship") or []) if x) or None
        out.append(Carer(name=_human_name(rp), relationship=rel,
                         telecom=[t.get("value") for t in rp.get("telecom") or [] if t.get("value")],
                         provenance=b.prov(rp, lu, (rp.get("period") or {}).get("start"))))
    return out


def _alerts(b: _Bundle) -> list[Alert]:
    out = []
    for f, lu in b.of("Flag"):
        if f.get("status") != "active":
            continue
        out.append(Alert(text=_text(f.get("code")) or "Alert", category=_text_list(f.get("category")),
                         provenance=b.prov(f, lu, (f.get("period") or {}).get("start"))))
    return out


def _what_matters(b: _Bundle) -> list[WhatMatters]:
    out = []
    # the personalised care and support plan's "what matters to me" (written by or with the person)
    for p, lu in b.of("CarePlan"):
        if p.get("status") in ("revoked", "entered-in-error", "completed") or not p.get("description"):
            continue
        if not any(c.get("system") == codes.CARE_PLAN_KIND and c.get("code") == codes.CARE_PLAN_CODE
                   for cat in p.get("category") or [] for c in cat.get("coding") or []):
            continue
        by = next((e.get("valueString") for e in p.get("extension") or [] if e.get("url") == codes.WHAT_MATTERS_WRITTEN_BY), None)
        out.append(WhatMatters(text=p["description"], written_by=by, provenance=b.prov(p, lu, p.get("created"))))
    for g, lu in b.of("Goal"):
        if g.get("lifecycleStatus") in ("cancelled", "entered-in-error", "rejected"):
            continue
        text = _text(g.get("description"))
        if text:
            out.append(WhatMatters(text=text, provenance=b.prov(g, lu, g.get("startDate"))))
    for q, lu in b.of("Observation"):
        if "what matters" in (_text(q.get("code")) or "").lower() and q.get("valueString"):
            own = str((q.get("meta") or {}).get("source") or "").startswith("Patient/")
            out.append(WhatMatters(text=q["valueString"], written_by="the person" if own else None,
                                   provenance=b.prov(q, lu, q.get("effectiveDateTime"))))
    return out


# -- small helpers ------------------------------------------------------------------------------------------
def _nhs_number(res: dict[str, Any]) -> str | None:
    return next((i.get("value") for i in res.get("identifier") or [] if i.get("system") == NHS_SYSTEM), None)


def _address(res: dict[str, Any]) -> str | None:
    a = next(iter(res.get("address") or []), None)
    if not a:
        return None
    return a.get("text") or ", ".join(x for x in [*(a.get("line") or []), a.get("city"), a.get("postalCode")] if x)


def _role_text(part: dict[str, Any]) -> str | None:
    return next((r.get("text") or next((c.get("display") for c in r.get("coding") or []), None)
                 for r in part.get("role") or []), None)


def _code(cc: Any) -> str | None:
    if not isinstance(cc, dict):
        return None
    return next((c.get("code") for c in cc.get("coding") or [] if c.get("code")), None) or cc.get("text")


def _text(cc: Any) -> str | None:
    if not isinstance(cc, dict):
        return None
    return cc.get("text") or next((c.get("display") for c in cc.get("coding") or [] if c.get("display")), None)


def _first_reference(items: list[dict[str, Any]] | None, key: str) -> str | None:
    """items[0][key].reference: the first location of an encounter, its first participant."""
    for item in items or ():
        return (item.get(key) or {}).get("reference")
    return None


def _text_list(ccs: Iterable[Any] | None) -> str | None:
    for c in ccs or ():
        t = _text(c)
        if t:
            return t
    return None


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9.]+", " ", text.lower()).split())


def _day(value: str | None) -> str | None:
    return value[:10] if value else None


def _instant(value: str | None) -> str | None:
    if not value:
        return None
    return value if value.endswith("Z") else value + "Z"


def _ord(day: str | None) -> int:
    try:
        return date.fromisoformat((day or "")[:10]).toordinal()
    except ValueError:
        return 0
