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
    FORM_WORDS,
    Knowledge,
    code_system,
    normalise_text,
    recognise_medicine_text,
    tokens,
)
from .models import SEVERITY_ORDER, AllergyItem, Finding, MedItem, PatientRecord, ResultItem, StoppedItem
from .recognition import ckd_from_egfr, condition_keys, med_dose, non_medicinal, result_key, result_value

ACTIVE_MED_STATEMENT = {"active", "intended", "on-hold"}
ACTIVE_MED_REQUEST = {"active", "on-hold"}
STOPPED_MED = {"stopped", "completed", "cancelled"}
INACTIVE_CONDITION = {"resolved", "inactive", "remission"}
BAD_VERIFICATION = {"refuted", "entered-in-error"}
BAD_OBS_STATUS = {"entered-in-error", "cancelled"}
CVX = "http://hl7.org/fhir/sid/cvx"  # CDC vaccine administered code system, as FHIR R4 names it
GIVEN_IMMUNIZATION = {"completed"}  # FHIR R4 Immunization.status: completed | entered-in-error | not-done
# FHIR R4 immunization-status-reason (v3 ActReason) codes that mean the vaccine should not be offered again
PRECLUDING_REASONS = {"MEDPREC", "IMMUNE"}


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
    if isinstance(vq, dict) and isinstance(vq.get("value"), (int, float)) and not isinstance(vq["value"], bool):
        return float(vq["value"])
    return None


def _obs_unit(res: dict[str, Any]) -> str:
    vq = res.get("valueQuantity") or {}
    return str(vq.get("unit") or vq.get("code") or "") if isinstance(vq, dict) else ""


# HbA1c is recorded in IFCC mmol/mol (UK) or DCCT % (US feeds): rules use mmol/mol; % = mmol/mol / 10.929 + 2.15
# (IFCC-DCCT master equation, NGSP/IFCC; NHS Diabetes "HbA1c standardisation" conversion)
def _normalise_result(key: str, value: float, unit: str) -> float:
    u = unit.strip().lower()
    if key == "hba1c" and (u == "%" or (not u and value < 20)):
        return round((value - 2.15) * 10.929, 1)
    if key == "magnesium" and (u == "mg/dl" or (not u and value > 1.4)):
        # mg/dL -> mmol/L (Mg 24.305 g/mol); an unlabelled value above 1.4 cannot be mmol/L in a living person's
        # serum range report (reference 0.7-1.0 mmol/L = 1.7-2.4 mg/dL) and is read as mg/dL
        return round(value / 2.431, 2)
    return value


def _med_date(res: dict[str, Any]) -> str:
    return str(res.get("authoredOn") or res.get("dateAsserted") or res.get("effectiveDateTime")
               or ((res.get("effectivePeriod") or {}).get("start")) or "")


def _stop_date(res: dict[str, Any]) -> str:
    """When a stopped/completed/cancelled line says the medicine ended (end of period, else when it was recorded)."""
    return str(((res.get("effectivePeriod") or {}).get("end")) or res.get("dateAsserted") or res.get("authoredOn")
               or res.get("effectiveDateTime") or ((res.get("effectivePeriod") or {}).get("start")) or "")


def _expired(res: dict[str, Any], today: str) -> bool:
    """A prescription whose dispense validity period (or whole-course effective period) ended before today."""
    end = ((res.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
    if res.get("resourceType") == "MedicationStatement":
        end = (res.get("effectivePeriod") or {}).get("end")
    return bool(end) and str(end)[:10] < today


def _expiry_date(res: dict[str, Any]) -> str:
    """When a prescription or course ran out: its effective period end, else its dispense validity end ("" when
    neither is recorded)."""
    return str((res.get("effectivePeriod") or {}).get("end")
               or ((res.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end") or "")


def recognise_vaccine(kb: Knowledge, concept: dict[str, Any] | None) -> str | None:
    """The vaccine key (influenza, pneumococcal, zoster, sars_cov_2) an Immunization.vaccineCode stands for: a CVX
    code listed in the knowledge, else a listed word in its text or displays; None when not one of these."""
    codings = [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]
    for c in codings:
        if str(c.get("system") or "").lower().rstrip("/") == CVX and str(c.get("code")) in kb.vaccine_cvx:
            return kb.vaccine_cvx[str(c.get("code"))]
    names = " ".join([_concept_text(concept), *(str(c.get("display") or "") for c in codings)])
    text = f" {normalise_text(names)} "
    for word, key in kb.vaccine_words:
        if f" {word} " in text or (len(word) > 6 and word in text):
            return key
    return None


def _read_immunization(kb: Knowledge, res: dict[str, Any], rec: PatientRecord) -> None:
    """An Immunization: any status but entered-in-error shows the record carries an immunisation history; a
    completed one of a known vaccine is remembered with its date (occurrenceDateTime, else recorded)."""
    status = str(res.get("status", "")).lower()
    if status == "entered-in-error":
        return
    rec.immunization_history = True
    key = recognise_vaccine(kb, res.get("vaccineCode"))
    if key is None:
        return
    if status not in GIVEN_IMMUNIZATION:
        # not given for a medical precaution or because the person is immune: the omission does not apply
        if status == "not-done" and (_status_code(res.get("statusReason")) or "").upper() in PRECLUDING_REASONS:
            rec.immunizations_precluded.add(key)
        return
    if res.get("isSubpotent") is True:  # a subpotent dose does not count as given (FHIR R4 Immunization.isSubpotent)
        return
    when = str(res.get("occurrenceDateTime") or res.get("recorded") or "")[:10]
    rec.immunizations.setdefault(key, []).append((when, _ref(res)))
    rec.facts[_ref(res)] = {"what": f"immunisation: {_concept_text(res.get('vaccineCode')) or key}", "date": when,
                            "source": str((res.get("meta") or {}).get("source") or "")}


def _is_deceased(res: dict[str, Any]) -> bool:
    if res.get("deceasedBoolean") is True:
        return True
    return bool(res.get("deceasedDateTime"))


def _condition_date(res: dict[str, Any]) -> str:
    return str(res.get("onsetDateTime") or res.get("recordedDate") or ((res.get("onsetPeriod") or {}).get("start"))
               or "")



def _obs_parts(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The readable parts of an Observation: itself, or - for a panel such as blood pressure (LOINC 85354-9, with
    systolic 8480-6 and diastolic 8462-4 as `component`s, as FHIR R4's vital-signs profile records it) and without a
    value of its own - each component with a numeric value, read as an observation of the same resource (same
    reference, status and date)."""
    comps = [c for c in res.get("component") or [] if isinstance(c, dict) and isinstance(c.get("valueQuantity"), dict)]
    if res.get("valueQuantity") is not None or not comps:
        return [res]
    return [{**{k: v for k, v in res.items() if k != "component"}, "code": c.get("code"),
             "valueQuantity": c["valueQuantity"]} for c in comps]


def _read_observation(kb: Knowledge, res: dict[str, Any], unrec: list[dict[str, Any]],
                      latest: dict[str, Any], egfr_history: list[Any]) -> None:
    """One observation (or one component of a panel): its result key and value in the canonical unit, kept when it is
    the latest of its kind; an observation no rule uses, without a number or in an unknown unit is reported."""
    rt = "Observation"
    key = result_key(kb, res.get("code"), _concept_text(res.get("code")))  # LOINC, SNOMED CT, text
    value = _obs_value(res)
    if key is None or value is None:
        unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                      "codes": [c for _, c, _ in _codes(res.get("code"))],
                      "reason": "observation not used by any rule" if key is None else "no numeric value"})
        return
    when = str(res.get("effectiveDateTime") or (res.get("effectivePeriod") or {}).get("start")
               or res.get("issued") or "")
    unit = _obs_unit(res)
    converted = result_value(kb, key, value, unit)  # to the canonical unit (terminology/results.yaml)
    if converted is None:
        unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                      "codes": [c for _, c, _ in _codes(res.get("code"))],
                      "reason": f"unit not recognised for {key}: {unit}"})
        return
    value = _normalise_result(key, converted, "" if key in kb.term.result_specs else unit)
    if key == "egfr":
        egfr_history.append((when, value, _ref(res)))
    prev = latest.get(key)
    if prev is None or when >= prev[0]:
        latest[key] = (when, value, unit, res)


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
    rec.today = today.isoformat()
    stops: list[tuple[frozenset[str], str, str, str]] = []  # (ingredients, stop date, source, ref)
    egfr_history: list[tuple[str, float, str]] = []  # (date, value, ref): CKD shown by eGFR (recognition.py)
    latest: dict[str, tuple[str, float, str, dict[str, Any]]] = {}  # result key -> (date, value, unit, resource)

    def add_med(res: dict[str, Any], draft: bool) -> None:
        concept = _medication_concept(res, by_ref)
        ings, missing = recognise_medicine(kb, concept)
        ref = _ref(res)
        text = _concept_text(concept) or "(no medication code or text)"
        if not ings and (what := non_medicinal(kb, concept, text)):  # e.g. a device ordered as a "medication"
            rec.non_medicinal.append({"reference": ref, "resourceType": res.get("resourceType"), "text": text,
                                      "codes": [c for _, c, _ in _codes(concept)], "kind": what})
            return
        if not ings:
            unrec.append({"reference": ref, "resourceType": res.get("resourceType"), "text": text,
                          "codes": [c for _, c, _ in _codes(concept)], "reason": "medicine not recognised"})
            return
        if missing:
            unrec.append({"reference": ref, "resourceType": res.get("resourceType"), "text": text,
                          "codes": [], "reason": "component not recognised: " + "; ".join(missing)})
        source = str((res.get("meta") or {}).get("source") or "")
        started = _med_date(res)
        if not draft:
            origin[ref] = (source, 0 if res.get("resourceType") == "MedicationRequest" else 1, started)
        rec.meds.append(MedItem(
            ref=ref, display=text, ingredients=ings, classes=kb.classes_of(ings), regular=_is_regular(res),
            draft=draft, acb=sum(kb.ingredient_acb.get(i, 0) for i in ings),
            falls_risk=any(kb.ingredient_falls.get(i, False) for i in ings), start=started, source=source,
            dose=med_dose(kb, concept, res, ings),
        ))
        rec.facts[ref] = {"what": f"{'draft order' if draft else 'current medicine'}: {text}", "date": started,
                          "source": source}

    def add_stop(res: dict[str, Any], expired: bool = False) -> None:
        """A line no longer taken: kept in the medicine history (`rec.stopped`); a stopped/completed/cancelled one
        (not merely expired) may also end another organisation's current line (`_stopped_elsewhere`)."""
        concept = _medication_concept(res, by_ref)
        ings, _ = recognise_medicine(kb, concept)
        if not ings:
            return
        if not expired:
            stops.append((ings, _stop_date(res), str((res.get("meta") or {}).get("source") or ""), _ref(res)))
        end = _expiry_date(res) or _stop_date(res)
        text, started = _concept_text(concept), _med_date(res)
        rec.stopped.append(StoppedItem(ref=_ref(res), display=text, ingredients=ings, start=started, end=end))
        rec.facts[_ref(res)] = {"what": f"medicine stopped or ended: {text} (from {started[:10] or 'unknown'} to "
                                        f"{end[:10] or 'unknown'})", "date": end,
                                "source": str((res.get("meta") or {}).get("source") or "")}

    for res in resources:
        rt = res.get("resourceType")
        if rt == "Patient":
            if _is_deceased(res):
                rec.deceased = True  # any of the person's linked Patient records
            if rec.patient is None or res.get("birthDate"):
                rec.patient = _ref(res)
                rec.age = _age(res.get("birthDate"), today)
                gender = str(res.get("gender") or "").lower()
                rec.sex = gender if gender in ("female", "male") else rec.sex
                rec.facts[rec.patient] = {"what": f"person: age {rec.age if rec.age is not None else 'unknown'}"
                                                  f"{', ' + gender if gender else ''}",
                                          "date": str(res.get("birthDate") or ""),
                                          "source": str((res.get("meta") or {}).get("source") or "")}
        elif rt == "MedicationStatement":
            status = str(res.get("status", "")).lower()
            if status in ACTIVE_MED_STATEMENT:
                if _expired(res, rec.today):
                    rec.not_current[_ref(res)] = "course ended (effectivePeriod.end)"
                    add_stop(res, expired=True)
                else:
                    add_med(res, False)
            elif status in STOPPED_MED:
                add_stop(res)
        elif rt == "MedicationRequest":
            status = str(res.get("status", "")).lower()
            if status in ACTIVE_MED_REQUEST and res.get("intent", "order") != "proposal":
                if _expired(res, rec.today):
                    rec.not_current[_ref(res)] = "prescription expired (dispenseRequest.validityPeriod.end)"
                    add_stop(res, expired=True)
                else:
                    add_med(res, False)
            elif status in STOPPED_MED:
                add_stop(res)
        elif rt == "Condition":
            status = (_status_code(res.get("clinicalStatus")) or "active").lower()
            verification = (_status_code(res.get("verificationStatus")) or "").lower()
            if verification in BAD_VERIFICATION:
                continue
            # every condition the code stands for (code lists, ICD-10, text) and those it implies (terminology.py)
            keys = condition_keys(kb, res.get("code"), _concept_text(res.get("code")))
            if not keys:
                unrec.append({"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                              "codes": [c for _, c, _ in _codes(res.get("code"))], "reason": "condition not recognised"})
                continue
            if status in INACTIVE_CONDITION:
                keys = tuple(k for k in keys if k in kb.history_counts)
                if not keys:
                    continue
            key = keys[0]
            for k in keys:
                rec.conditions.setdefault(k, []).append(_ref(res))
            rec.facts[_ref(res)] = {"what": f"condition: {_concept_text(res.get('code')) or key}"
                                            f"{' (' + status + ')' if status != 'active' else ''}",
                                    "date": _condition_date(res),
                                    "source": str((res.get("meta") or {}).get("source") or "")}
        elif rt == "Observation":
            if str(res.get("status", "")).lower() in BAD_OBS_STATUS:
                continue
            for part in _obs_parts(res):
                _read_observation(kb, part, unrec, latest, egfr_history)
        elif rt == "Immunization":
            _read_immunization(kb, res, rec)
        elif rt == "AllergyIntolerance":
            status = (_status_code(res.get("clinicalStatus")) or "active").lower()
            verification = (_status_code(res.get("verificationStatus")) or "").lower()
            if status != "active" or verification in BAD_VERIFICATION:
                continue
            ings, _ = recognise_medicine(kb, res.get("code"))
            if not ings:
                what = non_medicinal(kb, res.get("code"), _concept_text(res.get("code")))
                item = {"reference": _ref(res), "resourceType": rt, "text": _concept_text(res.get("code")),
                        "codes": [c for _, c, _ in _codes(res.get("code"))]}
                if what:  # positively identified as a food/environmental allergen: not an unrecognised medicine
                    rec.non_medicinal.append({**item, "kind": what})
                else:
                    unrec.append({**item, "reason": "allergen not recognised as a medicine"})
                continue
            cls = kb.classes_of(ings)
            # a penicillin or NSAID allergy is a class allergy (cross-sensitivity)
            rec.allergies.append(AllergyItem(ref=_ref(res), ingredients=ings,
                                             classes=cls & {"penicillin", "nsaid"}))
    for key, (when, value, unit, res) in latest.items():  # the latest result of each type, and its "why now" fact
        ref = _ref(res)
        shown = kb.result_units.get(key, "") or unit
        rec.results[key] = ResultItem(key=key, value=value, ref=ref, when=when, unit=shown)
        rec.facts[ref] = {"what": f"result: {key} {value:g} {shown}".rstrip(), "date": when,
                          "source": str((res.get("meta") or {}).get("source") or "")}
    if len(egfr_history) > 1:
        ckd_from_egfr(rec, egfr_history)
    if stops:
        _stopped_elsewhere(rec, stops)
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
    if len(groups) < len(rec.meds):
        _brand_and_generic(rec, origin, groups)
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


def _name_words(display: str) -> frozenset[str]:
    """The words that name a medicine line (strengths, forms and units left out): "Zestril 10mg tablets" ->
    {zestril}; "Lisinopril 10 MG Oral Tablet [Zestril]" -> {lisinopril, zestril}."""
    return frozenset(w for w in tokens(normalise_text(display)) if w not in FORM_WORDS and w not in _UNIT_WORDS)


_UNIT_WORDS = frozenset({"mg", "g", "mcg", "microgram", "micrograms", "ml", "unit", "units", "iu", "oral", "tab",
                         "tabs", "cap", "caps", "hr", "once", "daily", "weekly", "a"})


def _brand_and_generic(rec: PatientRecord, origin: dict[str, tuple[str, int, str]],
                       groups: dict[tuple[frozenset[str], bool], list[MedItem]]) -> None:
    """One organisation recording the same medicine under two names - the brand and the generic ("Zestril 10mg
    tablets" and "Lisinopril 10mg tablets"), an RxNorm SBD and its SCD - is one medicine: the prescription (else the
    latest entry) stands for the lines named differently and `brand_and_generic` lists them. Lines with the same
    name (two strengths of one medicine, a duplicate issue) stay separate. `groups` is updated in place."""
    drop: set[str] = set()
    for items in groups.values():
        by_source: dict[str, list[MedItem]] = {}
        for m in items:
            if m.ref in origin:
                by_source.setdefault(origin[m.ref][0], []).append(m)
        for lines in by_source.values():
            if len(lines) < 2:
                continue
            names = {m.ref: _name_words(m.display) for m in lines}
            if len(set(names.values())) < 2:
                continue
            keep = min(lines, key=lambda m: (origin[m.ref][1], not origin[m.ref][2], _desc(origin[m.ref][2]), m.ref))
            others = [m.ref for m in lines if names[m.ref] != names[keep.ref]]
            rec.brand_and_generic[keep.ref] = others
            drop.update(others)
    if drop:
        rec.meds = [m for m in rec.meds if m.ref not in drop]
        for key, items in groups.items():
            groups[key] = [m for m in items if m.ref not in drop]


def _stopped_elsewhere(rec: PatientRecord, stops: list[tuple[frozenset[str], str, str, str]]) -> None:
    """A current line is not current when another organisation later recorded the same medicine as stopped or
    completed (e.g. the hospital stopped it at discharge after the GP's last issue): the stop must be dated after
    the line's own date and come from a different source."""
    keep: list[MedItem] = []
    for m in rec.meds:
        why = None
        for ings, when, source, ref in stops:
            if ings == m.ingredients and source != m.source and when and m.start and when[:10] > m.start[:10]:
                why = f"stopped by a later record ({ref}, {when[:10]}{', ' + source if source else ''})"
                break
        if why:
            rec.not_current[m.ref] = why
            rec.facts.pop(m.ref, None)
        else:
            keep.append(m)
    rec.meds = keep


def _desc(text: str) -> tuple[int, ...]:
    """Sort key putting later ISO dates first."""
    return tuple(-ord(ch) for ch in text)


def detect(kb: Knowledge, rec: PatientRecord, *, include_deceased: bool = False) -> list[Finding]:
    """Run every rule over a recognised record through its kind's class (`kb.kinds`, see `rules.KINDS`), skipping
    rules already reconciled (`rec.resolved_ids`); deterministic order (severity, rule, involves)."""
    if rec.deceased and not include_deceased:
        return []
    findings: list[Finding] = []
    resolved = rec.resolved_ids
    held = frozenset().union(*(m.ingredients for m in rec.meds)) if rec.meds else frozenset()
    kinds = kb.kinds
    # only the rules whose trigger (an ingredient or condition they need) the record holds (rules.RuleIndex)
    stopped = frozenset().union(*(s.ingredients for s in rec.stopped)) if rec.stopped else frozenset()
    positions = kb.index.candidates(held, rec.conditions, stopped) if kb.index is not None else range(len(kinds))
    for pos in positions:
        kind, rule = kinds[pos]
        need = rule.get("_need")
        if need and any(n.isdisjoint(held) for n in need):
            continue  # a medicine the rule needs is not in the record
        if rule["id"] not in resolved:
            findings += kind.detect(kb, rec, rule)
    if findings:
        findings = _one_monitoring_request(findings)
        facts = rec.facts
        for f in findings:
            f.why_now = [{"ref": r, **facts[r]} for r in f.involves if r in facts]
        findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], f.rule, f.involves))
    return findings


def _one_monitoring_request(findings: list[Finding]) -> list[Finding]:
    """Several rules reading the same out-of-date result on the same medicine ask for one repeat test."""
    seen: set[tuple[str, ...]] = set()
    out = []
    for f in findings:
        if f.kind == "monitoring":
            key = tuple(f.involves[:2])
            if key in seen:
                continue
            seen.add(key)
        out.append(f)
    return out
