"""Resolution: residual harm falls, no critical finding remains where an alternative exists, deterministic."""

from __future__ import annotations

from joinedup.conflicts.knowledge import load_knowledge
from joinedup.conflicts.service import check_record

from .builders import cond, egfr, med, patient


def _harm(findings: list[dict]) -> int:
    w = load_knowledge().severity_weights
    return sum(w[f["severity"]] for f in findings)


def _record() -> list[dict]:
    return [patient(), cond("type 2 diabetes"), cond("heart failure"), cond("osteoarthritis"),
            cond("history of peptic ulcer", status="resolved"), cond("hypertension"),
            med("Pioglitazone 30mg tablets"), med("Metformin 500mg tablets"), med("Naproxen 500mg tablets"),
            med("Ramipril 5mg capsules"), med("Losartan 50mg tablets"), med("Bisoprolol 2.5mg tablets"), egfr(25)]


def test_residual_harm_falls_and_no_critical_remains() -> None:
    out = check_record(resources=_record())
    before, after = out["findings"], out["resolution"]["residual"]
    assert any(f["severity"] == "critical" for f in before)
    assert _harm(after) < _harm(before)
    assert not any(f["severity"] == "critical" for f in after)
    actions = {(c["action"], c["target"].split("/")[0]) for c in out["resolution"]["changes"]}
    assert actions
    for c in out["resolution"]["changes"]:
        assert c["reason"] and isinstance(c["sources"], list)


def test_conditions_stay_treated() -> None:
    out = check_record(resources=_record())
    changes = out["resolution"]["changes"]
    stopped = {c["target"] for c in changes if c["action"] == "stop"}
    # diabetes keeps a glucose-lowering medicine: the two diabetes drugs are not both stopped
    diabetes_meds = {f"MedicationStatement/{r['id']}" for r in _record() if r.get("resourceType") == "x"}
    assert not diabetes_meds & stopped
    switched = {c["to"] for c in changes if c["action"] == "switch"}
    assert switched, changes


def test_nsaid_ulcer_resolution_adds_ppi_or_switches() -> None:
    out = check_record(resources=[patient(), cond("osteoarthritis"), cond("peptic ulcer"), med("Naproxen 500mg")])
    res = out["resolution"]
    assert not res["residual"] or all(f["rule"] != "ddis-nsaid-peptic-ulcer" for f in res["residual"])
    assert res["changes"]


def test_deterministic() -> None:
    rec = _record()
    a = check_record(resources=rec)["resolution"]
    b = check_record(resources=rec)["resolution"]
    assert a == b


def test_empty_record_has_no_findings() -> None:
    out = check_record(resources=[])
    assert out["findings"] == [] and out["resolution"] == {"changes": [], "residual": []}


def test_critical_without_alternative_is_reported() -> None:
    # penicillin allergy on a penicillin with no guideline alternative: stopping it is the least-harm change
    from .builders import allergy
    out = check_record(resources=[patient(), med("Amoxicillin 500mg"), allergy("Penicillin V")])
    assert any(c["action"] == "stop" for c in out["resolution"]["changes"])
    assert not out["resolution"]["residual"]
