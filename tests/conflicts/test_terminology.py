"""Terminology that real feeds use: RxNorm/dm+d name grammar, brands, product codes, SNOMED CT code lists, ICD-10,
text, CKD stages, result codes and units, non-medicinal items - and the Synthea recognition targets.

Expectations come from the sources: the NLM RxNorm naming conventions (SCD/SBD/GPCK/BPCK, quantity factor, release
duration), NHS dm+d naming (VMP/AMP/VMPP), the product labels named in terminology/medicines.yaml, the NHS QOF register
code lists (OpenCodelists), KDIGO/NICE NG203 GFR categories, UCUM molar masses and the IFCC-NGSP HbA1c master
equation, Cockcroft & Gault (Nephron 1976) in the SI form the BNF and MHRA give, and the real Synthea exports.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from joinedup.conflicts.detect import build_record, recognise_medicine
from joinedup.conflicts.knowledge import load_knowledge, recognise_medicine_text
from joinedup.conflicts.recognition import condition_keys
from joinedup.conflicts.service import check_record
from joinedup.conflicts.terminology import (
    ckd_from_egfr_history,
    ckd_stage_from_egfr,
    cockcroft_gault,
    hba1c_dcct_from_ifcc,
    hba1c_ifcc_from_dcct,
    parse_medicine_name,
)
from tests.conftest import sample_lines

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
KB = load_knowledge()


# -- the RxNorm and dm+d name grammar ------------------------------------------------------------------------------
def test_rxnorm_quantity_factor_is_not_a_strength() -> None:
    p = parse_medicine_name("10 ML Furosemide 10 MG/ML Injection")
    assert p.quantity == (10.0, "ml")
    [ing] = p.ingredients
    assert ing.name == "Furosemide"
    assert (ing.strength.value, ing.strength.unit, ing.strength.per_unit) == (10.0, "mg", "ml")
    assert p.form == "injection" and p.name_type == "SCD"


def test_rxnorm_release_duration_prefix() -> None:
    p = parse_medicine_name("24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet")
    assert p.duration_hours == 24.0 and p.release == "extended"
    assert (p.form, p.route) == ("tablet", "oral")
    [ing] = p.ingredients
    assert ing.name.lower() == "metformin hydrochloride" and ing.strength.mg_per_unit() == 500.0


def test_rxnorm_generic_pack_lists_each_active_ingredient_once_and_drops_inert_tablets() -> None:
    p = parse_medicine_name("{21 (Ethinyl Estradiol 0.03 MG / Levonorgestrel 0.15 MG Oral Tablet) / "
                            "7 (Inert Ingredients 1 MG Oral Tablet) } Pack")
    assert p.pack and p.name_type == "GPCK"
    assert [(i.name, i.strength.value) for i in p.ingredients] == [("Ethinyl Estradiol", 0.03),
                                                                    ("Levonorgestrel", 0.15)]


def test_rxnorm_branded_drug_and_branded_pack() -> None:
    sbd = parse_medicine_name("Furosemide 40 MG Oral Tablet [Lasix]")
    assert sbd.brand == "Lasix" and sbd.name_type == "SBD"
    bpck = parse_medicine_name("{28 (Drospirenone 3 MG / Ethinyl Estradiol 0.02 MG Oral Tablet) } Pack [Yaz]")
    assert bpck.brand == "Yaz" and bpck.name_type == "BPCK"
    assert {i.name for i in bpck.ingredients} == {"Drospirenone", "Ethinyl Estradiol"}


def test_dmd_names_vmp_amp_and_vmpp() -> None:
    vmp = parse_medicine_name("Furosemide 40mg tablets")
    assert vmp.name_type == "VMP" and vmp.ingredients[0].strength.value == 40.0 and vmp.form == "tablet"
    amp = parse_medicine_name("Furosemide 40mg tablets (Accord Healthcare Ltd)")
    assert amp.supplier == "Accord Healthcare Ltd" and amp.name_type == "AMP"
    ampp = parse_medicine_name("Furosemide 40mg tablets (Accord Healthcare Ltd) 28 tablet")
    assert ampp.name_type == "AMPP" and ampp.quantity == (28.0, "tablet")
    liquid = parse_medicine_name("Morphine sulfate 10mg/5ml oral solution")
    assert liquid.ingredients[0].strength.mg_per_unit() == 2.0 and liquid.route == "oral"


def test_named_combination_compound_strength_follows_the_combination() -> None:
    p = parse_medicine_name("Co-codamol 30mg/500mg tablets")
    assert [s.value for s in p.compound] == [30.0, 500.0]  # BNF: co-codamol 30/500 = codeine 30 mg, paracetamol 500 mg


# -- medicines: brands, codes, free text ---------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("10 ML Furosemide 10 MG/ML Injection", {"furosemide"}),
    ("Lasix 40mg tablets", {"furosemide"}),
    ("Furosemide 40 MG Oral Tablet [Lasix]", {"furosemide"}),
    ("Yaz 28 Day Pack", {"drospirenone", "ethinylestradiol"}),                 # YAZ FDA label
    ("Levora 0.15/30 28 Day Pack", {"levonorgestrel", "ethinylestradiol"}),     # Levora FDA label
    ("Jolivette 28 Day Pack", {"norethisterone"}),                             # norethindrone 0.35 mg
    ("Acetaminophen 325 MG / HYDROcodone Bitartrate 7.5 MG Oral Tablet", {"paracetamol", "hydrocodone"}),
    ("Acetaminophen/Hydrocodone", {"paracetamol", "hydrocodone"}),
    ("1 ML medroxyPROGESTERone acetate 150 MG/ML Injection", {"medroxyprogesterone"}),
    ("NDA020503 200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", {"salbutamol"}),
    ("Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT [Advair]", {"fluticasone", "salmeterol"}),
    ("sulfamethoxazole 800 MG / trimethoprim 160 MG Oral Tablet", {"sulfamethoxazole", "trimethoprim"}),
    ("Calcium Carbonate 1250 MG / Cholecalciferol 1000 UNT / Vitamin K 0.4 MG Chewable Tablet",
     {"calcium_carbonate", "colecalciferol", "phytomenadione"}),
    ("Eliquis 5mg tablets", {"apixaban"}),
])
def test_brand_and_rxnorm_names(text: str, expected: set[str]) -> None:
    ings, missing = recognise_medicine_text(KB, text)
    assert set(ings) == expected and not missing


@pytest.mark.parametrize("system,code,expected", [
    (RXNORM, "1719286", {"furosemide"}),        # 10 ML Furosemide 10 MG/ML Injection [SYN]
    (RXNORM, "748856", {"drospirenone", "ethinylestradiol"}),  # Yaz 28 Day Pack [SYN]
    (RXNORM, "857005", {"paracetamol", "hydrocodone"}),
    (SCT, "321987003", {"citalopram"}),          # dm+d VMP Citalopram 20mg tablets (OpenSAFELY SSRI dm+d list)
    (SCT, "12391711000001105", {"morphine"}),   # dm+d VMP Morphine sulfate 5mg/1ml solution for injection ampoules
])
def test_product_codes(system: str, code: str, expected: set[str]) -> None:
    ings, _ = recognise_medicine(KB, {"coding": [{"system": system, "code": code}]})
    assert set(ings) == expected


def test_brand_and_generic_from_two_organisations_are_one_medicine() -> None:
    res = [
        {"resourceType": "Patient", "id": "p", "birthDate": "1950-01-01"},
        {"resourceType": "MedicationRequest", "id": "gp", "status": "active", "intent": "order",
         "meta": {"source": "gp-practice"}, "medicationCodeableConcept": {"text": "Furosemide 40mg tablets"},
         "subject": {"reference": "Patient/p"}, "authoredOn": "2026-10-01"},
        {"resourceType": "MedicationStatement", "id": "hosp", "status": "active", "meta": {"source": "hospital"},
         "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "313988",
                                                   "display": "Furosemide 40 MG Oral Tablet [Lasix]"}]},
         "subject": {"reference": "Patient/p"}, "dateAsserted": "2026-11-01"},
    ]
    rec = build_record(KB, res)
    assert [m.ingredients for m in rec.meds] == [frozenset({"furosemide"})]
    assert rec.recorded_elsewhere == {"MedicationRequest/gp": ["MedicationStatement/hosp"]}


def test_unknown_medicine_stays_visible() -> None:
    out = check_record(resources=[{"resourceType": "MedicationStatement", "id": "x", "status": "active",
                                   "medicationCodeableConcept": {"text": "Zorblatin 20mg tablets"}}],
                       resolve_conflicts=False)
    assert [u["reference"] for u in out["unrecognised"]] == ["MedicationStatement/x"]


# -- non-medicinal items -------------------------------------------------------------------------------------------
def test_allergens_positively_identified_are_not_unrecognised_medicines_but_unknown_ones_are() -> None:
    allergies = [json.loads(line) for line in sample_lines("AllergyIntolerance")]
    out = check_record(resources=allergies, resolve_conflicts=False)
    food_env = {f"AllergyIntolerance/{a['id']}" for a in allergies if set(a.get("category") or []) & {"food",
                                                                                                     "environment"}}
    assert food_env and food_env == {n["reference"] for n in out["non_medicinal"]}
    assert not any(u["resourceType"] == "AllergyIntolerance" for u in out["unrecognised"])
    unknown = {"resourceType": "AllergyIntolerance", "id": "u", "clinicalStatus": {"coding": [{"code": "active"}]},
               "code": {"coding": [{"system": SCT, "code": "999999999", "display": "Widgetine (substance)"}]}}
    out = check_record(resources=[unknown], resolve_conflicts=False)
    assert [u["reference"] for u in out["unrecognised"]] == ["AllergyIntolerance/u"] and not out["non_medicinal"]


def test_device_ordered_as_a_medication_is_non_medicinal() -> None:
    out = check_record(resources=[{"resourceType": "MedicationRequest", "id": "d", "status": "active",
                                   "intent": "order",
                                   "medicationCodeableConcept": {"text": "Blood glucose testing strips"}}],
                       resolve_conflicts=False)
    assert not out["unrecognised"] and out["non_medicinal"][0]["kind"] == "device"


# -- conditions ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code,display,expected", [
    # SNOMED CT codes as real Synthea exports record them, each in an NHS QOF register code list or the engine's list
    ("185086009", "Chronic obstructive bronchitis (disorder)", {"copd"}),
    ("87433001", "Pulmonary emphysema (disorder)", {"copd"}),
    ("7200002", "Alcoholism", {"alcohol_dependence"}),
    ("72892002", "Normal pregnancy", {"pregnancy"}),
    ("271737000", "Anemia (disorder)", {"anaemia"}),
    ("26929004", "Alzheimer's disease (disorder)", {"dementia"}),
    ("230265002", "Familial Alzheimer's disease of early onset (disorder)", {"dementia"}),
    ("49436004", "Atrial fibrillation", {"atrial_fibrillation"}),
    ("88805009", "Chronic congestive heart failure (disorder)", {"heart_failure"}),
    ("53741008", "Coronary Heart Disease", {"ihd"}),
    ("230690007", "Stroke", {"stroke_tia"}),
    ("84757009", "Epilepsy", {"epilepsy"}),
    ("370143000", "Major depression disorder", {"depression"}),
    ("69896004", "Rheumatoid arthritis", {"rheumatoid_arthritis"}),
    ("433144002", "Chronic kidney disease stage 3 (disorder)", {"ckd", "ckd_stage_3"}),
    ("431857002", "Chronic kidney disease stage 4 (disorder)", {"ckd", "ckd_stage_4"}),
    ("44054006", "Diabetes mellitus type 2 (disorder)", {"type2_diabetes", "diabetes"}),
    ("127013003", "Diabetic renal disease (disorder)", {"ckd", "diabetes"}),
    ("254632001", "Small cell carcinoma of lung (disorder)", {"cancer"}),
    ("363406005", "Malignant tumor of colon", {"cancer"}),
    ("233678006", "Childhood asthma", {"asthma"}),
    ("162864005", "Body mass index 30+ - obesity (finding)", {"obesity"}),
    ("15777000", "Prediabetes", {"prediabetes"}),
    ("700449008", "Non-diabetic hyperglycemia", {"prediabetes"}),
    ("28651003", "Orthostatic hypotension", {"orthostatic_hypotension"}),
    ("266569009", "Benign prostatic hyperplasia", {"bph"}),
    ("267064002", "Retention of urine", {"urinary_retention"}),
    ("23986001", "Glaucoma (disorder)", {"glaucoma"}),
])
def test_snomed_condition_codes(code: str, display: str, expected: set[str]) -> None:
    keys = set(condition_keys(KB, {"coding": [{"system": SCT, "code": code, "display": display}]}, display))
    assert expected <= keys


@pytest.mark.parametrize("text,expected", [
    ("Chronic obstructive bronchitis", "copd"), ("COPD", "copd"), ("Emphysema", "copd"),
    ("Alcoholism", "alcohol_dependence"), ("Alcohol dependence", "alcohol_dependence"),
    ("Anaemia", "anaemia"), ("Iron deficiency anemia", "anaemia"), ("Pregnant", "pregnancy"),
    ("Postural hypotension", "orthostatic_hypotension"), ("Urinary retention", "urinary_retention"),
    ("Enlarged prostate", "bph"), ("Angle-closure glaucoma", "angle_closure_glaucoma"),
    ("Type 1 diabetes", "type1_diabetes"), ("Type 2 diabetes mellitus", "type2_diabetes"),
    ("Diabetes mellitus type 1", "type1_diabetes"), ("Schizophrenia", "smi"), ("Bipolar affective disorder", "smi"),
    ("Learning disability", "learning_disability"), ("Peripheral arterial disease", "pad"),
    ("Palliative care", "palliative_care"), ("Recurrent falls", "falls"), ("Liver cirrhosis", "liver_disease"),
    ("Myasthenia gravis", "myasthenia_gravis"), ("Hyponatraemia", "hyponatraemia"),
])
def test_condition_text(text: str, expected: str) -> None:
    assert expected in condition_keys(KB, None, text)


@pytest.mark.parametrize("text", ["Family history of epilepsy", "No history of COPD", "Suspected lung cancer (situation)",
                                  "Miscarriage in first trimester"])
def test_condition_text_that_must_not_match(text: str) -> None:
    keys = condition_keys(KB, None, text)
    assert not ({"epilepsy", "copd", "cancer", "pregnancy"} & set(keys))


@pytest.mark.parametrize("code,expected", [("F10.2", "alcohol_dependence"), ("N40", "bph"), ("I95.1",
                                           "orthostatic_hypotension"), ("H40.2", "angle_closure_glaucoma"),
                                           ("E87.1", "hyponatraemia"), ("Z33.1", "pregnancy"), ("J44.9", "copd")])
def test_icd10(code: str, expected: str) -> None:
    keys = condition_keys(KB, {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]}, "")
    assert expected in keys


# -- CKD stages ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("egfr,stage", [(95, "1"), (90, "1"), (89, "2"), (60, "2"), (59.9, "3a"), (45, "3a"),
                                        (44, "3b"), (30, "3b"), (29, "4"), (15, "4"), (14, "5")])
def test_gfr_category_kdigo(egfr: float, stage: str) -> None:
    assert ckd_stage_from_egfr(egfr) == stage


def test_ckd_from_egfr_needs_more_than_three_months() -> None:
    assert ckd_from_egfr_history([("2026-01-01", 52), ("2026-02-01", 50)]) is None
    assert ckd_from_egfr_history([("2026-01-01", 52), ("2026-04-15", 40)]) == "3b"
    assert ckd_from_egfr_history([("2026-01-01", 52), ("2026-02-01", 75), ("2026-04-15", 40)]) is None


# -- results ----------------------------------------------------------------------------------------------------------
def _obs(i: str, code: str, value: float, unit: str, system: str = LOINC, text: str = "") -> dict:
    return {"resourceType": "Observation", "id": i, "status": "final", "effectiveDateTime": "2026-11-01",
            "code": {"coding": [{"system": system, "code": code}], **({"text": text} if text else {})},
            "valueQuantity": {"value": value, "unit": unit}}


@pytest.mark.parametrize("code,value,unit,key,expected", [
    ("2160-0", 1.0, "mg/dL", "creatinine", 88.42),        # creatinine 113.12 g/mol
    ("14682-9", 120, "umol/L", "creatinine", 120),
    ("4548-4", 6.5, "%", "hba1c", 47.5),                   # IFCC-NGSP master equation: 6.5 % = 47.5 mmol/mol
    ("59261-8", 53, "mmol/mol", "hba1c", 53),
    ("19123-9", 1.8, "mg/dL", "magnesium", 0.74),          # magnesium 24.305 g/mol
    ("17861-6", 10.0, "mg/dL", "calcium", 2.5),            # calcium 40.078 g/mol
    ("6298-4", 4.1, "mEq/L", "potassium", 4.1),
    ("2951-2", 128, "mmol/L", "sodium", 128),
    ("6301-6", 3.4, "{INR}", "inr", 3.4),
    ("8867-4", 48, "/min", "heart_rate", 48),
    ("1742-6", 80, "U/L", "alt", 80),
    ("777-3", 90, "10*3/uL", "platelets", 90),
    ("3016-3", 6.2, "mIU/L", "tsh", 6.2),
    ("29463-7", 154, "[lb_av]", "body_weight", 69.85),
    ("33914-3", 42, "mL/min/{1.73_m2}", "egfr", 42),
])
def test_result_codes_and_units(code: str, value: float, unit: str, key: str, expected: float) -> None:
    rec = build_record(KB, [_obs("o", code, value, unit)])
    assert rec.results[key].value == pytest.approx(expected, abs=0.06)


def test_uk_snomed_egfr_and_qtc_text() -> None:
    rec = build_record(KB, [_obs("e", "1011481000000105", 28, "mL/min/1.73m2", system=SCT),
                            {**_obs("q", "x", 510, "ms", system="urn:local", text="QTc interval")}])
    assert rec.results["egfr"].value == 28 and rec.results["qtc"].value == 510


def test_unknown_unit_is_not_guessed() -> None:
    rec = build_record(KB, [_obs("o", "2160-0", 1.0, "furlongs")])
    assert "creatinine" not in rec.results
    assert rec.unrecognised[0]["reason"].startswith("unit not recognised")


def test_hba1c_conversion_both_ways() -> None:
    assert hba1c_ifcc_from_dcct(7.0) == pytest.approx(53.0, abs=0.1)
    assert hba1c_dcct_from_ifcc(48) == pytest.approx(6.5, abs=0.05)


def test_cockcroft_gault_si_form() -> None:
    # (140 - age) x weight x 1.23 (men) / 1.04 (women) / creatinine umol/L
    assert cockcroft_gault(80, 70, 100, "male") == pytest.approx(51.66, abs=0.01)
    assert cockcroft_gault(80, 70, 100, "female") == pytest.approx(43.68, abs=0.01)
    assert cockcroft_gault(80, 70, 100, None) is None


# -- the Synthea targets -------------------------------------------------------------------------------------------
def test_synthea_sample_active_medication_lines_at_most_one_percent_unrecognised() -> None:
    lines = [json.loads(x) for x in sample_lines("MedicationRequest")]
    for subset in ([r for r in lines if r["status"] == "active"], lines):
        unrec = [r for r in subset if not recognise_medicine(KB, r["medicationCodeableConcept"])[0]]
        assert len(unrec) <= 0.01 * len(subset), Counter(r["medicationCodeableConcept"]["text"] for r in unrec)


def test_every_rxnorm_name_in_the_terminology_resolves_by_code_and_by_text() -> None:
    names = {code: name for (system, code), name in KB.term.code_names.items() if system == "rxnorm"}
    assert len(names) >= 200
    by_code = [n for c, n in names.items() if not recognise_medicine(KB, {"coding": [{"system": RXNORM, "code": c}]})[0]]
    by_text = [n for n in names.values() if recognise_medicine_text(KB, n)[1] or not recognise_medicine_text(KB, n)[0]]
    assert len(by_code) <= 0.01 * len(names), by_code
    assert len(by_text) <= 0.01 * len(names), by_text


def test_synthea_sample_active_register_conditions_all_recognised() -> None:
    conditions = [json.loads(x) for x in sample_lines("Condition")]
    active = [c for c in conditions if c["clinicalStatus"]["coding"][0]["code"] == "active"]
    # the active concepts of the sample that belong to a QOF register or the engine's condition list
    expected = {"59621000": "hypertension", "44054006": "type2_diabetes", "431857002": "ckd", "414545008": "ihd",
                "64859006": "osteoporosis", "128613002": "epilepsy", "271737000": "anaemia", "15777000": "prediabetes",
                "162864005": "obesity", "408512008": "obesity", "254637007": "cancer", "254837009": "cancer",
                "424132000": "cancer", "127013003": "ckd"}
    seen = {c["code"]["coding"][0]["code"] for c in active}
    assert set(expected) <= seen
    for c in active:
        code = c["code"]["coding"][0]["code"]
        if code in expected:
            assert expected[code] in build_record(KB, [c]).conditions, c["code"]["coding"][0]["display"]


def test_ckd_recorded_from_egfr_results_over_three_months() -> None:
    e1, e2 = _obs("e1", "33914-3", 52, "mL/min/{1.73_m2}"), _obs("e2", "33914-3", 41, "mL/min/{1.73_m2}")
    e1["effectiveDateTime"], e2["effectiveDateTime"] = "2026-01-10", "2026-05-02"
    rec = build_record(KB, [e1, e2])
    assert rec.conditions["ckd"] == ["Observation/e1", "Observation/e2"] and "ckd_stage_3" in rec.conditions
    e2["effectiveDateTime"] = "2026-02-01"  # only three weeks apart: not CKD (NG203)
    assert "ckd" not in build_record(KB, [e1, e2]).conditions


@pytest.mark.parametrize("system,code,expected", [
    (SCT, "7311000001104", {"sulfasalazine"}),   # dm+d AMP "Sulfasalazine 500mg tablets (A A H Pharmaceuticals Ltd)"
])
def test_dmd_amp_codes(system: str, code: str, expected: set[str]) -> None:
    assert set(recognise_medicine(KB, {"coding": [{"system": system, "code": code}]})[0]) == expected


@pytest.mark.parametrize("text,expected", [
    ("Product containing precisely furosemide 40 milligram/1 each conventional release oral tablet (clinical drug)",
     {"furosemide"}),
    ("Product containing metformin (medicinal product)", {"metformin"}),
])
def test_snomed_medicinal_product_names(text: str, expected: set[str]) -> None:
    ings, missing = recognise_medicine_text(KB, text)
    assert set(ings) == expected and not missing


def test_dmd_products_in_the_packaged_lists_resolve_by_code() -> None:
    names = {code: name for (system, code), name in KB.term.code_names.items() if system == "sct"}
    assert len(names) > 1500
    missing = [n for c, n in names.items() if ("sct", c) not in KB.med_codes]
    assert len(missing) <= 0.01 * len(names), missing
