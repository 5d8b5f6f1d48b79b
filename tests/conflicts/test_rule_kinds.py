"""Rule kinds (conflicts.rules): every kind in the knowledge files has a class, and each class's `detect` and
`encode` work on small hand-made records (encode: which findings the model forces on for given choices)."""

from __future__ import annotations

from typing import Any

import pytest
from ortools.sat.python import cp_model

from joinedup.conflicts import rules
from joinedup.conflicts.knowledge import _read, compile_knowledge, load_knowledge
from joinedup.conflicts.models import AllergyItem, MedItem, PatientRecord, ResultItem
from joinedup.conflicts.resolve import Encoding, new_encoding

KB = load_knowledge()


def _med(ref: str, *ings: str, regular: bool = True, dose_reduced: bool = False) -> MedItem:
    i = frozenset(ings)
    return MedItem(ref=f"MedicationStatement/{ref}", display=" + ".join(ings), ingredients=i,
                   classes=KB.classes_of(i), regular=regular, dose_reduced=dose_reduced,
                   acb=sum(KB.ingredient_acb.get(x, 0) for x in i),
                   falls_risk=any(KB.ingredient_falls.get(x, False) for x in i))


def _rec(*meds: MedItem, conditions: tuple[str, ...] = (), **kw: Any) -> PatientRecord:
    return PatientRecord(patient="Patient/p1", meds=list(meds),
                         conditions={c: [f"Condition/{c}"] for c in conditions}, **kw)


def _rule(rule_id: str, kind: type[rules.RuleKind]) -> dict[str, Any]:
    """The compiled rule, checking the knowledge base dispatches it to `kind`."""
    found = [(k, r) for k, r in KB.kinds if r["id"] == rule_id]
    assert len(found) == 1 and found[0][0] is kind, found
    return found[0][1]


def _encoded(kind: type[rules.RuleKind], rule: dict[str, Any], rec: PatientRecord) -> Encoding:
    """A fresh model for the record (slots built from the kind's own findings) with only this rule encoded."""
    enc = new_encoding(KB, rec, kind.detect(KB, rec, rule))
    kind.encode(enc, rule)
    return enc


def _forced(enc: Encoding, choose: dict[str, str] | None = None, decisions: int = 0) -> int:
    """How many finding booleans must be 1 when every slot takes the action in `choose` (default: keep, or none
    for a proposed addition) and every extra decision (separate doses, agree advice...) is `decisions`."""
    m = enc.model
    for s_i, s in enumerate(enc.slots):
        action = (choose or {}).get(s.ref, "none" if s.added else "keep")
        m.Add(enc.x[s_i][next(o for o, opt in enumerate(s.options) if opt.action == action)] == 1)
    for _cost, v in enc.extra_costs:
        m.Add(v == decisions)
    m.Minimize(sum(v for _w, v in enc.harm))
    solver = cp_model.CpSolver()
    assert solver.Solve(m) == cp_model.OPTIMAL
    return sum(solver.Value(v) for _w, v in enc.harm)


# -- the table ------------------------------------------------------------------------------------------------------
def test_every_kind_in_the_rule_files_has_a_class() -> None:
    for r in _read("conflicts/rules.yaml")["rules"]:
        key = rules.kind_of(r)
        assert key in rules.KINDS, r["id"]
        assert rules.KINDS[key].reports == r["kind"], r["id"]
        if not r.get("allergy"):
            assert r["kind"] in rules.KINDS, r["id"]
    assert _read("conflicts/lifestyle.yaml")["clashes"] and rules.KINDS["lifestyle"].reports == "lifestyle"
    schedules = _read("conflicts/schedules.yaml")
    assert schedules["timing"] and rules.KINDS["timing"].reports == "schedule"
    assert schedules["reviews"] and rules.KINDS["reviews"].reports == "schedule"


def test_each_class_is_registered_under_its_key_and_defines_detect_and_encode() -> None:
    for key, cls in rules.KINDS.items():
        assert cls.key == key
        assert cls.__dict__.get("detect") is not None and cls.__dict__.get("encode") is not None, key


def test_knowledge_lists_every_rule_once_in_the_engine_order() -> None:
    ids = [r["id"] for _k, r in KB.kinds]
    assert ids == [*(r["id"] for r in KB.rules), *(c["id"] for c in KB.lifestyle), KB.reviews["id"],
                   *(t["id"] for t in KB.timing), *(d["id"] for d in KB.dose_rules)]
    assert all(r["_kind"] in rules.KINDS for r in KB.rules)


def test_an_unknown_kind_fails_when_the_knowledge_is_compiled() -> None:
    doc = _read("conflicts/rules.yaml")
    bad = {**doc, "rules": [*doc["rules"], {"id": "x-new", "kind": "drug-age", "severity": "low", "summary": "x",
                                            "drugs": [{"class": "nsaid"}]}]}
    with pytest.raises(ValueError, match="drug-age"):
        compile_knowledge(_read("conditions.yaml"), _read("medicines.yaml"), bad, _read("conflicts/guidance.yaml"),
                          _read("conflicts/lifestyle.yaml"), _read("conflicts/schedules.yaml"))


# -- rules.yaml kinds -----------------------------------------------------------------------------------------------
def test_drug_drug() -> None:
    rule = _rule("dd-nsaid-anticoagulant", rules.DrugDrug)
    rec = _rec(_med("n", "naproxen"), _med("w", "warfarin"), _med("a", "atorvastatin"))
    [f] = rules.DrugDrug.detect(KB, rec, rule)
    assert f.involves == ["MedicationStatement/n", "MedicationStatement/w"] and f.kind == "drug-drug"
    assert rules.DrugDrug.detect(KB, _rec(_med("n", "naproxen")), rule) == []
    assert _forced(_encoded(rules.DrugDrug, rule, rec)) == 1
    assert _forced(_encoded(rules.DrugDrug, rule, rec), {"MedicationStatement/n": "stop"}) == 0


def test_drug_drug_protection_suppresses_detection_and_can_be_added() -> None:
    rule = _rule("dd-nsaid-antiplatelet-no-ppi", rules.DrugDrug)
    rec = _rec(_med("n", "naproxen"), _med("a", "aspirin"))
    assert len(rules.DrugDrug.detect(KB, rec, rule)) == 1
    assert rules.DrugDrug.detect(KB, _rec(*rec.meds, _med("o", "omeprazole")), rule) == []
    assert _forced(_encoded(rules.DrugDrug, rule, rec)) == 1
    assert _forced(_encoded(rules.DrugDrug, rule, rec), {"proposed/omeprazole": "add"}) == 0


def test_drug_disease() -> None:
    rule = _rule("ddis-nsaid-heart-failure", rules.DrugDisease)
    rec = _rec(_med("n", "naproxen"), conditions=("heart_failure",))
    [f] = rules.DrugDisease.detect(KB, rec, rule)
    assert f.involves == ["MedicationStatement/n", "Condition/heart_failure"] and f.kind == "drug-disease"
    assert rules.DrugDisease.detect(KB, _rec(*rec.meds), rule) == []
    assert _forced(_encoded(rules.DrugDisease, rule, rec)) == 1
    assert _forced(_encoded(rules.DrugDisease, rule, rec), {"MedicationStatement/n": "stop"}) == 0
    no_condition = _encoded(rules.DrugDisease, rule, _rec(*rec.meds))
    assert no_condition.harm == []


def test_drug_result_and_dose_adjustment() -> None:
    egfr = {"egfr": ResultItem(key="egfr", value=40, ref="Observation/o1")}
    rule = _rule("dr-metformin-egfr-45", rules.DrugResult)
    rec = _rec(_med("m", "metformin"), results=egfr)
    [f] = rules.DrugResult.detect(KB, rec, rule)
    assert f.involves == ["MedicationStatement/m", "Observation/o1"] and f.summary.endswith("(egfr 40)")
    assert rules.DrugResult.detect(KB, _rec(_med("m", "metformin", dose_reduced=True), results=egfr), rule) == []
    assert rules.DrugResult.detect(KB, _rec(*rec.meds), rule) == []  # no result
    assert _forced(_encoded(rules.DrugResult, rule, rec)) == 1
    assert _forced(_encoded(rules.DrugResult, rule, rec), {"MedicationStatement/m": "adjust-dose"}) == 0
    # the other metformin rule (eGFR < 30) does not apply at 40
    low = _rule("dr-metformin-egfr-30", rules.DrugResult)
    assert rules.DrugResult.detect(KB, rec, low) == [] and _encoded(rules.DrugResult, low, rec).harm == []


def test_duplicate() -> None:
    rule = _rule("dup-same-class", rules.Duplicate)
    rec = _rec(_med("r", "ramipril"), _med("l", "lisinopril"))
    [f] = rules.Duplicate.detect(KB, rec, rule)
    assert f.involves == ["MedicationStatement/r", "MedicationStatement/l"] and f.summary.startswith("Duplicate")
    assert rules.Duplicate.detect(KB, _rec(_med("r", "ramipril"), _med("l", "lisinopril", regular=False)), rule) == []
    assert _forced(_encoded(rules.Duplicate, rule, rec)) == 1
    assert _forced(_encoded(rules.Duplicate, rule, rec), {"MedicationStatement/l": "stop"}) == 0


def test_burden_types() -> None:
    acb = _rule("burden-anticholinergic", rules.Burden)
    rec = _rec(_med("a", "amitriptyline"), _med("s", "atorvastatin"))
    [f] = rules.Burden.detect(KB, rec, acb)
    assert f.involves == ["MedicationStatement/a"] and "total ACB score 3" in f.summary
    assert _forced(_encoded(rules.Burden, acb, rec)) == 1
    assert _forced(_encoded(rules.Burden, acb, rec), {"MedicationStatement/a": "stop"}) == 0

    falls = _rule("burden-falls-risk-drugs", rules.Burden)
    rec = _rec(_med("z", "zopiclone"), _med("d", "diazepam"))
    assert len(rules.Burden.detect(KB, rec, falls)) == 1
    assert _forced(_encoded(rules.Burden, falls, rec)) == 1
    assert _forced(_encoded(rules.Burden, falls, rec), {"MedicationStatement/z": "stop"}) == 0

    poly = _rule("burden-polypharmacy-10", rules.Burden)
    names = ["atorvastatin", "ramipril", "metformin", "bisoprolol", "amlodipine", "aspirin", "omeprazole",
             "levothyroxine", "furosemide", "digoxin"]
    rec = _rec(*(_med(f"m{i}", n) for i, n in enumerate(names)))
    [f] = rules.Burden.detect(KB, rec, poly)
    assert "(10 regular medicines)" in f.summary and len(f.involves) == 10
    assert rules.Burden.detect(KB, _rec(*rec.meds[:9]), poly) == []
    assert _forced(_encoded(rules.Burden, poly, rec)) == 1
    assert _forced(_encoded(rules.Burden, poly, rec), {"MedicationStatement/m0": "stop"}) == 0


def test_allergy_matches_ingredient_or_class() -> None:
    rule = _rule("allergy-recorded", rules.Allergy)
    other = next(k for k, c in sorted(KB.ingredient_classes.items()) if "penicillin" in c and k != "amoxicillin")
    allergy = AllergyItem(ref="AllergyIntolerance/a1", ingredients=frozenset({"amoxicillin"}),
                          classes=frozenset({"penicillin"}))
    rec = _rec(_med("p", other), _med("s", "atorvastatin"), allergies=[allergy])
    [f] = rules.Allergy.detect(KB, rec, rule)
    assert f.involves == ["MedicationStatement/p", "AllergyIntolerance/a1"] and f.kind == "drug-disease"
    assert _forced(_encoded(rules.Allergy, rule, rec)) == 1
    assert _forced(_encoded(rules.Allergy, rule, rec), {"MedicationStatement/p": "stop"}) == 0


# -- lifestyle.yaml and schedules.yaml kinds ------------------------------------------------------------------------
def test_lifestyle() -> None:
    rule = _rule("ls-sodium-htn-hf", rules.Lifestyle)
    rec = _rec(conditions=("hypertension", "heart_failure"))
    [f] = rules.Lifestyle.detect(KB, rec, rule)
    assert f.kind == "lifestyle" and f.involves == ["Condition/hypertension", "Condition/heart_failure"]
    assert rules.Lifestyle.detect(KB, _rec(conditions=("hypertension",)), rule) == []
    assert _forced(_encoded(rules.Lifestyle, rule, rec)) == 1
    enc = _encoded(rules.Lifestyle, rule, rec)
    assert [a for a, _v, _r in enc.actions] == ["agree-advice"]
    assert _forced(enc, decisions=1) == 0
    # encoded only while the clash is present
    assert _encoded(rules.Lifestyle, rule, _rec(conditions=("hypertension",))).harm == []


def test_merge_reviews() -> None:
    rule = _rule("sch-merge-condition-reviews", rules.MergeReviews)
    rec = _rec(conditions=("hypertension", "copd"))
    [f] = rules.MergeReviews.detect(KB, rec, rule)
    assert f.kind == "schedule" and set(f.involves) == {"Condition/hypertension", "Condition/copd"}
    assert rules.MergeReviews.detect(KB, _rec(conditions=("hypertension",)), rule) == []
    assert _forced(_encoded(rules.MergeReviews, rule, rec)) == 1
    assert _forced(_encoded(rules.MergeReviews, rule, rec), decisions=1) == 0


def test_timing() -> None:
    rule = _rule("sch-bisphosphonate-calcium-iron", rules.Timing)
    rec = _rec(_med("b", "alendronic_acid"), _med("c", "calcium_carbonate"))
    [f] = rules.Timing.detect(KB, rec, rule)
    assert f.kind == "schedule" and f.involves == ["MedicationStatement/b", "MedicationStatement/c"]
    separated = _rec(*rec.meds, separated={frozenset(f.involves)})
    assert rules.Timing.detect(KB, separated, rule) == []
    enc = _encoded(rules.Timing, rule, rec)
    assert [(a, b) for a, b, _v, _r in enc.seps] == [("MedicationStatement/b", "MedicationStatement/c")]
    assert _forced(enc) == 1
    assert _forced(_encoded(rules.Timing, rule, rec), decisions=1) == 0
    assert _forced(_encoded(rules.Timing, rule, rec), {"MedicationStatement/c": "stop"}) == 0
