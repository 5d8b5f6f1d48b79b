"""Risk and burden scores against worked examples written from the published definitions (not from the code):
Cambridge Multimorbidity Score general-outcome weights (Payne et al. CMAJ 2020), the electronic Frailty Index
(Clegg et al. Age Ageing 2016: deficits / 36, fit <= 0.12, mild 0.13-0.24, moderate 0.25-0.36, severe > 0.36),
Charlson with Quan 2005 ICD-10 categories reproduced against comorbidipy 0.5.0 on generated inputs, dotted or not,
the count of regular medicines (not when-required, current, once across organisations) and contacts per year."""

from __future__ import annotations

import itertools
import random
from datetime import date

import pytest

from joinedup.population.risk import facts as F
from joinedup.population.risk import scores as S

SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
TODAY = date(2026, 6, 30)
_IDS = itertools.count(1)


def patient(birth="1940-05-01", **extra):
    return {"resourceType": "Patient", "id": "p1", "birthDate": birth, "gender": "female",
            "generalPractitioner": [{"reference": "Organization/gp-1"}], **extra}


def cond(code=None, text=None, *, system=SCT, onset="2015-01-01", status="active"):
    n = next(_IDS)
    c = {"resourceType": "Condition", "id": f"c{n}", "subject": {"reference": "Patient/p1"},
         "clinicalStatus": {"coding": [{"code": status}]}, "onsetDateTime": onset, "code": {}}
    if code:
        c["code"]["coding"] = [{"system": system, "code": code}]
    if text:
        c["code"]["text"] = text
    return c


def test_cambridge_weights_add_up_as_published():
    # SNOMED CT 13645005 COPD, 52448006 dementia, 38341003 hypertension: 1.46 + 2.50 + 0.08 (Payne 2020 general)
    f = F.build(patient(), [cond("13645005"), cond("52448006"), cond("38341003")])
    r = S.cambridge(f, TODAY)
    assert {c["condition"] for c in r["conditions"]} == {"copd", "dementia", "hypertension"}
    assert r["score"] == pytest.approx(4.04)


def test_cambridge_counts_cancer_only_within_five_years():
    old = F.build(patient(), [cond(text="cancer", onset="2019-01-01")])
    recent = F.build(patient(), [cond(text="cancer", onset="2023-02-01")])
    assert S.cambridge(old, TODAY)["score"] == 0
    assert S.cambridge(recent, TODAY)["score"] == pytest.approx(1.53)


def test_cambridge_ignores_resolved_conditions():
    f = F.build(patient(), [cond("13645005", status="resolved"), cond("38341003")])
    assert S.cambridge(f, TODAY)["score"] == pytest.approx(0.08)


@pytest.mark.parametrize(("n", "category"), [(0, "fit"), (4, "fit"), (5, "mild"), (8, "mild"), (9, "moderate"),
                                             (13, "moderate"), (14, "severe")])
def test_efi_categories_from_clegg(n, category):
    # 4/36 = 0.11 fit; 5/36 = 0.14 mild; 8/36 = 0.22 mild; 9/36 = 0.25 moderate; 13/36 = 0.36 moderate;
    # 14/36 = 0.39 severe
    assert S.efi_category(n / 36) == category


def test_efi_counts_each_deficit_once():
    items = [cond("38341003"), cond(text="Essential hypertension"),   # hypertension, twice: one deficit
             cond("49436004"),                                       # atrial fibrillation
             cond(text="Falls"), cond(text="Urinary incontinence"), cond(text="Housebound"),
             cond(text="Hearing loss"), cond(text="Insomnia"), cond(text="Lives alone")]
    for i in range(5):  # five regular medicines: the polypharmacy deficit
        items.append({"resourceType": "MedicationRequest", "id": f"m{i}", "status": "active", "intent": "order",
                      "medicationCodeableConcept": {"text": f"Medicine {i} 5mg tablets"},
                      "dosageInstruction": [{"text": "once daily"}]})
    r = S.efi(F.build(patient(), items), TODAY)
    assert r["count"] == 9 and r["of"] == 36
    assert r["value"] == pytest.approx(0.25)
    assert r["category"] == "moderate" and r["applies"] is True


def test_efi_does_not_apply_under_65():
    r = S.efi(F.build(patient(birth="1990-01-01"), [cond(text="Falls")]), TODAY)
    assert r["applies"] is False


def test_regular_medicines_exclude_prn_stopped_and_duplicates():
    def mr(i, name, *, status="active", prn=False, source="gp-1", code=None):
        m = {"resourceType": "MedicationRequest", "id": f"m{i}", "status": status, "intent": "order",
             "meta": {"source": f"Organization/{source}"}, "medicationCodeableConcept": {"text": name},
             "dosageInstruction": [{"text": "as required" if prn else "once daily", "asNeededBoolean": prn}]}
        if code:
            m["medicationCodeableConcept"]["coding"] = [{"system": "https://dmd.nhs.uk", "code": code,
                                                         "display": name}]
        return m
    items = [mr(1, "Amlodipine 5mg tablets", code="319283006"), mr(2, "Metformin 500mg tablets"),
             mr(3, "Paracetamol 500mg tablets", prn=True), mr(4, "Ramipril 5mg capsules", status="stopped"),
             mr(5, "Amlodipine 5mg tablets", source="acute", code="319283006"),
             {"resourceType": "MedicationStatement", "id": "s1", "status": "active",
              "medicationCodeableConcept": {"text": "Metformin 500mg tablets"}}]
    r = S.regular_medicines(F.build(patient(), items))
    assert r["count"] == 2 and r["as_needed_excluded"] == 1
    assert r["polypharmacy"] is False


def test_treatment_burden_counts_contacts_in_the_last_year_by_setting():
    def enc(i, cls, day, status="finished", org="Organization/gp-1"):
        return {"resourceType": "Encounter", "id": f"e{i}", "status": status, "class": {"code": cls},
                "period": {"start": day}, "serviceProvider": {"reference": org}}
    items = [enc(1, "AMB", "2026-01-10"), enc(2, "VR", "2026-03-01"), enc(3, "EMER", "2026-05-05", org="Organization/acute"),
             enc(4, "IMP", "2025-06-30"),                      # exactly a year before: outside the window
             enc(5, "AMB", "2026-02-02", status="cancelled"),  # cancelled: not a contact
             {"resourceType": "Appointment", "id": "a1", "status": "booked", "start": "2026-06-01T10:00:00Z",
              "participant": [{"actor": {"reference": "Organization/community"}}]}]
    r = S.treatment_burden(F.build(patient(), items), TODAY, {"Organization/acute": "Acute trust"})
    assert r["contacts_per_year"] == 4
    assert r["by_setting"]["Emergency department"] == 1 and r["by_setting"]["Appointment"] == 1
    assert r["by_organisation"]["Acute trust"] == 1 and r["by_organisation"]["Organization/gp-1"] == 2


def test_charlson_quan_worked_example():
    # Quan 2011 weights: CHF 2, dementia 2, diabetes with complications 1 (uncomplicated not also counted),
    # metastatic solid tumour 6 (any malignancy not also counted); MI 0. Charlson 1987: 1 + 1 + 2 + 6 + 1 = 11
    codes = ["I50.0", "F00.1", "E11.2", "E11.9", "C78.0", "C18.2", "I21.4"]
    assert S.charlson(codes)["score"] == 2 + 2 + 1 + 6
    assert S.charlson(codes, weights="charlson")["score"] == 1 + 1 + 2 + 6 + 1
    assert S.charlson(codes, age=72)["age_adjusted"] == 11 + 3


def _comorbidipy():
    pandas = pytest.importorskip("pandas")
    import pandas.core.common as pcc

    # comorbidipy 0.5.0 imports a warning class that pandas 2 moved: give it the one pandas has
    if not hasattr(pcc, "SettingWithCopyWarning"):
        pcc.SettingWithCopyWarning = getattr(pandas.errors, "SettingWithCopyWarning", Warning)
    comorbidipy = pytest.importorskip("comorbidipy")
    return pandas, comorbidipy


def _icd_pool():
    from comorbidipy.mapping import mapping

    pool = set()
    for prefixes in mapping["charlson_icd10_quan"].values():
        for p in prefixes:
            pool.add(p)
            pool.update(p + d for d in "0189")
    return sorted(pool | {"J189", "Z000", "R69", "A099", "M545", "K359", "N390"})  # and codes in no category


@pytest.mark.parametrize("weights", ["quan", "charlson"])
def test_charlson_reproduces_comorbidipy_on_generated_inputs(weights):
    pd, cb = _comorbidipy()
    rng = random.Random(18)
    pool = _icd_pool()
    rows, people = [], {}
    for pid in range(400):
        codes = rng.sample(pool, rng.randint(0, 6))
        age = rng.randint(18, 99)
        people[pid] = (codes, age)
        rows += [{"id": pid, "code": c, "age": age} for c in codes]
    rows.append({"id": 10_000, "code": "Z000", "age": 50})
    people[10_000] = (["Z000"], 50)
    expected = cb.comorbidity(pd.DataFrame(rows), score="charlson", icd="icd10", variant="quan", weighting=weights,
                              assign0=True)
    expected = {int(r["id"]): (r["comorbidity_score"], r["age_adj_comorbidity_score"])
                for r in expected.to_dict("records")}
    for pid, (codes, age) in people.items():
        if pid not in expected:
            continue  # a person with no codes is not in comorbidipy's output
        dotted = [c[:3] + "." + c[3:] if len(c) > 3 else c for c in codes]
        for form in (codes, dotted, [c.lower() for c in dotted]):
            got = S.charlson(form, age=age, weights=weights)
            assert (got["score"], got["age_adjusted"]) == expected[pid], (pid, form)


def test_charlson_rejects_unknown_weights():
    with pytest.raises(ValueError, match="unknown Charlson weights"):
        S.charlson(["I50"], weights="elixhauser")
