"""Virtual wards: acute (hospital at home) and preventive, with occupancy against capacity.

* A ward is a FHIR HealthcareService tagged `virtual-ward` (acute or preventive) with its capacity in an
  extension; wards are directory data, set up by the integration account.
* An admission is an EpisodeOfCare (type `virtual-ward`) naming the ward, the person who decided it and the
  agreed monitoring limits for this person. Acute admissions are decided by a named senior clinician
  (consultant role); preventive admissions by a case manager (care-coordinator role).
* Remote-monitoring readings are Observations (LOINC SpO2 59408-5, heart rate 8867-4, blood pressure 85354-9
  with systolic 8480-6 / diastolic 8462-4). Wrong units or impossible values are refused (422) and nothing is
  written; a reading outside the person's agreed limits raises a `monitoring-alert` notification and a flag on
  the ward list.

Default limits are the NEWS2 single-parameter bands that score 2 or more (Royal College of Physicians,
National Early Warning Score (NEWS) 2, 2017): SpO2 ≤ 93% (scale 1), pulse ≤ 40 or ≥ 111/min, systolic ≤ 100 or
≥ 220 mmHg. Clinicians agree per-person limits at admission (e.g. SpO2 88% for a person with COPD whose target
range is 88–92%, BTS oxygen guideline 2017).

Case-finding for preventive wards uses the transparent complexity score of the synthetic ICS (see
docs/synthetic-population.md, "care coordinator" rule): conditions + 2×frailty + 2×dementia
+ 1.5×emergency admissions in the last year (at most 4) + 1 if living in a care home.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
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
KINDS = {"acute": "Acute virtual ward (hospital at home)", "preventive": "Preventive virtual ward"}
DECIDER = {"acute": ("consultant", "a named senior clinician (consultant)"),
           "preventive": ("care-coordinator", "a case manager (care coordinator)")}
DEFAULT_LIMITS = {"spo2_min": 94.0, "heart_rate_min": 41.0, "heart_rate_max": 110.0, "systolic_min": 101.0,
                  "systolic_max": 219.0}
LOINC = codes.LOINC
UCUM = "http://unitsofmeasure.org"
# reading kind -> (LOINC code, display, UCUM unit, accepted unit spellings, plausible range)
READINGS = {
    "spo2": ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", {"%"}, (50, 100)),
    "heart-rate": ("8867-4", "Heart rate", "/min", {"/min", "bpm", "beats/min", "{beats}/min"}, (20, 250)),
    "systolic": ("8480-6", "Systolic blood pressure", "mm[Hg]", {"mm[hg]", "mmhg"}, (50, 300)),
    "diastolic": ("8462-4", "Diastolic blood pressure", "mm[Hg]", {"mm[hg]", "mmhg"}, (20, 200)),
}
BP_PANEL = ("85354-9", "Blood pressure panel with all children optional")


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


# -- admission and discharge ------------------------------------------------------------------------------------
def check_limits(limits: Any) -> dict[str, float]:
    """Agreed limits (defaults for those not given); unknown names or non-numbers → 422."""
    out = dict(DEFAULT_LIMITS)
    if limits in (None, {}):
        return out
    if not isinstance(limits, dict):
        raise FhirError(422, "limits must be an object such as {\"spo2_min\": 88}", code="value",
                        expression=["limits"])
    for k, v in limits.items():
        if k not in DEFAULT_LIMITS:
            raise FhirError(422, f"Unknown limit '{k}': choose from {', '.join(DEFAULT_LIMITS)}", code="value",
                            expression=[f"limits.{k}"])
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FhirError(422, f"limits.{k} must be a number", code="value", expression=[f"limits.{k}"])
        out[k] = float(v)
    if out["heart_rate_min"] >= out["heart_rate_max"] or out["systolic_min"] >= out["systolic_max"]:
        raise FhirError(422, "a lower limit must be below its upper limit", code="value", expression=["limits"])
    return out


def _limits_of(eoc: dict) -> dict[str, float]:
    ext = _ext(eoc, LIMITS_URL) or {}
    out = dict(DEFAULT_LIMITS)
    for x in ext.get("extension") or []:
        if x.get("url") in out and isinstance(x.get("valueDecimal"), (int, float)):
            out[x["url"]] = float(x["valueDecimal"])
    return out


def _may_write_episode(who: Principal) -> bool:
    acts = activities_of(who.role)
    return "*" in acts or "amend-clinical-record" in acts


def _write_episode(gate: Gate, who: Principal, eoc: dict, *, action: str) -> dict:
    """Write the EpisodeOfCare as the professional; a case manager (no right to amend clinical entries) writes it
    through the platform account after the gate has checked their own right to amend this person's care plan."""
    if _may_write_episode(who):
        w = gate.create(who, eoc) if action == "create" else gate.update(who, "EpisodeOfCare", eoc["id"], eoc)
        return w.resource
    pid = _rid(eoc.get("patient"), "Patient")
    gate.check(who, "update", "CarePlan", patient_id=pid, entity=f"EpisodeOfCare/{eoc.get('id', '')}")
    if who.source:
        eoc = {**eoc, "meta": {**(eoc.get("meta") or {}), "source": who.source}}
    w = gate.create(SYSTEM, eoc) if action == "create" else gate.update(SYSTEM, "EpisodeOfCare", eoc["id"], eoc)
    gate.record(who, action, allowed=True, reason=f"virtual ward {action} by case manager",
                entity=f"EpisodeOfCare/{w.id}", patient_id=pid)
    return w.resource


def admit(*, gate: Gate, who: Principal, ward_id: str, patient_id: str, limits: Any = None,
          reason: str | None = None) -> dict:
    """Admit a person to a virtual ward (acute: consultant; preventive: case manager); 409 when full."""
    ward = get_ward(gate=gate, who=who, ward_id=ward_id)
    role, words = DECIDER[ward["kind"]]
    if who.role != role or not who.practitioner_id:
        raise gate.refuse(who, f"Access refused: admission to {ward['kind_name'].lower()} '{ward['name']}' is "
                               f"decided by {words}; your role is '{who.role}'.", action="create",
                          entity="EpisodeOfCare", patient_id=patient_id)
    agreed = check_limits(limits)
    gate.read(who, "Patient", patient_id)  # the person exists and the decider may see them
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
               {"url": LIMITS_URL, "extension": [{"url": k, "valueDecimal": v} for k, v in agreed.items()]}]}
    if reason:
        eoc["extension"].append({"url": f"{WARD_URL}-reason", "valueString": reason[:500]})
    return _write_episode(gate, who, eoc, action="create")


def discharge(*, gate: Gate, who: Principal, episode_id: str) -> dict:
    """End a virtual ward stay (the same roles that admit to that kind of ward, or any clinician)."""
    eoc = gate.read(who, "EpisodeOfCare", episode_id).content
    if _ward_of(eoc) is None:
        raise FhirError(404, f"EpisodeOfCare/{episode_id} is not a virtual ward stay", code="not-found")
    if eoc.get("status") != "active":
        raise FhirError(409, "This virtual ward stay has already ended", code="conflict")
    kind = get_ward(gate=gate, who=who, ward_id=_ward_of(eoc))["kind"]
    if who.role != DECIDER[kind][0] and not _may_write_episode(who):
        raise gate.refuse(who, f"Access refused: discharge from this ward is decided by {DECIDER[kind][1]}.",
                          action="update", entity=f"EpisodeOfCare/{episode_id}")
    new = {k: v for k, v in eoc.items() if k != "meta"}
    new["status"] = "finished"
    new["period"] = {**(eoc.get("period") or {}), "end": _iso(_now())}
    return _write_episode(gate, who, new, action="update")


# -- readings ---------------------------------------------------------------------------------------------------
def _check_reading(i: int, r: Any) -> list[tuple[str, float, str]]:
    where = f"readings[{i}]"
    if not isinstance(r, dict):
        raise FhirError(422, f"{where} must be an object", code="structure", expression=[where])
    kind = r.get("type")
    if kind == "bp":
        parts = [("systolic", r.get("systolic")), ("diastolic", r.get("diastolic"))]
    elif kind in READINGS:
        parts = [(kind, r.get("value"))]
    else:
        raise FhirError(422, f"{where}.type '{kind}' is not a monitored reading: choose spo2, heart-rate or bp",
                        code="value", expression=[f"{where}.type"])
    unit = r.get("unit")
    out = []
    for name, value in parts:
        _code, display, ucum, accepted, (lo, hi) = READINGS[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise FhirError(422, f"{where}: {display} needs a number (got {value!r}); nothing was recorded",
                            code="value", expression=[f"{where}.{'value' if kind != 'bp' else name}"])
        if not isinstance(unit, str) or unit.strip().lower() not in accepted:
            raise FhirError(422, f"{where}: {display} must be recorded in {ucum} (got {unit!r}); check the device "
                                 "units — nothing was recorded", code="value", expression=[f"{where}.unit"])
        if not lo <= value <= hi:
            raise FhirError(422, f"{where}: {display} {value} {ucum} is outside the possible range {lo}–{hi}; "
                                 "check the reading or its units — nothing was recorded", code="value",
                            expression=[f"{where}.value"])
        out.append((name, float(value), ucum))
    return out


def _when(i: int, value: Any) -> str:
    if value is None:
        return _iso(_now())
    if not isinstance(value, str) or not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$",
                                                 value):
        raise FhirError(422, f"readings[{i}].when must be a date and time with a time zone, e.g. "
                             "2026-05-01T08:30:00Z", code="value", expression=[f"readings[{i}].when"])
    return value


def record_readings(*, gate: Gate, who: Principal, patient_id: str, readings: Any) -> dict:
    """Record remote-monitoring readings in one transaction; any bad reading refuses them all (422)."""
    if not isinstance(readings, list) or not readings:
        raise FhirError(422, "Send a non-empty list of readings", code="required", expression=["readings"])
    if len(readings) > 500:
        raise FhirError(422, "At most 500 readings at a time", code="too-costly", expression=["readings"])
    checked = [(_check_reading(i, r), _when(i, r.get("when")), r) for i, r in enumerate(readings)]
    entries = []
    for values, when, raw in checked:
        obs = {"resourceType": "Observation", "status": "final",
               "category": [{"coding": [{"system": codes.OBSERVATION_CATEGORY,
                                         "code": "vital-signs", "display": "Vital Signs"}]}],
               "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": when,
               "method": {"text": "Home remote monitoring (virtual ward)"}}
        if raw.get("type") == "bp":
            obs["code"] = {"coding": [{"system": LOINC, "code": BP_PANEL[0], "display": BP_PANEL[1]}]}
            obs["component"] = [{"code": {"coding": [{"system": LOINC, "code": READINGS[n][0],
                                                      "display": READINGS[n][1]}]},
                                 "valueQuantity": {"value": v, "unit": u, "system": UCUM, "code": u}}
                                for n, v, u in values]
        else:
            n, v, u = values[0]
            obs["code"] = {"coding": [{"system": LOINC, "code": READINGS[n][0], "display": READINGS[n][1]}]}
            obs["valueQuantity"] = {"value": v, "unit": u, "system": UCUM, "code": u}
        entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
    result = gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    ids = [e["response"]["location"].split("/")[1] for e in result["entry"]]
    eoc = next(iter(_admissions(gate, SYSTEM, patient_id=patient_id)), None)
    alerts = []
    if eoc:
        limits = _limits_of(eoc)
        for values, _at, _ in checked:
            alerts += [a for n, v, _u in values if (a := _outside(n, v, limits))]
    return {"recorded": len(ids), "observations": [f"Observation/{i}" for i in ids], "alerts": alerts}


def _outside(name: str, value: float, limits: dict[str, float]) -> str | None:
    label = {"spo2": "SpO2", "heart-rate": "Heart rate", "systolic": "Systolic BP", "diastolic": None}[name]
    unit = {"spo2": "%", "heart-rate": "/min", "systolic": " mmHg"}.get(name, "")
    key = {"spo2": "spo2", "heart-rate": "heart_rate", "systolic": "systolic"}.get(name)
    if not key:
        return None
    lo, hi = limits.get(f"{key}_min"), limits.get(f"{key}_max")
    if lo is not None and value < lo:
        return f"{label} {value:g}{unit} below agreed limit {lo:g}{unit}"
    if hi is not None and value > hi:
        return f"{label} {value:g}{unit} above agreed limit {hi:g}{unit}"
    return None


def _observation_values(obs: dict) -> list[tuple[str, float]]:
    kinds = {v[0]: k for k, v in READINGS.items()}
    out = []

    def take(cc: dict, q: dict | None) -> None:
        code = next((c.get("code") for c in (cc or {}).get("coding") or [] if c.get("code") in kinds), None)
        if code and isinstance((q or {}).get("value"), (int, float)):
            out.append((kinds[code], float(q["value"])))

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
    limits = _limits_of(eoc)
    msgs = [m for n, v in values if (m := _outside(n, v, limits))]
    if not msgs:
        return []
    to = {i for i in (_rid(eoc.get("careManager"), "Practitioner"),
                      _rid((_ext(eoc, DECIDED_URL) or {}).get("valueReference"), "Practitioner")) if i}
    ward = ((_ext(eoc, WARD_URL) or {}).get("valueReference") or {}).get("display") or "virtual ward"
    return [Event("monitoring-alert", pid, f"EpisodeOfCare/{eoc['id']}", f"Reading outside agreed limits ({ward})",
                  "; ".join(msgs), observation.get("effectiveDateTime"), also_to=to)]


# -- ward lists -------------------------------------------------------------------------------------------------
def ward_patients(*, gate: Gate, who: Principal, ward_id: str | None = None, kind: str | None = None,
                  now: datetime | None = None) -> list[dict]:
    """People on a ward (or on every ward of a kind) whom this professional may see, alerts first."""
    now = now or _now()
    ward_names = {w["id"]: w for w in wards(gate=gate, who=who)}
    rows = []
    episodes = [e for e in _admissions(gate, who) if (ward_id is None or _ward_of(e) == ward_id)
                and (kind is None or (ward_names.get(_ward_of(e)) or {}).get("kind") == kind)]
    pids = sorted({_rid(e.get("patient"), "Patient") for e in episodes} - {None})
    people = {}
    if pids:
        people = {s.id: s.content for s in gate.search(who, "Patient", [("_id", ",".join(pids)),
                                                                         ("_count", str(len(pids)))]).matches}
    for e in episodes:
        pid = _rid(e.get("patient"), "Patient")
        limits = _limits_of(e)
        latest: dict[str, dict] = {}
        wanted = f"{LOINC}|59408-5,{LOINC}|8867-4,{LOINC}|85354-9"
        obs = gate.search(who, "Observation", [("patient", pid), ("code", wanted), ("_sort", "-date"),
                                               ("_count", "30")]).matches
        for s in obs:
            for n, v in _observation_values(s.content):
                latest.setdefault(n, {"value": v, "when": s.content.get("effectiveDateTime"),
                                      "alert": _outside(n, v, limits)})
        alerts = [x["alert"] for x in latest.values() if x["alert"]]
        last = max((x["when"] for x in latest.values() if x["when"]), default=None)
        stale = last is None or (now - datetime.fromisoformat(last.replace("Z", "+00:00"))) > timedelta(hours=24)
        start = (e.get("period") or {}).get("start")
        p = people.get(pid) or {}
        n = (p.get("name") or [{}])[0]
        rows.append({"episode": e["id"], "patient": pid,
                     "name": " ".join([*(n.get("given") or []), n.get("family") or ""]).strip() or pid,
                     "ward": _ward_of(e), "ward_name": (ward_names.get(_ward_of(e)) or {}).get("name"),
                     "since": start, "days": (now - datetime.fromisoformat(start.replace("Z", "+00:00"))).days
                     if start else None,
                     "decided_by": ((_ext(e, DECIDED_URL) or {}).get("valueReference") or {}).get("display"),
                     "limits": limits, "latest": latest, "alerts": alerts, "no_recent_reading": stale})
    rows.sort(key=lambda r: (not r["alerts"], not r["no_recent_reading"], r["name"]))
    return rows


def daily_review(*, gate: Gate, who: Principal) -> list[dict]:
    """Today's review list: everyone on an acute virtual ward, alerts and missing readings first."""
    return ward_patients(gate=gate, who=who, kind="acute")


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
