"""Population health service: risk and burden scores, long-term condition registers and care-gap worklists.

Plain functions with keyword-only arguments used by the API, the pages and the CLI. Every read goes through the gate:
one person's scores through `Gate.everything` (checked and audited as a read of their record); registers and
worklists through `Gate.records` with a direct-care purpose (a clinician gets the people they have a relationship
with, each entry filtered; the National Data Opt-out does not apply to direct care); population distributions
through `Gate.records` with a planning purpose (opt-outs excluded) and published with the platform's small-number
suppression (`governance.deid.suppress`: JOINEDUP_SUPPRESS_LOW/HIGH/ROUND).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from typing import Any

from joinedup.fhir.codes import ODS_ORGANIZATION
from joinedup.fhir.errors import FhirError
from joinedup.governance import deid, policy

from .registers import engine as registers
from .risk import facts as person_facts
from .risk import scores

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ODS = re.compile(r"^[A-Za-z0-9]{3,10}$")
RECORD_TYPES = {"Condition", "Observation", "Procedure", "CarePlan", "Encounter", "Appointment", "MedicationRequest",
                "MedicationStatement"}
WORKLIST_PURPOSE = "direct-care:care-gaps"
REGISTER_PURPOSE = "direct-care:registers"
DISTRIBUTION_PURPOSE = "planning:risk-distribution"
WORKLIST_ACTIVITY = "view-clinical-record"


class PopulationInputError(ValueError):
    """Bad input to a population function (one line, safe to show)."""


def parse_day(value: str | None, *, name: str = "date") -> date:
    if value in (None, ""):
        return date.today()
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise FhirError(400, f"{name} must be a date YYYY-MM-DD, not '{value}'", code="value",
                        expression=[name]) from None


def check_patient_id(patient_id: str) -> None:
    """400 for a Patient id that cannot be one (checked before anything is read)."""
    if not ID.match(patient_id or ""):
        raise FhirError(400, f"'{patient_id}' is not a valid Patient id (1-64 of A-Z a-z 0-9 - .)", code="value",
                        expression=["id"])


def organisations(gate: Any, who: Any) -> dict[str, dict[str, Any]]:
    """The directory's organisations (id -> id, name, ODS code, partOf), read through the gate."""
    found = gate.search(who, "Organization", [("_count", "1000")], query_text="Organization?_count=1000",
                        max_count=1000)
    out = {}
    for s in found.matches:
        c = s.content or {}
        ods = next((i.get("value") for i in c.get("identifier") or [] if i.get("system") == ODS_ORGANIZATION), None)
        part = ((c.get("partOf") or {}).get("reference") or "").removeprefix("Organization/") or None
        out[s.id] = {"id": s.id, "name": c.get("name") or s.id, "ods": ods, "part_of": part}
    return out


def _org_names(orgs: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {f"Organization/{k}": v["name"] for k, v in orgs.items()}


def person_risk(*, gate: Any, who: Any, patient_id: str, today: date | None = None) -> dict[str, Any]:
    """Every risk and burden score for one person, from what the caller may see of their record."""
    check_patient_id(patient_id)
    if not (policy.has_activity(who, WORKLIST_ACTIVITY) or policy.has_activity(who, "patient-self-access")):
        # scored from only what such a role sees, every score would read as "none": refuse instead
        raise gate.refuse(who, "Risk and burden scores are worked out from the clinical record, which this role does "
                               "not see.", action="read", entity=f"Patient/{patient_id}:risk", patient_id=patient_id)
    today = today or date.today()
    stored = gate.everything(who, patient_id, types=RECORD_TYPES | {"Patient"})
    patient = next((s.content for s in stored if s.rtype == "Patient" and s.id == patient_id), None) or {
        "resourceType": "Patient", "id": patient_id}
    items = [s.content for s in stored if s.rtype != "Patient" and s.content]
    facts = person_facts.build(patient, items)
    try:
        orgs = organisations(gate, who)
    except FhirError:
        orgs = {}
    result = scores.person_risk(facts, today, _org_names(orgs))
    result["name"] = facts.name
    frailty = result["electronic_frailty_index"]
    result["registers"] = registers.person_registers(facts, today, frailty=frailty)
    return result


def resolve_practices(gate: Any, who: Any, *, practice: str | None = None, pcn: str | None = None
                      ) -> tuple[dict[str, dict[str, Any]], set[str] | None]:
    """The directory and the practice ids chosen by an ODS code (or id) of a practice or of a PCN."""
    for value, name in ((practice, "practice"), (pcn, "pcn")):
        if value is not None and not ODS.match(value):
            raise PopulationInputError(f"--{name} must be an ODS code such as Z00001, not '{value}'")
    try:
        orgs = organisations(gate, who)
    except FhirError:  # a role that may not read the directory: organisations are known by id only
        orgs = {}
    if practice is None and pcn is None:
        return orgs, None

    def find(value: str, name: str) -> str:
        for oid, o in orgs.items():
            if (o["ods"] or "").upper() == value.upper() or oid == value:
                return oid
        raise PopulationInputError(f"no organisation with ODS code '{value}' in the directory ({name})")

    chosen: set[str] = set()
    if practice is not None:
        chosen.add(find(practice, "practice"))
    if pcn is not None:
        pcn_id = find(pcn, "pcn")
        members = {oid for oid, o in orgs.items() if o["part_of"] == pcn_id}
        chosen = (chosen & members) if practice is not None else members
    return orgs, chosen


def _records(gate: Any, who: Any, purpose: str) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    for patient, items in gate.records(who, purpose=purpose, types=RECORD_TYPES):
        yield patient.content or {"id": patient.id}, [s.content for s in items if s.content]


def _population_records(gate: Any, who: Any, purpose: str
                        ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Records for a population figure: an analyst (pseudonymised analytics, no clinical record access) gets
    de-identified records only (`Gate.deidentified_records`: pseudonyms, no free text, birth year); everyone else
    the records the gate lets them see for this purpose."""
    if policy.has_activity(who, "pseudonymised-analytics") and not policy.has_activity(who, WORKLIST_ACTIVITY):
        for record in gate.deidentified_records(who, purpose=purpose, types=RECORD_TYPES):
            if record:
                yield record[0], record[1:]
        return
    yield from _records(gate, who, purpose)


def _require_clinician(gate: Any, who: Any, what: str) -> None:
    if not policy.has_activity(who, WORKLIST_ACTIVITY):
        raise gate.refuse(who, f"The {what} is for clinicians providing direct care: it needs permission to view the "
                               "clinical record, which this role does not have.", action="search",
                          entity=f"population:{what}")


def worklist(*, gate: Any, who: Any, practice: str | None = None, pcn: str | None = None,
             today: date | None = None, include_deceased: bool = False, register: str | None = None,
             status: str | None = None) -> dict[str, Any]:
    """Care processes due or overdue for the people on each register, per practice, for a clinician to act on.

    Direct care: people who opted out of secondary use stay on it; people recorded as deceased are left out unless
    `include_deceased`."""
    if register is not None and register not in registers.register_ids():
        raise PopulationInputError(f"unknown register '{register}' (one of {', '.join(registers.register_ids())})")
    if status not in (None, "due", "overdue"):
        raise PopulationInputError(f"status must be due or overdue, not '{status}'")
    _require_clinician(gate, who, "care-gaps worklist")
    today = today or date.today()
    orgs, chosen = resolve_practices(gate, who, practice=practice, pcn=pcn)
    rows: list[dict[str, Any]] = []
    people = deceased = 0
    for patient, items in _records(gate, who, WORKLIST_PURPOSE):
        facts = person_facts.build(patient, items)
        if chosen is not None and facts.practice not in chosen:
            continue
        if facts.deceased and not include_deceased:
            deceased += 1
            continue
        people += 1
        result = registers.person_registers(facts, today)
        gaps = [g for g in result["gaps"] if (register is None or g["register"] == register)
                and (status is None or g["status"] == status)]
        if not gaps:
            continue
        org = orgs.get(facts.practice or "", {})
        rows.append({"patient": facts.id, "name": facts.name, "age": facts.age_on(today),
                     "birth_date": facts.birth.isoformat() if facts.birth else None,
                     "practice": org.get("ods") or facts.practice, "practice_name": org.get("name"),
                     "registers": [r["register"] for r in result["registers"]],
                     "overdue": sum(1 for g in gaps if g["status"] == "overdue"),
                     "due": sum(1 for g in gaps if g["status"] == "due"), "gaps": gaps})
    rows.sort(key=lambda r: (-r["overdue"], -r["due"], r["name"]))
    return {"date": today.isoformat(), "practice": practice, "pcn": pcn, "register": register, "status": status,
            "people_checked": people, "deceased_excluded": deceased if not include_deceased else 0,
            "rows": rows, "purpose": WORKLIST_PURPOSE,
            "business_rules": registers.knowledge()["business_rules"]}


def register_sizes(*, gate: Any, who: Any, practice: str | None = None, pcn: str | None = None,
                   today: date | None = None) -> dict[str, Any]:
    """How many people are on each register, per practice (direct care: the caller's own reach; deceased excluded)."""
    _require_clinician(gate, who, "register list")
    today = today or date.today()
    orgs, chosen = resolve_practices(gate, who, practice=practice, pcn=pcn)
    kb = registers.knowledge()
    sizes: dict[str, dict[str, int]] = {}
    listed: dict[str, int] = {}
    for patient, items in _records(gate, who, REGISTER_PURPOSE):
        facts = person_facts.build(patient, items)
        if (chosen is not None and facts.practice not in chosen) or facts.deceased:
            continue
        key = orgs.get(facts.practice or "", {}).get("ods") or facts.practice or "unregistered"
        listed[key] = listed.get(key, 0) + 1
        for r in registers.registers_of(facts, today):
            per = sizes.setdefault(r["register"], {})
            per[key] = per.get(key, 0) + 1
    return {"date": today.isoformat(), "list_size": listed,
            "registers": [{"register": rid, "display": r["display"], "source": r["source"],
                           "by_practice": sizes.get(rid, {}), "total": sum(sizes.get(rid, {}).values())}
                          for rid, r in kb["registers"].items()],
            "business_rules": kb["business_rules"]}


BANDS = {"cambridge_multimorbidity_score": [(0.0, "0"), (0.01, "0.01-0.99"), (1.0, "1.00-1.99"), (2.0, "2.00-2.99"),
                                            (3.0, "3.00+")],
         "charlson": [(0, "0"), (1, "1-2"), (3, "3-4"), (5, "5+")],
         "regular_medicines": [(0, "0-4"), (5, "5-9"), (10, "10+")],
         "treatment_burden": [(0, "0-4"), (5, "5-11"), (12, "12-23"), (24, "24+")]}


def _band(measure: str, value: float) -> str:
    label = BANDS[measure][0][1]
    for lo, name in BANDS[measure]:
        if value >= lo:
            label = name
    return label


def population_risk(*, gate: Any, who: Any, practice: str | None = None, pcn: str | None = None,
                    today: date | None = None) -> dict[str, Any]:
    """The distribution of every score by practice, for planning: opted-out people excluded, deceased excluded,
    counts published with small-number suppression. Analysts score de-identified records (no free text: conditions
    recognised by code only; ages from the birth year)."""
    today = today or date.today()
    orgs, chosen = resolve_practices(gate, who, practice=practice, pcn=pcn)
    table: dict[str, dict[str, dict[str, int]]] = {}
    people: dict[str, int] = {}
    for patient, items in _population_records(gate, who, DISTRIBUTION_PURPOSE):
        facts = person_facts.build(patient, items)
        if (chosen is not None and facts.practice not in chosen) or facts.deceased:
            continue
        key = orgs.get(facts.practice or "", {}).get("ods") or facts.practice or "unregistered"
        people[key] = people.get(key, 0) + 1
        r = scores.person_risk(facts, today)
        values = {"cambridge_multimorbidity_score": r["cambridge_multimorbidity_score"]["score"],
                  "charlson": r["charlson"]["score"], "regular_medicines": r["regular_medicines"]["count"],
                  "treatment_burden": r["treatment_burden"]["contacts_per_year"]}
        for m, v in values.items():
            cell = table.setdefault(m, {}).setdefault(key, {})
            band = _band(m, v)
            cell[band] = cell.get(band, 0) + 1
        e = r["electronic_frailty_index"]
        if e["applies"]:
            cell = table.setdefault("electronic_frailty_index", {}).setdefault(key, {})
            cell[e["category"]] = cell.get(e["category"], 0) + 1
    return {"date": today.isoformat(), "purpose": DISTRIBUTION_PURPOSE,
            "people": deid.suppress_table(people),
            "distributions": {m: {p: deid.suppress_table(c) for p, c in per.items()} for m, per in table.items()},
            "bands": {m: [b for _, b in v] for m, v in BANDS.items()},
            "suppression": "counts from JOINEDUP_SUPPRESS_LOW to JOINEDUP_SUPPRESS_HIGH are shown as '*', others "
                           "rounded to a multiple of JOINEDUP_SUPPRESS_ROUND (governance.deid.suppress)",
            "excluded": "people who opted out (National Data Opt-out: planning is a secondary use) and people "
                        "recorded as deceased"}


def multimorbidity_band(n: int) -> str:
    """The cost report's multimorbidity segment for a count of long-term conditions (registers)."""
    return "0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else "4+"
