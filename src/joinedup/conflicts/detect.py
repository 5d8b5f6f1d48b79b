"""Recognise a person's FHIR resources and detect conflicts against the compiled knowledge base.

Map of this module: `build_record` turns FHIR resources (and draft orders) into a `PatientRecord`, helped by
`recognise_medicine`, the FHIR field readers (`_ref`, `_codes`, `_medication_concept`, ...) and
`_one_line_per_medicine` (one line per medicine across organisations); `detect` runs every rule through its kind's
`detect` (the kinds and their table are in `conflicts.rules`) and sorts the findings.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

from joinedup.fhir.values import age_on as _age

from .knowledge import (
    SYSTEM_ICD10,
    SYSTEM_LOINC,
    SYSTEM_SCT,
    Knowledge,
    code_system,
    recognise_condition_text,
    recognise_icd10,
    recognise_medicine_text,
)
from .models import SEVERITY_ORDER, AllergyItem, Finding, MedItem, PatientRecord, ResultItem

ACTIVE_MED_STATEMENT = {"active", "intended", "on-hold"}
ACTIVE_MED_REQUEST = {"active", "on-hold"}
INACTIVE_CONDITION = {"resolved", "inactive", "remission"}
BAD_VERIFICATION = {"refuted", "entered-in-error"}
BAD_OBS_STATUS = {"entered-in-error", "cancelled"}


def _ref(res: dict[str, Any]) -> str:
    return f"{res.get('resourceType')}/{res.get('id')}"


def _status_code(cc: Any) -> str | None:
    if isinstance(cc, dict):
        for c in cc.get("coding") or []:
            if c.get("code"):
                return str(c["code"])
        return cc.get("text")
    return None


def _concept_text(cc: dict[str, Any] | None) -> str:
    if not cc:
        return ""
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding") or []:
        if c.get("display"):
            return str(c["display"])
    return ""


def _codes(cc: dict[str, Any] | None) -> list[tuple[str | None, str, str]]:
    out = []
    for c in (cc or {}).get("coding") or []:
        if c.get("code") is not None:
            out.append((code_system(c.get("system")), str(c["code"]), str(c.get("system") or "")))
    return out


def recognise_medicine(kb: Knowledge, concept: dict[str, Any] | None) -> tuple[frozenset[str], list[str]]:
    """Ingredients for a medication CodeableConcept: codes first, then display/text."""
    for system, code, _ in _codes(concept):
        if system:
            hit = kb.med_codes.get((system, code))
            if hit:
                return frozenset(hit), []
    texts = []
    if concept:
        if concept.get("text"):
            texts.append(str(concept["text"]))
        texts.extend(str(c["display"]) for c in concept.get("coding") or [] if c.get("display"))
    missing: list[str] = []
    for t in texts:
        ings, miss = recognise_medicine_text(kb, t)
        if ings:
            return ings, miss
        missing = miss or [t]
    return frozenset(), missing


def _is_regular(res: dict[str, Any]) -> bool:
    cot = _status_code(res.get("courseOfTherapyType"))
    if cot and cot.lower() in {"acute"}:
        return False
    for d in res.get("dosageInstruction") or res.get("dosage") or []:
        if d.get("asNeededBoolean") is True or d.get("asNeededCodeableConcept"):
            return False
    return True


def _medication_concept(res: dict[str, Any], by_ref: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if res.get("medicationCodeableConcept"):
        return res["medicationCodeableConcept"]
    mref = (res.get("medicationReference") or {}).get("reference")
    if not mref:
        return None
    if mref.startswith("#"):
        for c in res.get("contained") or []:
            if c.get("id") == mref[1:]:
                return c.get("code")
        return None
    med = by_ref.get(mref)
    return (med or {}).get("code")


def _obs_value(res: dict[str, Any]) -> float | None:
    vq = res.get("valueQuantity")
    if isinstance(vq, dict) and isinstance(vq.get("value"), (int, float)):
        return float(vq["value"])
    return None


def build_record(
    kb: Knowledge,
    resources: Iterable[dict[str, Any]],
    draft_orders: Iterable[dict[str, Any]] = (),
    today: date | None = None,
) -> PatientRecord:
    """Recognise the person's resources into a PatientRecord (unrecognised items are kept, never dropped)."""
    resources = [r for r in resources if isinstance(r, dict)]
    by_ref = {_ref(r): r for r in resources if r.get("resourceType") == "Medication"}
    rec = PatientRecord()
    unrec = rec.unrecognised
    today = today or date.today()

    origin: dict[str, tuple[str, int, str]] = {}  # med ref -> (source, prescription first, date)

    def add_med(res: dict[str, Any], draft: bool) -> None:
        concept = _medication_concept(res, by_ref)
        ings, missing = recognise_medicine(kb, concept)
        ref = _ref(res)
        text = _concept_text(concept) or "(no medication code or text)"
        if not ings:
            unrec.append({"reference": ref, "resourceType": res.get("resourceType"), "text": text,
                          "codes": [c for _, c, _ in _codes(concept)], "reason": "medicine not recognised"})
            return
        if missing:
            unrec.append({"reference": ref, "resourceType": res.get("resourceType"), "text": text,
                          "codes": [], "reason": "component not recognised: " + "; ".join(missing)})
        if not draft:
            origin[ref] = (str((res.get("meta") or {}).get("source") or ""),
                           0 if res.get("resourceType") == "MedicationRequest" else 1,
                           str(res.get("authoredOn") or res.get("dateAsserted") or res.get("effectiveDateTime")
                               or ((res.get("effectivePeriod") or {}).get("start")) or ""))
        rec.meds.append(MedItem(
            ref=ref, display=text, ingredients=ings, classes=kb.classes_of(ings), regular=_is_regular(res),
            draft=draft, acb=sum(kb.ingredient_acb.get(i, 0) for i in ings),
            falls_risk=any(kb.ingredient_falls.get(i, False) for i in ings),
        ))

    for res in resources:
        rt = res.get("resourceType")
        if rt == "Patient":
            rec.patient = _ref(res)
            rec.age = _age(res.get("birthDate"), today)
        elif rt == "MedicationStatement":
            if str(res.get("status", "")).lower() in ACTIVE_MED_STATEMENT:
                add_med(res, False)
        elif rt == "MedicationRequest":
            if str(res.get("status", "")).lower() in ACTIVE_MED_REQUEST and res.get("intent", "order") != "proposal":
                add_med(res, False)
        elif rt == "Condition":
            status = (_status_code(res.get("clinicalStatus")) or "active").lower()
            verification = (_status_code(res.get("verificationStatus")) or "").lower()
            if verification in BAD_VERIFICATION:
                continue
            key = None
            for system, code, _ in _codes(res.get("code")):
                if system == SYSTEM_SCT:
                    key = kb.condition_codes.get((SYSTEM_SCT, code))
                elif system == SYSTEM_ICD10:
                    key = recognise_icd10(kb, code)
                if key:
                    break
            if key is None:
                key = recognise_condition_text(kb, _concept_text(res.get("code")))
            if key is None:
                unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                              "codes": [c for _, c, _ in _codes(res.get("code"))], "reason": "condition not recognised"})
                continue
            if status in INACTIVE_CONDITION and key not in kb.history_counts:
                continue
            rec.conditions.setdefault(key, []).append(_ref(res))
        elif rt == "Observation":
            if str(res.get("status", "")).lower() in BAD_OBS_STATUS:
                continue
            key = None
            for system, code, _ in _codes(res.get("code")):
                if system == SYSTEM_LOINC:
                    key = kb.result_loinc.get(code)
                    if key:
                        break
            if key is None:
                hits = kb.result_text.match(_concept_text(res.get("code")))
                key = hits[0][0] if hits else None
            value = _obs_value(res)
            if key is None or value is None:
                unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                              "codes": [c for _, c, _ in _codes(res.get("code"))],
                              "reason": "observation not used by any rule" if key is None else "no numeric value"})
                continue
            when = str(res.get("effectiveDateTime") or res.get("issued") or "")
            prev = rec.results.get(key)
            if prev is None or when >= prev.when:
                rec.results[key] = ResultItem(key=key, value=value, ref=_ref(res), when=when)
        elif rt == "AllergyIntolerance":
            status = (_status_code(res.get("clinicalStatus")) or "active").lower()
            verification = (_status_code(res.get("verificationStatus")) or "").lower()
            if status != "active" or verification in BAD_VERIFICATION:
                continue
            ings, _ = recognise_medicine(kb, res.get("code"))
            if not ings:
                unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                              "codes": [c for _, c, _ in _codes(res.get("code"))],
                              "reason": "allergen not recognised as a medicine"})
                continue
            cls = kb.classes_of(ings)
            # a penicillin or NSAID allergy is a class allergy (cross-sensitivity)
            rec.allergies.append(AllergyItem(ref=_ref(res), ingredients=ings,
                                             classes=cls & {"penicillin", "nsaid"}))
    _one_line_per_medicine(rec, origin)
    for res in draft_orders or ():
        if isinstance(res, dict):
            add_med(res, True)
    return rec


def _one_line_per_medicine(rec: PatientRecord, origin: dict[str, tuple[str, int, str]]) -> None:
    """A shared record holds the same medicine as several organisations recorded it (the GP's prescription, the
    hospital's discharge list, the community team's reconciliation). Counting each copy would double burden scores
    and medicine counts and repeat every alert, so lines with the same ingredients and the same regular/as-needed
    use that come from *different* organisations are one medicine: the prescription (else the most recent entry)
    stands for them and `recorded_elsewhere` lists the others. Two lines of the same medicine from one organisation
    stay separate (that is a duplicate on its own list)."""
    groups: dict[tuple[frozenset[str], bool], list[MedItem]] = {}
    for m in rec.meds:
        groups.setdefault((m.ingredients, m.regular), []).append(m)
    drop: set[str] = set()
    for items in groups.values():
        if len({origin[m.ref][0] for m in items}) < 2:
            continue
        keep = min(items, key=lambda m: (origin[m.ref][1], not origin[m.ref][2], _desc(origin[m.ref][2]), m.ref))
        source = origin[keep.ref][0]
        others = [m.ref for m in items if origin[m.ref][0] != source]
        rec.recorded_elsewhere[keep.ref] = others
        drop.update(others)
    if drop:
        rec.meds = [m for m in rec.meds if m.ref not in drop]


def _desc(text: str) -> tuple[int, ...]:
    """Sort key putting later ISO dates first."""
    return tuple(-ord(ch) for ch in text)


def detect(kb: Knowledge, rec: PatientRecord) -> list[Finding]:
    """Run every rule over a recognised record through its kind's class (`kb.kinds`, see `rules.KINDS`), skipping
    rules already reconciled (`rec.resolved_ids`); deterministic order (severity, rule, involves)."""
    findings: list[Finding] = []
    resolved = rec.resolved_ids
    for kind, rule in kb.kinds:
        if rule["id"] not in resolved:
            findings += kind.detect(kb, rec, rule)
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.rule, f.involves))
    return findings
