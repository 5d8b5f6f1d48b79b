"""Virtual wards: acute (hospital at home) and preventive, with occupancy against capacity.

* A ward is a FHIR HealthcareService tagged `virtual-ward` (acute or preventive) with its capacity in an
  extension; wards are directory data, set up by the integration account.
* An admission is an EpisodeOfCare (type `virtual-ward`) naming the ward, the person who decided it and the
  agreed monitoring limits for this person (UCUM quantities in the measurement's own unit). Acute admissions are
  decided by a named senior clinician (consultant role); preventive admissions by a case manager (care-coordinator
  role). The person is named by their record id, their NHS number (check digit tested) or chosen from a search by
  name among the people the decider may see (`find_people`).
* What is monitored is data: knowledge/wards/measurements.yaml (care/wards/measurements.py) gives each measurement's
  LOINC code, UCUM unit and accepted units with their conversions, the values that can physically occur and the
  cited default limits (the NEWS2 bands scoring 2 or more, RCP 2017). A limit or a reading outside what can occur,
  or in a unit that is not that measurement's, is refused (422 naming the field); a reading in another known unit
  (°F, lb, mg/dL) is converted and the original kept in a note.
* Remote-monitoring readings are Observations (LOINC; blood pressure as the 85354-9 panel with systolic and
  diastolic components). A reading taken since admission outside the person's agreed limits raises a
  `monitoring-alert` notification and a flag on the ward list. Lists show every reading with its date and how long
  ago it was; a reading more than 24 hours old is stale.
* A review is a FHIR ClinicalImpression (status completed; `assessor` who, `date` when, `summary` the outcome,
  `note`, `investigation.item` the readings looked at, `supportingInfo` the EpisodeOfCare): R4 defines it as "a
  record of a clinical assessment performed to determine what problem(s) may affect the patient and before planning
  the treatments or management strategies that are best to manage a patient's condition" — a ward round review of
  the readings is exactly that (a Task would say work is to be done, not that it was done and what was found).

Case-finding for preventive wards uses the transparent complexity score of the synthetic ICS (see
docs/synthetic-population.md, "care coordinator" rule): conditions + 2×frailty + 2×dementia
+ 1.5×emergency admissions in the last year (at most 4) + 1 if living in a care home.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from joinedup.care.wards import measurements as M
from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import is_valid as valid_nhs_number
from joinedup.fhir.values import reference_id as _rid
from joinedup.governance.gate import Gate
from joinedup.governance.identity import SYSTEM, Principal
from joinedup.governance.policy import activities_of

SETTING_SYSTEM = codes.CARE_SETTING
WARD_TAG = codes.VIRTUAL_WARD_TAG
CAPACITY_URL = codes.VIRTUAL_WARD_CAPACITY
WARD_URL = codes.VIRTUAL_WARD
DECIDED_URL = codes.ADMISSION_DECIDED_BY
LIMITS_URL = codes.MONITORING_LIMITS
REVIEW_SYSTEM = codes.CODE_SYSTEM + "virtual-ward-review"
REVIEW_OUTCOME_URL = codes.EXTENSION + "virtual-ward-review-outcome"
KINDS = {"acute": "Acute virtual ward (hospital at home)", "preventive": "Preventive virtual ward"}
DECIDER = {"acute": ("consultant", "a named senior clinician (consultant)"),
           "preventive": ("care-coordinator", "a case manager (care coordinator)")}
DEFAULT_LIMITS = M.default_limits()
# what a review concluded (workflow words, the platform's own code system)
OUTCOMES = {"continue": "Continue monitoring", "limits-changed": "Limits to be changed",
            "escalated": "Escalated: visit or hospital assessment arranged", "discharge": "Ready for discharge"}
LOINC = codes.LOINC
UCUM = "http://unitsofmeasure.org"
STALE = timedelta(hours=24)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ext(res: dict, url: str) -> dict | None:
    return next((x for x in res.get("extension") or [] if x.get("url") == url), None)


# -- wards ------------------------------------------------------------------------------------------------------
def create_ward(*, gate: Gate, who: Principal, name: str, kind: str, capacity: int, organization_id: str,
                location_id: str | None = None) -> dict:
    """Set up a virtual ward (directory data: the integration account)."""
    if kind not in KINDS:
        raise FhirError(400, f"Unknown ward kind '{kind}': acute or preventive", code="value", expression=["kind"])
    if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 10000:
        raise FhirError(400, "capacity must be a whole number of beds from 1 to 10000", code="value",
                        expression=["capacity"])
    if not name or not name.strip():
        raise FhirError(400, "A ward needs a name", code="required", expression=["name"])
    ward = {"resourceType": "HealthcareService", "active": True, "name": name.strip(),
            "meta": {"tag": [{"system": WARD_TAG, "code": kind, "display": KINDS[kind]}]},
            "type": [{"coding": [{"system": SETTING_SYSTEM, "code": "virtual-ward", "display": "Virtual ward"}],
                      "text": "Virtual ward"}],
            "category": [{"text": KINDS[kind]}],
            "providedBy": {"reference": f"Organization/{organization_id}"},
            "extension": [{"url": CAPACITY_URL, "valueInteger": capacity}]}
    if location_id:
        ward["location"] = [{"reference": f"Location/{location_id}"}]
    return gate.create(who, ward).resource


def _ward_view(res: dict) -> dict:
    tag = next((t.get("code") for t in (res.get("meta") or {}).get("tag") or [] if t.get("system") == WARD_TAG),
               None)
    cap = (_ext(res, CAPACITY_URL) or {}).get("valueInteger")
    return {"id": res["id"], "name": res.get("name"), "kind": tag, "kind_name": KINDS.get(tag, tag),
            "capacity": cap, "organization": _rid(res.get("providedBy"), "Organization"),
            "active": res.get("active", True)}


def get_ward(*, gate: Gate, who: Principal, ward_id: str) -> dict:
    res = gate.read(who, "HealthcareService", ward_id).content
    view = _ward_view(res)
    if view["kind"] not in KINDS:
        raise FhirError(404, f"HealthcareService/{ward_id} is not a virtual ward", code="not-found")
    return view


def _admissions(gate: Gate, who: Principal, *, patient_id: str | None = None) -> list[dict]:
    params = [("type", f"{SETTING_SYSTEM}|virtual-ward"), ("status", "active"), ("_count", "1000")]
    if patient_id:
        params.append(("patient", patient_id))
    return [s.content for s in gate.search(who, "EpisodeOfCare", params).matches]


def _ward_of(eoc: dict) -> str | None:
    return _rid((_ext(eoc, WARD_URL) or {}).get("valueReference"), "HealthcareService")


def wards(*, gate: Gate, who: Principal) -> list[dict]:
    """Every virtual ward with occupancy against capacity (a count: no one is named)."""
    found = gate.search(who, "HealthcareService", [("_tag", f"{WARD_TAG}|"), ("_count", "200")])
    out = [_ward_view(s.content) for s in found.matches]
    occupied: dict[str, int] = {}
    for eoc in _admissions(gate, SYSTEM):  # an aggregate for ward management; patient lists use the caller's access
        w = _ward_of(eoc)
        occupied[w] = occupied.get(w, 0) + 1
    for w in out:
        w["occupied"] = occupied.get(w["id"], 0)
        w["free"] = max((w["capacity"] or 0) - w["occupied"], 0)
        w["percent"] = round(100 * w["occupied"] / w["capacity"]) if w["capacity"] else None
    return sorted(out, key=lambda w: (w["kind"] or "", w["name"] or ""))


# -- dates in words ---------------------------------------------------------------------------------------------
def _parse(when: str | None) -> datetime | None:
    if not when:
        return None
    try:
        dt = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def ago(when: str | None, now: datetime) -> str:
    """How long ago, in words: 'just now', '35 minutes ago', '5 hours ago', '3 days ago', '4 months ago'."""
    dt = _parse(when)
    if dt is None:
        return ""
    secs = (now - dt).total_seconds()
    if secs < -300:
        return "in the future: check the device clock"
    mins = int(max(secs, 0) // 60)
    if mins < 2:
        return "just now"
    if mins < 60:
        return f"{mins} minutes ago"
    hours = mins // 60
    if hours < 48:
        return f"{hours} hour{'s' if hours != 1 else ''} ago"
    days = hours // 24
    if days < 60:
        return f"{days} days ago"
    months = days // 30
    if months < 24:
        return f"{months} months ago"
    return f"{days // 365} years ago"


def _stale(when: str | None, now: datetime) -> bool:
    dt = _parse(when)
    return dt is None or now - dt > STALE


# -- limits ---------------------------------------------------------------------------------------------------
def check_limits(limits: Any) -> dict[str, float]:
    """Agreed limits (defaults for those not given), each checked for its measurement: a number, in its unit (or
    one that converts), inside what can physically occur, lower below upper; else 422 naming the field."""
    agreed, problems = M.limit_problems(limits)
    if problems:
        where, message = problems[0]
        raise FhirError(422, message, code="value", expression=["limits" if where == "limits" else f"limits.{where}"])
    return agreed


def _limits_of(eoc: dict) -> dict[str, float]:
    ext = _ext(eoc, LIMITS_URL) or {}
    out = dict(DEFAULT_LIMITS)
    known = set(M.limit_fields())
    for x in ext.get("extension") or []:
        v = x.get("valueDecimal", (x.get("valueQuantity") or {}).get("value"))
        if x.get("url") in known and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[x["url"]] = float(v)
    return out


def _limits_ext(agreed: dict[str, float]) -> dict:
    ms = M.measurements()
    subs = []
    for k, v in agreed.items():
        m = ms[k.rpartition("_")[0]]
        subs.append({"url": k, "valueQuantity": {"value": v, "unit": M.unit_words(m, m.unit), "system": UCUM,
                                                 "code": m.unit}})
    return {"url": LIMITS_URL, "extension": subs}


def limits_table(limits: dict[str, float]) -> list[dict]:
    """Each measurement with its lower and upper limit in words and whether each is the cited default."""
    out = []
    for key, m in M.measurements().items():
        lo, hi = limits.get(f"{key}_min"), limits.get(f"{key}_max")
        out.append({"key": key, "name": m.display, "short": m.short, "unit": m.unit_words,
                    "min": lo, "max": hi, "min_words": m.words(lo) if lo is not None else "",
                    "max_words": m.words(hi) if hi is not None else "",
                    "min_default": lo is not None and lo == m.default_min,
                    "max_default": hi is not None and hi == m.default_max, "source": m.default_source})
    return out


def _breach(m: M.Measurement, value: float, limits: dict[str, float]) -> str | None:
    lo, hi = limits.get(f"{m.key}_min"), limits.get(f"{m.key}_max")
    if lo is not None and value < lo:
        return f"{m.short} {m.words(value)} below agreed limit {m.words(lo)}"
    if hi is not None and value > hi:
        return f"{m.short} {m.words(value)} above agreed limit {m.words(hi)}"
    return None


def _outside(name: str, value: float, limits: dict[str, float]) -> str | None:
    m = M.by_type(name) or M.measurements().get(name)
    return _breach(m, value, limits) if m else None


# -- writing as the professional ----------------------------------------------------------------------------------
def _may_write_clinical(who: Principal) -> bool:
    acts = activities_of(who.role)
    return "*" in acts or "amend-clinical-record" in acts


def _write(gate: Gate, who: Principal, res: dict, *, action: str, why: str) -> dict:
    """Write as the professional; a case manager (no right to amend clinical entries) writes through the platform
    account after the gate has checked their own right to amend this person's care plan, audited as theirs."""
    rtype = res["resourceType"]
    if _may_write_clinical(who):
        w = gate.create(who, res) if action == "create" else gate.update(who, rtype, res["id"], res)
        return w.resource
    pid = _rid(res.get("patient") or res.get("subject"), "Patient")
    gate.check(who, "update", "CarePlan", patient_id=pid, entity=f"{rtype}/{res.get('id', '')}")
    if who.source:
        res = {**res, "meta": {**(res.get("meta") or {}), "source": who.source}}
    w = gate.create(SYSTEM, res) if action == "create" else gate.update(SYSTEM, rtype, res["id"], res)
    gate.record(who, action, allowed=True, reason=f"{why} by case manager", entity=f"{rtype}/{w.id}", patient_id=pid)
    return w.resource


# -- finding the person -----------------------------------------------------------------------------------------
def _name(p: dict) -> str:
    n = next((x for x in p.get("name") or [] if x.get("use") in (None, "official", "usual")),
             (p.get("name") or [{}])[0])
    return (n.get("text") or " ".join([*(n.get("given") or []), n.get("family") or ""]).strip()) or "Name not recorded"


def _nhs(p: dict) -> str | None:
    return next((i.get("value") for i in p.get("identifier") or [] if i.get("system") == codes.NHS_NUMBER), None)


def _dead(p: dict) -> bool:
    return bool(p.get("deceasedDateTime") or p.get("deceasedBoolean"))


def find_people(*, gate: Gate, who: Principal, text: str) -> dict:
    """People matching what was typed (NHS number, name and/or date of birth) among those this professional may
    see: `{"people": [...], "message": str | None, "by": "nhs-number" | "name"}`. A 10-digit number that fails the
    check digit is a 422 naming `nhs_number`; nothing typed is a 422 naming `q`."""
    from joinedup.record.service import parse_search

    text = (text or "").strip()
    if not text:
        raise FhirError(422, "Type the person's NHS number or their name (and date of birth if you know it)",
                        code="required", expression=["q"])
    digits = re.sub(r"[\s-]", "", text)
    by_number = digits.isdigit()
    if by_number and (len(digits) != 10 or not valid_nhs_number(digits)):
        raise FhirError(422, f"'{text[:40]}' is not a valid NHS number (10 digits with a correct check digit); check "
                             "it, or search by name", code="value", expression=["nhs_number"])
    params = parse_search(text=text)
    if not params:
        raise FhirError(422, "Type the person's NHS number or their name", code="required", expression=["q"])
    found = gate.search(who, "Patient", params + [("_count", "20")]).matches
    on_ward = {_rid(e.get("patient"), "Patient") for e in _admissions(gate, SYSTEM)}
    people = [{"id": s.id, "name": _name(s.content), "nhs_number": _nhs(s.content),
               "birth_date": s.content.get("birthDate"), "gender": s.content.get("gender"),
               "deceased": _dead(s.content), "on_ward": s.id in on_ward,
               "linked": bool(s.content.get("link"))} for s in found]
    # the person's main record first (as the NHS-number launch does), then by name
    people.sort(key=lambda p: (p["deceased"], p["linked"] is False, p["name"].split(" ")[-1].lower(), p["id"]))
    how = f"NHS number {digits[:3]} {digits[3:6]} {digits[6:]}" if by_number else f"'{text[:60]}'"
    if not people:
        message = (f"No one you may see matches {how}. Check the spelling or the number; you can only admit people "
                   "you have a care relationship with.")
    elif len(people) == 1:
        message = f"One person matches {how}: check it is the right person, then admit."
    else:
        message = f"{len(people)} people match {how}: choose the right person."
    return {"people": people, "message": message, "by": "nhs-number" if by_number else "name"}


def _person_by_nhs(gate: Gate, who: Principal, nhs_number: Any) -> str:
    digits = re.sub(r"[\s-]", "", nhs_number) if isinstance(nhs_number, str) else ""
    if not (digits.isdigit() and len(digits) == 10 and valid_nhs_number(digits)):
        raise FhirError(422, f"'{str(nhs_number)[:40]}' is not a valid NHS number (10 digits with a correct check "
                             "digit)", code="value", expression=["nhs_number"])
    people = [p for p in find_people(gate=gate, who=who, text=digits)["people"] if not p["deceased"]]
    if not people:
        raise FhirError(404, f"No one you may see has NHS number {digits[:3]} {digits[3:6]} {digits[6:]}",
                        code="not-found", expression=["nhs_number"])
    return people[0]["id"]


# -- admission and discharge ------------------------------------------------------------------------------------
def admit(*, gate: Gate, who: Principal, ward_id: str, patient_id: str | None = None, limits: Any = None,
          reason: str | None = None, nhs_number: str | None = None) -> dict:
    """Admit a person (by record id or NHS number) to a virtual ward (acute: consultant; preventive: case
    manager); 409 when full or already there; 422 for bad limits, an invalid NHS number or someone who has died."""
    ward = get_ward(gate=gate, who=who, ward_id=ward_id)
    role, words = DECIDER[ward["kind"]]
    if who.role != role or not who.practitioner_id:
        raise gate.refuse(who, f"Access refused: admission to {ward['kind_name'].lower()} '{ward['name']}' is "
                               f"decided by {words}; your role is '{who.role}'.", action="create",
                          entity="EpisodeOfCare", patient_id=patient_id)
    agreed = check_limits(limits)
    if not patient_id:
        if not nhs_number:
            raise FhirError(400, "Name the person: 'patient' (their record id) or 'nhs_number'", code="required",
                            expression=["patient"])
        patient_id = _person_by_nhs(gate, who, nhs_number)
    person = gate.read(who, "Patient", patient_id).content  # the person exists and the decider may see them
    if _dead(person):
        raise FhirError(422, f"{_name(person)} has died: they cannot be admitted to a virtual ward", code="business-rule",
                        expression=["patient"])
    current = [e for e in _admissions(gate, SYSTEM, patient_id=patient_id)]
    if any(_ward_of(e) == ward_id for e in current):
        raise FhirError(409, f"This person is already on {ward['name']}", code="duplicate")
    occupied = sum(1 for e in _admissions(gate, SYSTEM) if _ward_of(e) == ward_id)
    if ward["capacity"] is not None and occupied >= ward["capacity"]:
        raise FhirError(409, f"{ward['name']} is full ({occupied} of {ward['capacity']} places taken)",
                        code="conflict")
    eoc = {"resourceType": "EpisodeOfCare", "status": "active",
           "type": [{"coding": [{"system": SETTING_SYSTEM, "code": "virtual-ward", "display": "Virtual ward"}],
                     "text": f"Virtual ward: {ward['name']}"}],
           "patient": {"reference": f"Patient/{patient_id}"},
           "managingOrganization": {"reference": f"Organization/{ward['organization']}"},
           "period": {"start": _iso(_now())},
           "careManager": {"reference": f"Practitioner/{who.practitioner_id}", "display": who.display or who.name},
           "extension": [
               {"url": WARD_URL, "valueReference": {"reference": f"HealthcareService/{ward_id}",
                                                    "display": ward["name"]}},
               {"url": DECIDED_URL, "valueReference": {"reference": f"Practitioner/{who.practitioner_id}",
                                                       "display": who.display or who.name}},
               _limits_ext(agreed)]}
    if reason:
        eoc["extension"].append({"url": f"{WARD_URL}-reason", "valueString": reason[:500]})
    return _write(gate, who, eoc, action="create", why="virtual ward admission")


def _episode(gate: Gate, who: Principal, episode_id: str) -> dict:
    eoc = gate.read(who, "EpisodeOfCare", episode_id).content
    if _ward_of(eoc) is None:
        raise FhirError(404, f"EpisodeOfCare/{episode_id} is not a virtual ward stay", code="not-found")
    return eoc


def discharge(*, gate: Gate, who: Principal, episode_id: str) -> dict:
    """End a virtual ward stay (the same roles that admit to that kind of ward, or any clinician)."""
    eoc = _episode(gate, who, episode_id)
    if eoc.get("status") != "active":
        raise FhirError(409, "This virtual ward stay has already ended", code="conflict")
    kind = get_ward(gate=gate, who=who, ward_id=_ward_of(eoc))["kind"]
    if who.role != DECIDER[kind][0] and not _may_write_clinical(who):
        raise gate.refuse(who, f"Access refused: discharge from this ward is decided by {DECIDER[kind][1]}.",
                          action="update", entity=f"EpisodeOfCare/{episode_id}")
    new = {k: v for k, v in eoc.items() if k != "meta"}
    new["status"] = "finished"
    new["period"] = {**(eoc.get("period") or {}), "end": _iso(_now())}
    return _write(gate, who, new, action="update", why="virtual ward discharge")


# -- readings ---------------------------------------------------------------------------------------------------
def _check_reading(i: int, r: Any) -> list[tuple[M.Measurement, float, Any, Any]]:
    """(measurement, value in its unit, value as sent, unit as sent) for each part of one reading; 422 naming the
    field at fault (nothing is recorded)."""
    where = f"readings[{i}]"
    if not isinstance(r, dict):
        raise FhirError(422, f"{where} must be an object", code="structure", expression=[where])
    kind = r.get("type")
    ms = M.measurements()
    if kind == "bp":
        parts = [(ms["systolic"], r.get("systolic"), "systolic"), (ms["diastolic"], r.get("diastolic"), "diastolic")]
    elif (m := M.by_type(kind)) is not None:
        parts = [(m, r.get("value"), "value")]
    else:
        types = ", ".join(["bp"] + [m.type for m in ms.values() if m.key not in ("systolic", "diastolic")])
        raise FhirError(422, f"{where}.type '{kind}' is not a monitored reading: choose {types}", code="value",
                        expression=[f"{where}.type"])
    unit = r.get("unit")
    out = []
    for m, value, name in parts:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FhirError(422, f"{where}: {m.display} needs a number (got {value!r}); nothing was recorded",
                            code="value", expression=[f"{where}.{name}"])
        if M.factor_of(m, unit) is None:
            accepted = " or ".join(M.unit_words(m, u) for u in m.unit_choices)
            raise FhirError(422, f"{where}: {m.display} must be recorded in {accepted} (got {unit!r}); check the "
                                 "device units — nothing was recorded", code="value", expression=[f"{where}.unit"])
        try:
            v = M.to_unit(m, value, unit)
        except M.UnitProblem as exc:
            raise FhirError(422, f"{where}: {m.display} {exc} — nothing was recorded", code="value",
                            expression=[f"{where}.{name}"]) from None
        out.append((m, v, value, unit))
    return out


_WHEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


def _when(i: int, value: Any, now: datetime) -> str:
    if value is None:
        return _iso(now)
    if not isinstance(value, str) or not _WHEN.match(value) or _parse(value) is None:
        raise FhirError(422, f"readings[{i}].when must be a date and time with a time zone, e.g. "
                             "2026-05-01T08:30:00Z", code="value", expression=[f"readings[{i}].when"])
    if _parse(value) - now > timedelta(minutes=5):
        raise FhirError(422, f"readings[{i}].when is in the future ({value}); check the device clock — nothing was "
                             "recorded", code="value", expression=[f"readings[{i}].when"])
    return value


def _quantity(m: M.Measurement, v: float) -> dict:
    return {"value": v, "unit": M.unit_words(m, m.unit), "system": UCUM, "code": m.unit}


def _coding(m: M.Measurement) -> dict:
    return {"coding": [{"system": LOINC, "code": m.code, "display": m.loinc_display}], "text": m.display}


def record_readings(*, gate: Gate, who: Principal, patient_id: str, readings: Any) -> dict:
    """Record remote-monitoring readings in one transaction; any bad reading refuses them all (422). Readings in
    another known unit are converted to the measurement's own, the original kept in a note."""
    if not isinstance(readings, list) or not readings:
        raise FhirError(422, "Send a non-empty list of readings", code="required", expression=["readings"])
    if len(readings) > 500:
        raise FhirError(422, "At most 500 readings at a time", code="too-costly", expression=["readings"])
    now = _now()
    checked = [(_check_reading(i, r), _when(i, r.get("when"), now), r) for i, r in enumerate(readings)]
    entries = []
    for values, when, raw in checked:
        obs = {"resourceType": "Observation", "status": "final",
               "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": when,
               "method": {"text": "Home remote monitoring (virtual ward)"}}
        if values[0][0].key != "glucose":
            obs["category"] = [{"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": "vital-signs",
                                            "display": "Vital Signs"}]}]
        converted = [f"{m.display} sent as {sent:g} {M.unit_words(m, str(unit).strip())}, recorded as {m.words(v)}"
                     for m, v, sent, unit in values if M.factor_of(m, unit) != 1]
        if converted:
            obs["note"] = [{"text": "; ".join(converted)}]
        if raw.get("type") == "bp":
            code, display = M.bp_panel()
            obs["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": "Blood pressure"}
            obs["component"] = [{"code": _coding(m), "valueQuantity": _quantity(m, v)} for m, v, _s, _u in values]
        else:
            m, v, _s, _u = values[0]
            obs["code"] = _coding(m)
            obs["valueQuantity"] = _quantity(m, v)
        entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
    result = gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    ids = [e["response"]["location"].split("/")[1] for e in result["entry"]]
    eoc = next(iter(_admissions(gate, SYSTEM, patient_id=patient_id)), None)
    alerts = []
    if eoc:
        limits = _limits_of(eoc)
        for values, _at, _ in checked:
            alerts += [a for m, v, _s, _u in values if (a := _breach(m, v, limits))]
    return {"recorded": len(ids), "observations": [f"Observation/{i}" for i in ids], "alerts": alerts}


def _observation_values(obs: dict) -> list[tuple[M.Measurement, float | None, str]]:
    """(measurement, value in its own unit or None when its unit is not one we know, the value as recorded)."""
    out = []

    def take(cc: dict, q: dict | None) -> None:
        m = next((x for c in (cc or {}).get("coding") or [] if (x := M.by_code(c.get("code")))), None)
        if m is None or not isinstance((q or {}).get("value"), (int, float)):
            return
        unit = q.get("code") or q.get("unit")
        as_recorded = f"{q['value']:g} {q.get('unit') or unit or ''}".strip()
        try:
            out.append((m, M.to_unit(m, q["value"], unit), as_recorded))
        except M.UnitProblem:
            out.append((m, None, as_recorded))

    take(obs.get("code") or {}, obs.get("valueQuantity"))
    for comp in obs.get("component") or []:
        take(comp.get("code") or {}, comp.get("valueQuantity"))
    return out


def reading_alerts(*, gate: Gate, observation: dict) -> list:
    """Notification events for a reading outside the agreed limits of a person on a virtual ward."""
    from joinedup.care.notifications.events import Event

    values = _observation_values(observation)
    pid = _rid(observation.get("subject"), "Patient")
    if not values or not pid or observation.get("status") in ("entered-in-error", "cancelled"):
        return []
    eoc = next(iter(_admissions(gate, SYSTEM, patient_id=pid)), None)
    if eoc is None:
        return []
    taken = _parse(observation.get("effectiveDateTime"))
    start = _parse((eoc.get("period") or {}).get("start"))
    if taken and start and taken < start:  # a reading from before the admission is not monitoring
        return []
    limits = _limits_of(eoc)
    msgs = [b for m, v, _r in values if v is not None and (b := _breach(m, v, limits))]
    if not msgs:
        return []
    to = {i for i in (_rid(eoc.get("careManager"), "Practitioner"),
                      _rid((_ext(eoc, DECIDED_URL) or {}).get("valueReference"), "Practitioner")) if i}
    ward = ((_ext(eoc, WARD_URL) or {}).get("valueReference") or {}).get("display") or "virtual ward"
    return [Event("monitoring-alert", pid, f"EpisodeOfCare/{eoc['id']}", f"Reading outside agreed limits ({ward})",
                  "; ".join(msgs), observation.get("effectiveDateTime"), also_to=to)]


def _readings(gate: Gate, who: Principal, pid: str, *, count: int = 100,
              measurements: list[M.Measurement] | None = None) -> list[dict]:
    """The person's monitored readings (of these measurements, or all), newest first: one row per measured value."""
    codes_wanted = [c for m in measurements for c in m.loinc] if measurements else M.all_codes()
    if measurements and any(m.key in ("systolic", "diastolic") for m in measurements):
        codes_wanted.append(M.bp_panel()[0])
    wanted = ",".join(f"{LOINC}|{c}" for c in codes_wanted)
    found = gate.search(who, "Observation", [("patient", pid), ("code", wanted), ("_sort", "-date"),
                                             ("_count", str(count))]).matches
    rows = []
    for s in found:
        if s.content.get("status") in ("entered-in-error", "cancelled"):
            continue
        when = s.content.get("effectiveDateTime") or (s.content.get("effectivePeriod") or {}).get("start")
        for m, v, recorded in _observation_values(s.content):
            rows.append({"measurement": m, "value": v, "recorded": recorded, "when": when,
                         "observation": s.id, "stored": s.last_updated or ""})
    # newest taken first; readings taken in the same second: the one recorded last first
    rows.sort(key=lambda r: (_parse(r["when"]) or datetime.min.replace(tzinfo=UTC), r["stored"]), reverse=True)
    return rows


def _dated(row: dict, limits: dict[str, float], start: datetime | None, now: datetime) -> dict:
    m, v = row["measurement"], row["value"]
    taken = _parse(row["when"])
    before = bool(start and taken and taken < start)
    return {"key": m.key, "name": m.short, "value": v, "words": m.words(v) if v is not None else row["recorded"],
            "when": row["when"], "ago": ago(row["when"], now), "stale": _stale(row["when"], now),
            "before_admission": before, "unit_unknown": v is None, "observation": row["observation"],
            "breach": _breach(m, v, limits) if v is not None and not before else None}


# -- reviews ----------------------------------------------------------------------------------------------------
def record_review(*, gate: Gate, who: Principal, episode_id: str, outcome: Any, note: Any = None) -> dict:
    """'Review done': a ClinicalImpression (who, when, outcome, note, the readings looked at) for this stay."""
    if outcome not in OUTCOMES:
        raise FhirError(422, f"Choose the outcome of the review: {', '.join(OUTCOMES)}", code="value",
                        expression=["outcome"])
    if note is not None and not isinstance(note, str):
        raise FhirError(422, "note must be text", code="value", expression=["note"])
    note = (note or "").strip()
    if len(note) > 2000:
        raise FhirError(422, f"The note is {len(note)} characters long: at most 2,000", code="value",
                        expression=["note"])
    if not who.practitioner_id:
        raise gate.refuse(who, "Access refused: a review is recorded by a named professional.", action="create",
                          entity="ClinicalImpression")
    eoc = _episode(gate, who, episode_id)
    if eoc.get("status") != "active":
        raise FhirError(409, "This virtual ward stay has ended: there is nothing to review", code="conflict")
    pid = _rid(eoc.get("patient"), "Patient")
    start = _parse((eoc.get("period") or {}).get("start"))
    seen: dict[str, str] = {}
    for r in _readings(gate, who, pid, count=50):
        taken = _parse(r["when"])
        if not (start and taken and taken < start):
            seen.setdefault(r["measurement"].key, r["observation"])
    now = _iso(_now())
    ci = {"resourceType": "ClinicalImpression", "status": "completed",
          "code": {"coding": [{"system": REVIEW_SYSTEM, "code": "virtual-ward-review",
                               "display": "Virtual ward review"}], "text": "Virtual ward review"},
          "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": now, "date": now,
          "assessor": {"reference": f"Practitioner/{who.practitioner_id}", "display": who.display or who.name},
          "supportingInfo": [{"reference": f"EpisodeOfCare/{episode_id}",
                              "display": ((_ext(eoc, WARD_URL) or {}).get("valueReference") or {}).get("display")}],
          "summary": OUTCOMES[outcome],
          "extension": [{"url": REVIEW_OUTCOME_URL, "valueCoding": {"system": REVIEW_SYSTEM, "code": outcome,
                                                                    "display": OUTCOMES[outcome]}}]}
    if seen:
        ci["investigation"] = [{"code": {"text": "Remote monitoring readings reviewed"},
                                "item": [{"reference": f"Observation/{o}"} for o in dict.fromkeys(seen.values())]}]
    if note:
        ci["note"] = [{"text": note, "time": now}]
    return _write(gate, who, ci, action="create", why="virtual ward review")


def _review_view(res: dict, now: datetime) -> dict:
    outcome = next((x.get("valueCoding", {}).get("code") for x in res.get("extension") or []
                    if x.get("url") == REVIEW_OUTCOME_URL), None)
    when = res.get("date") or res.get("effectiveDateTime")
    return {"id": res.get("id"), "when": when, "ago": ago(when, now), "stale": _stale(when, now),
            "by": (res.get("assessor") or {}).get("display"), "outcome": outcome,
            "outcome_words": OUTCOMES.get(outcome) or res.get("summary"),
            "note": " ".join(n.get("text") or "" for n in res.get("note") or []).strip(),
            "readings": sum(len(i.get("item") or []) for i in res.get("investigation") or [])}


def reviews(*, gate: Gate, who: Principal, episode_id: str, patient_id: str, count: int = 20,
            now: datetime | None = None) -> list[dict]:
    """Reviews of this stay, newest first (what this professional may see)."""
    now = now or _now()
    found = gate.search(who, "ClinicalImpression", [("patient", patient_id),
                                                    ("supporting-info", f"EpisodeOfCare/{episode_id}"),
                                                    ("_sort", "-date"), ("_count", str(count))]).matches
    return [_review_view(s.content, now) for s in found if s.content.get("status") != "entered-in-error"]


# -- ward lists -------------------------------------------------------------------------------------------------
def _people(gate: Gate, who: Principal, pids: list[str]) -> dict[str, dict]:
    if not pids:
        return {}
    return {s.id: s.content for s in gate.search(who, "Patient", [("_id", ",".join(pids)),
                                                                  ("_count", str(len(pids)))]).matches}


def ward_patients(*, gate: Gate, who: Principal, ward_id: str | None = None, kind: str | None = None,
                  now: datetime | None = None) -> list[dict]:
    """People on a ward (or on every ward of a kind) whom this professional may see, breaches first: each with the
    latest reading of each measurement (dated, how long ago, stale or from before admission), the breaches of
    their agreed limits since admission, and the last review."""
    now = now or _now()
    ward_names = {w["id"]: w for w in wards(gate=gate, who=who)}
    rows = []
    episodes = [e for e in _admissions(gate, who) if (ward_id is None or _ward_of(e) == ward_id)
                and (kind is None or (ward_names.get(_ward_of(e)) or {}).get("kind") == kind)]
    people = _people(gate, who, sorted({_rid(e.get("patient"), "Patient") for e in episodes} - {None}))
    for e in episodes:
        pid = _rid(e.get("patient"), "Patient")
        limits = _limits_of(e)
        start = (e.get("period") or {}).get("start")
        latest: dict[str, dict] = {}
        first = _readings(gate, who, pid, count=100)
        for r in first:
            latest.setdefault(r["measurement"].key, _dated(r, limits, _parse(start), now))
        missing = [m for k, m in M.measurements().items() if k not in latest]
        if missing and len({r["observation"] for r in first}) >= 100:  # crowded out by frequent readings of others
            for r in _readings(gate, who, pid, count=50, measurements=missing):
                latest.setdefault(r["measurement"].key, _dated(r, limits, _parse(start), now))
        order = list(M.measurements())
        latest = dict(sorted(latest.items(), key=lambda kv: order.index(kv[0])))
        alerts = [x["breach"] for x in latest.values() if x["breach"]]
        since_admission = [x["when"] for x in latest.values() if not x["before_admission"]]
        last = max(since_admission, key=lambda w: _parse(w) or now, default=None)
        last_review = next(iter(reviews(gate=gate, who=who, episode_id=e["id"], patient_id=pid, count=1, now=now)),
                           None)
        p = people.get(pid) or {}
        rows.append({"episode": e["id"], "patient": pid, "name": _name(p) if p else pid,
                     "nhs_number": _nhs(p) if p else None,
                     "ward": _ward_of(e), "ward_name": (ward_names.get(_ward_of(e)) or {}).get("name"),
                     "since": start, "days": (now - _parse(start)).days if _parse(start) else None,
                     "decided_by": ((_ext(e, DECIDED_URL) or {}).get("valueReference") or {}).get("display"),
                     "limits": limits, "latest": latest, "alerts": alerts,
                     "last_reading": last, "last_reading_ago": ago(last, now),
                     "no_recent_reading": last is None or _stale(last, now),
                     "last_review": last_review,
                     "review_due": last_review is None or last_review["stale"]})
    rows.sort(key=lambda r: (not r["alerts"], not r["no_recent_reading"], not r["review_due"], r["name"]))
    return rows


def daily_review(*, gate: Gate, who: Principal) -> list[dict]:
    """Today's review list: everyone on an acute virtual ward, breaches, missing readings and reviews due first."""
    return ward_patients(gate=gate, who=who, kind="acute")


def stay(*, gate: Gate, who: Principal, episode_id: str, now: datetime | None = None) -> dict:
    """One person's stay: the ward, their agreed limits, every reading since admission (dated) with a chart per
    measurement against its limits, and the reviews."""
    now = now or _now()
    eoc = _episode(gate, who, episode_id)
    pid = _rid(eoc.get("patient"), "Patient")
    person = gate.read(who, "Patient", pid).content
    ward = get_ward(gate=gate, who=who, ward_id=_ward_of(eoc))
    limits = _limits_of(eoc)
    start = (eoc.get("period") or {}).get("start")
    rows = [_dated(r, limits, _parse(start), now) for r in _readings(gate, who, pid, count=500)]
    since = [r for r in rows if not r["before_admission"]]
    charts = []
    for key, m in M.measurements().items():
        pts = [{"date": r["when"], "value": r["value"]} for r in reversed(since)
               if r["key"] == key and r["value"] is not None]
        if not pts:
            continue
        lo, hi = limits.get(f"{key}_min"), limits.get(f"{key}_max")
        charts.append({"code": f"ward-{key}", "display": m.display, "unit": m.unit_words, "points": pts,
                       "low": lo, "high": hi, "latest": pts[-1]["value"],
                       "limits_words": " and ".join(x for x in (
                           f"lower limit {m.words(lo)}" if lo is not None else "",
                           f"upper limit {m.words(hi)}" if hi is not None else "") if x) or "no limits agreed",
                       "range_words": "agreed limits",
                       "breaches": sum(1 for r in since if r["key"] == key and r["breach"])})
    return {"episode": episode_id, "status": eoc.get("status"), "patient": pid, "name": _name(person),
            "nhs_number": _nhs(person), "birth_date": person.get("birthDate"), "deceased": _dead(person),
            "ward": ward, "since": start, "ended": (eoc.get("period") or {}).get("end"),
            "days": (now - _parse(start)).days if _parse(start) else None,
            "decided_by": ((_ext(eoc, DECIDED_URL) or {}).get("valueReference") or {}).get("display"),
            "reason": (_ext(eoc, f"{WARD_URL}-reason") or {}).get("valueString"),
            "limits": limits_table(limits), "readings": since, "earlier": len(rows) - len(since),
            "charts": charts, "reviews": reviews(gate=gate, who=who, episode_id=episode_id, patient_id=pid, now=now),
            "breaches": [r for r in since if r["breach"]]}


def case_finding(*, gate: Gate, who: Principal, limit: int = 50, now: datetime | None = None) -> list[dict]:
    """People this professional may see, ranked by the complexity score, for preventive ward admission."""
    now = now or _now()
    year_ago = now - timedelta(days=365)
    on_ward = {_rid(e.get("patient"), "Patient") for e in _admissions(gate, SYSTEM)}
    out = []
    for patient, items in gate.records(who, purpose="case-finding", types={"Condition", "Encounter",
                                                                           "EpisodeOfCare"}):
        p = patient.content
        if p.get("deceasedDateTime") or p.get("deceasedBoolean") or patient.id in on_ward:
            continue
        conds: set[str] = set()
        frailty = dementia = care_home = False
        admissions = 0
        for s in items:
            r = s.content
            if s.rtype == "Condition":
                status = next((c.get("code") for c in (r.get("clinicalStatus") or {}).get("coding") or []), "active")
                if status not in ("active", "recurrence", "relapse"):
                    continue
                text = ((r.get("code") or {}).get("text") or next(
                    (c.get("display") for c in (r.get("code") or {}).get("coding") or []), "") or "").lower()
                code = next((c.get("code") for c in (r.get("code") or {}).get("coding") or []), None)
                conds.add(code or text)
                frailty |= "frail" in text
                dementia |= "dementia" in text or "alzheimer" in text
            elif s.rtype == "Encounter" and (r.get("class") or {}).get("code") in ("IMP", "ACUTE"):
                start = (r.get("period") or {}).get("start")
                try:
                    if start and datetime.fromisoformat(start.replace("Z", "+00:00")) >= year_ago:
                        admissions += 1
                except ValueError:
                    pass
            elif s.rtype == "EpisodeOfCare" and r.get("status") == "active":
                t = " ".join((x.get("text") or "") for x in r.get("type") or []).lower()
                care_home |= "residential" in t or "nursing home" in t or "care home" in t
        score = len(conds) + 2 * frailty + 2 * dementia + 1.5 * min(admissions, 4) + (1 if care_home else 0)
        if score <= 0:
            continue
        n = (p.get("name") or [{}])[0]
        out.append({"patient": patient.id, "name": " ".join([*(n.get("given") or []), n.get("family") or ""]).strip(),
                    "birth_date": p.get("birthDate"), "score": score, "conditions": len(conds), "frailty": frailty,
                    "dementia": dementia, "admissions_last_year": admissions, "care_home": care_home})
    out.sort(key=lambda r: (-r["score"], r["name"]))
    return out[:limit]
