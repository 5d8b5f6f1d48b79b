"""Every rule has a case that fires and a close case that must not."""

from __future__ import annotations

import pytest

from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.service import detect_findings

from .builders import allergy, cond, egfr, med, patient, potassium
from .test_vignettes import vignette_rules

REG = [f"drug {i}" for i in range(20)]
FIFTEEN = ["ramipril", "amlodipine", "indapamide", "atorvastatin", "metformin", "gliclazide", "aspirin",
           "omeprazole", "levothyroxine", "sertraline", "colecalciferol", "tamsulosin", "finasteride",
           "montelukast", "allopurinol"]

CASES: dict[str, tuple[list, list]] = {
    "dd-nsaid-anticoagulant": ([med("Naproxen 500mg tablets"), med("Apixaban 5mg tablets")],
                               [med("Paracetamol 500mg tablets"), med("Apixaban 5mg tablets")]),
    "dd-antiplatelet-anticoagulant": ([med("Aspirin 75mg dispersible tablets"), med("Warfarin 3mg tablets")],
                                      [med("Aspirin 75mg dispersible tablets"), med("Atorvastatin 20mg")]),
    "dd-acei-arb": ([med("Ramipril 5mg capsules"), med("Losartan 50mg tablets")],
                    [med("Ramipril 5mg capsules"), med("Amlodipine 5mg tablets")]),
    "dd-triple-whammy": ([med("Ibuprofen 400mg tablets"), med("Ramipril 5mg"), med("Furosemide 40mg tablets")],
                         [med("Ibuprofen 400mg tablets"), med("Ramipril 5mg")]),
    "dd-nsaid-antiplatelet-no-ppi": ([med("Naproxen 500mg"), med("Aspirin 75mg")],
                                     [med("Naproxen 500mg"), med("Aspirin 75mg"), med("Omeprazole 20mg")]),
    "dd-nsaid-ssri": ([med("Naproxen 500mg"), med("Sertraline 50mg")],
                      [med("Naproxen 500mg"), med("Sertraline 50mg"), med("Lansoprazole 15mg")]),
    "dd-betablocker-ratelimiting-ccb": ([med("Bisoprolol 5mg"), med("Verapamil 80mg")],
                                        [med("Bisoprolol 5mg"), med("Amlodipine 5mg")]),
    "dd-potassium-supplement-potassium-sparing": ([med("Sando-K effervescent tablets"), med("Spironolactone 25mg")],
                                                  [med("Sando-K effervescent tablets"), med("Furosemide 40mg")]),
    "dd-simvastatin-clarithromycin": ([med("Simvastatin 40mg"), med("Clarithromycin 500mg")],
                                      [med("Pravastatin 40mg"), med("Clarithromycin 500mg")]),
    "dd-methotrexate-trimethoprim": ([med("Methotrexate 2.5mg"), med("Trimethoprim 200mg")],
                                     [med("Methotrexate 2.5mg"), med("Nitrofurantoin 50mg")]),
    "dd-opioid-benzodiazepine": ([med("Codeine 30mg"), med("Diazepam 5mg")],
                                 [med("Codeine 30mg"), med("Sertraline 50mg")]),
    "ddis-nsaid-peptic-ulcer": ([med("Naproxen 500mg tablets"), cond("history of peptic ulcer", status="resolved")],
                                [med("Naproxen 500mg tablets"), med("Omeprazole 20mg"),
                                 cond("history of peptic ulcer", status="resolved")]),
    "ddis-nsaid-heart-failure": ([med("Naproxen 500mg"), cond("heart failure", code="84114007")],
                                 [med("Paracetamol 1g"), cond("heart failure", code="84114007")]),
    "ddis-nsaid-ckd": ([med("Naproxen 500mg"), cond("CKD stage 3", code="433144002")],
                       [med("Ibuprofen 5% gel"), cond("CKD stage 3", code="433144002")]),
    "ddis-cox2-cardiovascular": ([med("Celecoxib 100mg"), cond("angina")],
                                 [med("Celecoxib 100mg"), cond("osteoarthritis")]),
    "ddis-nonselective-bb-asthma": ([med("Propranolol 40mg"), cond("asthma", code="195967001")],
                                    [med("Propranolol 40mg"), cond("hypertension")]),
    "ddis-cardioselective-bb-asthma": ([med("Bisoprolol 2.5mg"), cond("asthma")],
                                       [med("Bisoprolol 2.5mg"), cond("copd")]),
    "ddis-pioglitazone-heart-failure": ([med("Pioglitazone 15mg"), cond("heart failure")],
                                        [med("Pioglitazone 15mg"), cond("type 2 diabetes")]),
    "ddis-ratelimiting-ccb-heart-failure": ([med("Diltiazem 60mg"), cond("heart failure")],
                                            [med("Amlodipine 5mg"), cond("heart failure")]),
    "ddis-bisphosphonate-upper-gi": ([med("Alendronic acid 70mg"), cond("duodenal ulcer")],
                                     [med("Alendronic acid 70mg"), cond("osteoporosis")]),
    "ddis-nsaid-gout-no-xoi": ([med("Naproxen 500mg"), cond("gout")],
                               [med("Naproxen 500mg"), med("Allopurinol 100mg"), cond("gout")]),
    "ddis-dopamine-antagonist-parkinsons": ([med("Metoclopramide 10mg"), cond("parkinson's disease")],
                                            [med("Domperidone 10mg"), cond("parkinson's disease")]),
    "ddis-falls-risk-drug-with-falls": ([med("Zopiclone 7.5mg"), cond("recurrent falls")],
                                        [med("Zopiclone 7.5mg"), cond("osteoarthritis")]),
    "dr-metformin-egfr-30": ([med("Metformin 500mg"), egfr(25)], [med("Metformin 500mg"), egfr(60)]),
    "dr-metformin-egfr-45": ([med("Metformin 500mg"), egfr(40)], [med("Metformin 500mg"), egfr(50)]),
    "dr-nsaid-egfr-50": ([med("Naproxen 500mg"), egfr(45)], [med("Naproxen 500mg"), egfr(55)]),
    "dr-dabigatran-egfr-30": ([med("Dabigatran 110mg"), egfr(25)], [med("Dabigatran 110mg"), egfr(35)]),
    "dr-factor-xa-egfr-15": ([med("Apixaban 2.5mg"), egfr(12)], [med("Apixaban 2.5mg"), egfr(20)]),
    "dr-digoxin-egfr-30": ([med("Digoxin 125 micrograms"), egfr(25)], [med("Digoxin 125 micrograms"), egfr(40)]),
    "dr-colchicine-egfr-10": ([med("Colchicine 500 micrograms"), egfr(8)], [med("Colchicine 500 micrograms"), egfr(15)]),
    "dr-potassium-raising-hyperkalaemia": ([med("Ramipril 5mg"), potassium(6.1)], [med("Ramipril 5mg"), potassium(5.0)]),
    "dup-same-class": ([med("Ibuprofen 400mg"), med("Naproxen 500mg")],
                       [med("Ibuprofen 400mg"), med("Naproxen 500mg", prn=True)]),
    "burden-anticholinergic": ([med("Amitriptyline 10mg")], [med("Sertraline 50mg")]),
    "burden-polypharmacy-15": ([med(m) for m in FIFTEEN], [med(m) for m in FIFTEEN[:14]]),
    "burden-polypharmacy-10": ([med(m) for m in FIFTEEN[:10]], [med(m) for m in FIFTEEN[:9]]),
    "burden-falls-risk-drugs": ([med("Zopiclone 7.5mg"), med("Diazepam 2mg")], [med("Zopiclone 7.5mg")]),
    "allergy-recorded": ([med("Amoxicillin 500mg capsules"), allergy("Penicillin V")],
                         [med("Clarithromycin 500mg"), allergy("Penicillin V")]),
    "ls-sodium-htn-hf": ([cond("hypertension"), cond("heart failure")], [cond("hypertension")]),
    "ls-weight-loss-frailty": ([cond("type 2 diabetes"), cond("frailty")], [cond("type 2 diabetes")]),
    "ls-exercise-programmes": ([cond("heart failure"), cond("osteoarthritis")], [cond("osteoarthritis")]),
    "sch-bisphosphonate-calcium-iron": ([med("Alendronic acid 70mg"), med("Adcal-D3 chewable tablets")],
                                        [med("Alendronic acid 70mg"), med("Colecalciferol 800 unit capsules")]),
    "sch-levothyroxine-calcium-iron": ([med("Levothyroxine 100 micrograms"), med("Ferrous sulfate 200mg")],
                                       [med("Levothyroxine 100 micrograms"), med("Omeprazole 20mg")]),
    "sch-merge-condition-reviews": ([cond("hypertension"), cond("type 2 diabetes")], [cond("hypertension")]),
}


def _rules(resources: list) -> set[str]:
    return {f["rule"] for f in detect_findings(resources=[patient(), *resources])["findings"]}


def test_every_rule_has_cases() -> None:
    """Every rule of every kind (dose checks included) has a firing vignette with a close case in
    knowledge/conflicts/vignettes.yaml (`joinedup knowledge check` links them by rule id); the cases here are a
    second, independent pair for the rules.yaml rules."""
    kb = load_knowledge()
    ids = {r["id"] for _k, r in kb.kinds}
    assert ids == vignette_rules(), ids ^ vignette_rules()
    assert set(CASES) <= ids


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_and_close_case_does_not(rule_id: str) -> None:
    fires, close = CASES[rule_id]
    assert rule_id in _rules(fires)
    assert rule_id not in _rules(close)


def test_involves_lists_exactly_the_causes() -> None:
    nsaid, ulcer, other = med("Naproxen 500mg"), cond("peptic ulcer"), med("Atorvastatin 20mg")
    out = detect_findings(resources=[patient(), nsaid, ulcer, other])
    f = next(f for f in out["findings"] if f["rule"] == "ddis-nsaid-peptic-ulcer")
    assert f["involves"] == [f"MedicationStatement/{nsaid['id']}", f"Condition/{ulcer['id']}"]
    assert f["kind"] == "drug-disease" and f["severity"] == "high" and f["sources"]


def test_stopped_medicines_and_refuted_conditions_are_ignored() -> None:
    assert "dr-metformin-egfr-30" not in _rules([med("Metformin 500mg", status="stopped"), egfr(20)])
    c = cond("heart failure")
    c["verificationStatus"] = {"coding": [{"code": "refuted"}]}
    assert "ddis-nsaid-heart-failure" not in _rules([med("Naproxen 500mg"), c])


def test_latest_egfr_is_used() -> None:
    from .builders import days_ago, obs
    old, new = obs("62238-1", 20, days_ago(300)), obs("62238-1", 70, days_ago(20))
    assert "dr-metformin-egfr-30" not in _rules([med("Metformin 500mg"), old, new])


def test_draft_orders_are_checked() -> None:
    out = detect_findings(resources=[patient(), med("Warfarin 3mg")],
                          draft_orders=[med("Ibuprofen 400mg", rtype="MedicationRequest")])
    assert "dd-nsaid-anticoagulant" in {f["rule"] for f in out["findings"]}


def test_every_rule_cites_sources_and_review_date() -> None:
    kb = load_knowledge()
    for r in [*kb.rules, *kb.lifestyle, *kb.timing, kb.reviews]:
        assert r.get("sources"), r["id"]
        assert r.get("review_date"), r["id"]
