"""What the scores and registers need from one person's record (plain FHIR dicts): recognised conditions with their
status and dates, ICD-10 codes, current regular medicines, contacts and dated evidence of care processes.

Conditions are recognised with the shared recognition of the conflicts engine (`conflicts.recognition`), which reads
knowledge/conditions.yaml and the OpenCodelists QOF register lists, so the code lists are never duplicated here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

from joinedup.conflicts import service as conflicts_service
from joinedup.conflicts.recognition import condition_keys

INACTIVE_CLINICAL = {"resolved", "inactive", "remission"}
NOT_TRUE = {"refuted", "entered-in-error"}
# an Observation, Procedure or CarePlan with one of these statuses is no evidence of care (an Encounter always is)
NOT_EVIDENCE_STATUS = ("entered-in-error", "cancelled", "not-done", "planned", "revoked", "draft")
# current medicines: MedicationRequest status and intent, MedicationStatement status
CURRENT_REQUEST = ("active", "on-hold")
CURRENT_INTENT = ("order", "plan", "original-order", "instance-order")
CURRENT_STATEMENT = ("active",)
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10_SYSTEMS = ("icd-10", "icd10")


@lru_cache(maxsize=1)
def _kb() -> Any:
    return conflicts_service.knowledge()


def _code(concept: dict[str, Any] | None, attr: str = "code") -> str:
    return str(((concept or {}).get("coding") or [{}])[0].get(attr) or "")


def concept_text(concept: dict[str, Any] | None) -> str:
    concept = concept or {}
    parts = [concept.get("text") or ""] + [c.get("display") or "" for c in concept.get("coding") or []]
    return " ".join(p for p in parts if p)


def normalise(text: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split()) + " "


@lru_cache(maxsize=4096)
def _phrase(phrase: str) -> str:
    return normalise(phrase)


def phrase_in(phrase: str, norm_text: str) -> bool:
    """Whole-phrase match in normalised text (both padded with spaces)."""
    return _phrase(phrase) in norm_text


def day_of(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 1, 1)
        if len(value) == 7:
            return date(int(value[:4]), int(value[5:7]), 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _period_start(res: dict[str, Any], *names: str) -> date | None:
    for n in names:
        v = res.get(n)
        if isinstance(v, dict):
            v = v.get("start") or v.get("end")
        d = day_of(v)
        if d:
            return d
    return None


@dataclass
class ConditionFact:
    keys: tuple[str, ...]
    active: bool
    onset: date | None
    text: str
    reference: str
    snomed: frozenset[str] = frozenset()


@dataclass
class Evidence:
    codes: frozenset[str]
    text: str
    day: date
    reference: str


@dataclass
class PersonFacts:
    id: str
    name: str
    birth: date | None
    gender: str | None
    deceased: bool
    practice: str | None
    conditions: list[ConditionFact] = field(default_factory=list)
    icd10: list[str] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)   # (normalised text, reference) of clinical entries
    medicines: dict[str, str] = field(default_factory=dict)      # key -> display, current regular only
    as_needed: int = 0
    contacts: list[dict[str, Any]] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    _blob: str | None = field(default=None, repr=False)

    def age_on(self, today: date) -> int | None:
        if self.birth is None:
            return None
        return today.year - self.birth.year - ((today.month, today.day) < (self.birth.month, self.birth.day))

    def blob(self) -> str:
        """Every clinical text of the record in one string (entries separated so no phrase spans two)."""
        if self._blob is None:
            self._blob = " | ".join(sorted({t for t, _ in self.texts})) + " "
        return self._blob

    def active_keys(self) -> set[str]:
        return {k for c in self.conditions if c.active for k in c.keys}


def _name(patient: dict[str, Any]) -> str:
    for n in patient.get("name") or []:
        given = " ".join(n.get("given") or [])
        family = n.get("family") or ""
        text = n.get("text") or f"{given} {family}".strip()
        if text:
            return text
    return patient.get("id") or ""


def _practice(patient: dict[str, Any]) -> str | None:
    for ref in patient.get("generalPractitioner") or []:
        r = ref.get("reference") or ""
        if r.startswith("Organization/"):
            return r.split("/", 1)[1]
    return None


def _as_needed(res: dict[str, Any]) -> bool:
    doses = res.get("dosageInstruction") or res.get("dosage") or []
    return bool(doses) and all(d.get("asNeededBoolean") is True or d.get("asNeededCodeableConcept") for d in doses)


def _med_key(concept: dict[str, Any] | None, res: dict[str, Any]) -> tuple[str, str] | None:
    concept = concept or {}
    display = concept.get("text") or _code(concept, "display")
    code = _code(concept)
    if not code and not display:
        ref = (res.get("medicationReference") or {}).get("display") or (res.get("medicationReference") or {}).get(
            "reference")
        if not ref:
            return None
        return normalise(ref).strip(), ref
    return (code or normalise(display).strip()), (display or code)


EVIDENCE_DATES = ("effectiveDateTime", "effectivePeriod", "performedDateTime", "performedPeriod", "period", "issued",
                  "created")


def condition_concept(code: dict[str, Any] | None) -> tuple[str, tuple[str, ...], frozenset[str]]:
    """A Condition.code's text, the condition keys it is recognised as and its SNOMED CT codes (the same for the
    person view and, per distinct code, for the population's SQL pass)."""
    text = concept_text(code)
    keys = condition_keys(_kb(), code, text)
    snomed = frozenset(str(c["code"]) for c in (code or {}).get("coding") or []
                       if c.get("code") and "snomed" in (c.get("system") or ""))
    return text, keys, snomed


def evidence_concepts(res: dict[str, Any]) -> tuple[frozenset[str], str]:
    """The codes ("system|code") and normalised text an Observation, Procedure, CarePlan or Encounter offers as
    evidence of care: Encounter type and reason, CarePlan category and title, else the code (an Observation also
    its components' codes and a coded value's text)."""
    rtype = res.get("resourceType")
    if rtype == "Encounter":
        concepts = list(res.get("type") or []) + list(res.get("reasonCode") or [])
    elif rtype == "CarePlan":
        concepts = list(res.get("category") or [])
    else:
        concepts = [res.get("code") or {}]
    codes = frozenset(f"{c.get('system')}|{c.get('code')}" for cc in concepts for c in cc.get("coding") or []
                      if c.get("code"))
    text = " ".join(concept_text(cc) for cc in concepts) + " " + (res.get("title") or "")
    if rtype == "Observation":
        for comp in res.get("component") or []:
            codes |= {f"{c.get('system')}|{c.get('code')}" for c in (comp.get("code") or {}).get("coding")
                      or [] if c.get("code")}
        vc = res.get("valueCodeableConcept")
        if vc:
            text += " " + concept_text(vc)
    return codes, normalise(text)


def medicine_line(res: dict[str, Any]) -> tuple[str, str, str] | None:
    """A medicine line's key (its code, else its normalised name), display and normalised name; None when it names
    no medicine."""
    key = _med_key(res.get("medicationCodeableConcept"), res)
    if key is None:
        return None
    code_or_name, display = key
    return code_or_name, display, normalise(display).strip()


def build(patient: dict[str, Any], items: list[dict[str, Any]]) -> PersonFacts:
    """One person's facts from their Patient resource and the entries of their record."""
    pid = patient.get("id") or ""
    facts = PersonFacts(id=pid, name=_name(patient), birth=day_of(patient.get("birthDate")),
                        gender=patient.get("gender"),
                        deceased=bool(patient.get("deceasedBoolean") or patient.get("deceasedDateTime")),
                        practice=_practice(patient))
    by_name: dict[str, str] = {}
    for res in items:
        rtype = res.get("resourceType")
        ref = f"{rtype}/{res.get('id')}"
        if rtype == "Condition":
            ver = _code(res.get("verificationStatus"))
            if ver in NOT_TRUE:
                continue
            clinical = _code(res.get("clinicalStatus")) or "active"
            text, keys, snomed = condition_concept(res.get("code"))
            onset = _period_start(res, "onsetDateTime", "onsetPeriod", "recordedDate")
            facts.conditions.append(ConditionFact(keys=keys, active=clinical not in INACTIVE_CLINICAL, onset=onset,
                                                  text=text, reference=ref, snomed=snomed))
            if clinical not in INACTIVE_CLINICAL:
                facts.texts.append((normalise(text), ref))
                for c in (res.get("code") or {}).get("coding") or []:
                    if any(s in (c.get("system") or "").lower() for s in ICD10_SYSTEMS) and c.get("code"):
                        facts.icd10.append(str(c["code"]))
        elif rtype in ("Observation", "Procedure", "CarePlan", "Encounter"):
            if rtype != "Encounter" and res.get("status") in NOT_EVIDENCE_STATUS:
                continue
            if rtype == "Encounter":
                if res.get("status") not in ("cancelled", "entered-in-error", "planned"):
                    facts.contacts.append(_contact(res, ref))
            day = _period_start(res, *EVIDENCE_DATES)
            codes, norm = evidence_concepts(res)
            if rtype in ("Observation", "Procedure"):
                facts.texts.append((norm, ref))
            if day is not None:
                facts.evidence.append(Evidence(codes=codes, text=norm, day=day, reference=ref))
        elif rtype == "Appointment":
            if res.get("status") in ("booked", "arrived", "fulfilled", "checked-in"):
                facts.contacts.append(_contact(res, ref))
        elif rtype in ("MedicationRequest", "MedicationStatement"):
            if rtype == "MedicationRequest":
                current = res.get("status") in CURRENT_REQUEST and res.get("intent", "order") in CURRENT_INTENT
            else:
                current = res.get("status") in CURRENT_STATEMENT
            if not current:
                continue
            line = medicine_line(res)
            if line is None:
                continue
            if _as_needed(res):
                facts.as_needed += 1
                continue
            code_or_name, display, nk = line
            existing = by_name.get(nk)
            if existing is not None and existing != code_or_name:
                continue  # the same medicine recorded by another organisation under another code: count once
            by_name.setdefault(nk, code_or_name)
            facts.medicines.setdefault(code_or_name, display)
    return facts


def _contact(res: dict[str, Any], ref: str) -> dict[str, Any]:
    if res.get("resourceType") == "Appointment":
        org = next((p.get("actor", {}).get("reference") for p in res.get("participant") or []
                    if (p.get("actor", {}).get("reference") or "").startswith(("Organization/", "Location/"))), None)
        return {"reference": ref, "day": day_of(res.get("start")), "setting": "APPT", "organization": org}
    cls = res.get("class") or {}
    return {"reference": ref, "day": _period_start(res, "period"), "setting": cls.get("code") or "UNK",
            "organization": (res.get("serviceProvider") or {}).get("reference")}
