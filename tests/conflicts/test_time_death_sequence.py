"""Issue 17 parts 4-7 through the real interfaces: results with time (recency windows, monitoring overdue), the
dead and the gone (deceased people, expired and stopped-elsewhere medicines), clinically sequenced resolution,
and alert fatigue (routine findings off by default; "why now" on every finding)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from joinedup.conflicts import preferences
from joinedup.conflicts.cli import app
from joinedup.conflicts.service import check_record, detect_findings

from .builders import bundle, cond, days_ago, med, obs, patient

root = typer.Typer()
root.add_typer(app, name="conflicts")
runner = CliRunner()
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _rules(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["rule"]: f for f in out["findings"]}


def _from(source: str, res: dict[str, Any], when: str) -> dict[str, Any]:
    res["meta"] = {"source": source}
    res["effectivePeriod" if res["resourceType"] == "MedicationStatement" else "authoredOn"] = (
        {"start": when} if res["resourceType"] == "MedicationStatement" else when)
    return res


# -- results with time -------------------------------------------------------------------------------------------
def test_old_egfr_asks_for_monitoring_instead_of_a_high_alert() -> None:
    """The reported failure: a 45-year-old eGFR raised a high alert. An out-of-date result only asks for a repeat."""
    old = detect_findings(resources=[patient(), med("Metformin 500mg tablets"), obs("62238-1", 25, days_ago(45 * 365))])
    f = _rules(old)["dr-metformin-egfr-30"]
    assert f["kind"] == "monitoring" and f["severity"] == "moderate"
    assert "monitoring overdue" in f["summary"].lower()
    assert not [g for g in old["findings"] if g["severity"] in ("high", "critical")]
    fresh = detect_findings(resources=[patient(), med("Metformin 500mg tablets"), obs("62238-1", 25, days_ago(20))])
    f = _rules(fresh)["dr-metformin-egfr-30"]
    assert f["kind"] == "drug-result" and f["severity"] == "high"
    assert "25" in f["summary"]


def test_undated_result_never_drives_a_high_finding() -> None:
    o = obs("62238-1", 12, days_ago(1))
    del o["effectiveDateTime"]
    out = detect_findings(resources=[patient(), med("Apixaban 2.5mg tablets"), o])
    f = _rules(out)["dr-factor-xa-egfr-15"]
    assert f["kind"] == "monitoring" and f["severity"] != "high" and "undated" in f["summary"]


def test_one_repeat_test_for_several_rules_on_one_old_result() -> None:
    out = detect_findings(resources=[patient(), med("Metformin 500mg"), obs("62238-1", 40, days_ago(900))])
    assert len([f for f in out["findings"] if f["kind"] == "monitoring"]) == 1


def test_hba1c_in_percent_is_converted() -> None:
    """DCCT 6.2 % = IFCC 44 mmol/mol (master equation): below the frailty threshold on a sulfonylurea."""
    hb = obs("4548-4", 6.2, days_ago(10))
    hb["valueQuantity"]["unit"] = "%"
    out = detect_findings(resources=[patient(), cond("frailty"), med("Gliclazide 80mg tablets"), hb])
    f = _rules(out)["stopp-hypoglycaemic-below-frailty-target"]
    assert "44" in f["summary"]


def test_why_now_names_the_facts_with_dates_and_sources() -> None:
    e = obs("62238-1", 25, days_ago(12))
    e["meta"] = {"source": "https://lab.example.nhs.uk"}
    m = med("Metformin 500mg tablets")
    m["meta"] = {"source": "https://gp.example.nhs.uk"}
    m["effectivePeriod"] = {"start": "2024-03-01"}
    f = _rules(detect_findings(resources=[patient(), m, e]))["dr-metformin-egfr-30"]
    why = {w["ref"]: w for w in f["why_now"]}
    assert why[f"Observation/{e['id']}"]["date"] == days_ago(12)
    assert why[f"Observation/{e['id']}"]["source"] == "https://lab.example.nhs.uk"
    assert "25" in why[f"Observation/{e['id']}"]["what"]
    assert why[f"MedicationStatement/{m['id']}"]["date"] == "2024-03-01"
    assert set(why) <= set(f["involves"])


# -- the dead ----------------------------------------------------------------------------------------------------
def _dead(flag: str) -> dict[str, Any]:
    p = patient("1938-02-02")
    if flag == "boolean":
        p["deceasedBoolean"] = True
    else:
        p["deceasedDateTime"] = "2026-10-01T09:00:00Z"
    return p


def test_deceased_person_gets_no_findings_unless_asked() -> None:
    meds = [med("Naproxen 500mg tablets"), med("Warfarin 3mg tablets")]
    for flag in ("boolean", "datetime"):
        out = check_record(resources=[_dead(flag), *meds])
        assert out["deceased"] is True and out["findings"] == [] and out["resolution"]["changes"] == []
        asked = detect_findings(resources=[_dead(flag), *meds], include_deceased=True)
        assert "dd-nsaid-anticoagulant" in _rules(asked)
    alive = patient("1938-02-02")
    alive["deceasedBoolean"] = False
    assert "dd-nsaid-anticoagulant" in _rules(detect_findings(resources=[alive, *meds]))


def test_death_on_any_linked_patient_record_counts() -> None:
    linked = _dead("datetime")
    linked["id"] = "pt1-hospital"
    out = detect_findings(resources=[patient(), linked, med("Naproxen 500mg"), med("Warfarin 3mg")])
    assert out["deceased"] is True and out["findings"] == []


def test_cli_check_of_a_deceased_person(tmp_path: Path) -> None:
    p = tmp_path / "dead.json"
    p.write_text(json.dumps(bundle(_dead("boolean"), med("Naproxen 500mg"), med("Warfarin 3mg"))))
    r = runner.invoke(root, ["conflicts", "check", str(p), "--format", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["deceased"] is True and out["findings"] == []


# -- the gone: expired and stopped elsewhere ---------------------------------------------------------------------
def test_expired_prescription_is_not_current() -> None:
    rx = med("Naproxen 500mg tablets", rtype="MedicationRequest")
    rx["dispenseRequest"] = {"validityPeriod": {"start": "2025-01-01", "end": days_ago(40)}}
    out = detect_findings(resources=[patient(), rx, med("Warfarin 3mg tablets")])
    assert "dd-nsaid-anticoagulant" not in _rules(out)
    assert "expired" in out["not_current"][f"MedicationRequest/{rx['id']}"]
    rx["dispenseRequest"]["validityPeriod"]["end"] = days_ago(-60)
    assert "dd-nsaid-anticoagulant" in _rules(detect_findings(resources=[patient(), rx, med("Warfarin 3mg")]))


def test_stopped_by_another_organisation_later_is_not_current() -> None:
    gp = _from("gp", med("Naproxen 500mg tablets", rtype="MedicationRequest"), days_ago(200))
    stop = _from("hospital", med("Naproxen 500mg tablets", status="stopped"), days_ago(30))
    warfarin = med("Warfarin 3mg tablets")
    out = detect_findings(resources=[patient(), gp, stop, warfarin])
    assert "dd-nsaid-anticoagulant" not in _rules(out)
    assert "stopped by a later record" in out["not_current"][f"MedicationRequest/{gp['id']}"]
    # a stop recorded before the current prescription (re-started since) leaves it current
    earlier = _from("hospital", med("Naproxen 500mg tablets", status="stopped"), days_ago(400))
    assert "dd-nsaid-anticoagulant" in _rules(detect_findings(resources=[patient(), gp, earlier, warfarin]))
    for status in ("completed", "cancelled", "entered-in-error", "stopped"):
        only = detect_findings(resources=[patient(), med("Naproxen 500mg", status=status), warfarin])
        assert "dd-nsaid-anticoagulant" not in _rules(only)


# -- right hazard, right advice ----------------------------------------------------------------------------------
def test_opioid_with_ssri_is_serotonin_toxicity() -> None:
    out = detect_findings(resources=[patient(), med("Sertraline 50mg tablets"), med("Tramadol 50mg capsules")])
    f = _rules(out)["ix-ssri-serotonergic-opioid"]
    assert f["severity"] == "high" and "serotonin" in f["summary"].lower()
    assert "not an anticholinergic" in f["mechanism"]


def test_potassium_supplement_is_stopped_first() -> None:
    out = check_record(resources=[patient(), med("Sando-K effervescent tablets"), med("Amiloride 5mg tablets"),
                                  cond("heart failure"), med("Furosemide 40mg tablets")])
    changes = out["resolution"]["changes"]
    assert changes and changes[0]["step"] == 1 and changes[0]["action"] == "stop"
    first = changes[0]
    assert "Sando-K" in first["reason"] and "first" in first["reason"].lower() and first["sources"]
    assert not any(c["action"] == "stop" and "Amiloride" in c["reason"].split(":")[0] for c in changes)


def test_metformin_is_not_stopped_above_its_licensed_egfr() -> None:
    out = check_record(resources=[patient(), cond("type 2 diabetes"), med("Metformin 500mg tablets"),
                                  med("Amitriptyline 25mg tablets"), med("Oxybutynin 5mg tablets"),
                                  obs("62238-1", 40, days_ago(20))])
    target = next(f["involves"][0] for f in out["findings"] if f["rule"] == "dr-metformin-egfr-45")
    acts = {c["action"] for c in out["resolution"]["changes"] if c["target"] == target}
    assert "stop" not in acts and "adjust-dose" in acts
    below = check_record(resources=[patient(), cond("type 2 diabetes"), med("Metformin 500mg tablets"),
                                    obs("62238-1", 22, days_ago(20))])
    tgt = next(f["involves"][0] for f in below["findings"] if f["rule"] == "dr-metformin-egfr-30")
    # below 30 it is contraindicated: the proposal takes metformin away (stop, or switch to an alternative)
    assert any(c["action"] in ("stop", "switch") and c["target"] == tgt for c in below["resolution"]["changes"])


def test_laxative_is_added_with_a_regular_strong_opioid() -> None:
    out = check_record(resources=[patient("1975-06-01"), med("Morphine sulfate 10mg modified-release tablets")])
    f = _rules(out)["nice-strong-opioid-laxative"]
    assert f["kind"] == "omission" and f["suggest"]["ingredient"] == "senna"
    adds = [c for c in out["resolution"]["changes"] if c["action"] == "add"]
    assert adds and adds[0]["to"].lower() == "senna" and adds[0]["reason"].startswith("Start")
    assert adds[0]["sources"]
    assert "nice-strong-opioid-laxative" not in {f["rule"] for f in out["resolution"]["residual"]}


# -- alert fatigue -----------------------------------------------------------------------------------------------
def test_routine_low_schedule_and_lifestyle_findings_are_off_by_default(monkeypatch) -> None:
    monkeypatch.delenv("JOINEDUP_CONFLICT_ROUTINE_ALERTS", raising=False)
    routine = {"severity": "low", "kind": "schedule", "rule": "x"}
    lifestyle = {"severity": "low", "kind": "lifestyle", "rule": "y"}
    low_alert = {"severity": "low", "kind": "burden", "rule": "z"}
    high = {"severity": "high", "kind": "drug-drug", "rule": "h"}
    shown, hidden = preferences.visible([routine, lifestyle, low_alert, high], "low")
    assert shown == [low_alert, high] and hidden == 2
    shown, hidden = preferences.visible([routine, lifestyle, low_alert, high], "all")
    assert len(shown) == 4 and hidden == 0
    monkeypatch.setenv("JOINEDUP_CONFLICT_ROUTINE_ALERTS", "1")
    assert len(preferences.visible([routine, lifestyle, high], "low")[0]) == 3
    assert preferences.visible([routine, high], "high")[0] == [high]


def _hook(pid: str, resources: list[dict[str, Any]]) -> dict[str, Any]:
    def by(t: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "searchset",
                "entry": [{"resource": r} for r in resources if r["resourceType"] == t]}
    return {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/gp-1", "patientId": pid},
            "prefetch": {"patient": next(r for r in resources if r["resourceType"] == "Patient"),
                         "conditions": by("Condition"), "medications": by("MedicationRequest"),
                         "medicationStatements": by("MedicationStatement"), "observations": by("Observation"),
                         "allergies": by("AllergyIntolerance")}}


def _person(pid: str, *, dead: bool = False) -> list[dict[str, Any]]:
    subj = {"reference": f"Patient/{pid}"}
    p: dict[str, Any] = {"resourceType": "Patient", "id": pid, "birthDate": "1944-03-02",
                         "generalPractitioner": [{"reference": "Organization/practice-1"}]}
    if dead:
        p["deceasedDateTime"] = "2026-11-01"
    return [p,
            {"resourceType": "MedicationStatement", "id": f"{pid}-m1", "status": "active", "subject": subj,
             "medicationCodeableConcept": {"text": "Sertraline 50mg tablets"}},
            {"resourceType": "MedicationStatement", "id": f"{pid}-m2", "status": "active", "subject": subj,
             "medicationCodeableConcept": {"text": "Tramadol 50mg capsules"}},
            {"resourceType": "Condition", "id": f"{pid}-c1", "subject": subj, "code": {"text": "Type 2 diabetes"},
             "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]}},
            {"resourceType": "Condition", "id": f"{pid}-c2", "subject": subj, "code": {"text": "Heart failure"},
             "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]}}]


def _store(api, resources: list[dict[str, Any]]) -> None:
    r = api.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": x, "request": {"method": "PUT", "url": f"{x['resourceType']}/{x['id']}"}} for x in resources]})
    assert r.status_code == 200, r.text


def test_cds_cards_say_why_now_and_none_for_the_dead(server, api, uid) -> None:
    pid, dead = f"t17-{uid}", f"t17d-{uid}"
    _store(api, _person(pid)[:1] + _person(dead, dead=True)[:1])
    with server.client("gp") as c:
        r = c.post("/cds-services/joinedup-conflicts-patient-view", json=_hook(pid, _person(pid)))
        assert r.status_code == 200, r.text
        cards = {x["source"]["topic"]["code"]: x for x in r.json()["cards"]}
        card = cards["ix-ssri-serotonergic-opioid"]
        assert "serotonin" in card["summary"].lower() and "**Why now:**" in card["detail"]
        assert "**Mechanism:**" in card["detail"]
        assert "sch-merge-condition-reviews" not in cards  # the low 'merge reviews' schedule note: off by default
        gone = c.post("/cds-services/joinedup-conflicts-patient-view", json=_hook(dead, _person(dead, dead=True)))
        assert gone.status_code == 200 and gone.json()["cards"] == []
        assert gone.json()["extension"]["example.joinedup.deceased"] is True
        # the clinician turns routine notes on for themself
        assert c.put("/api/me/alert-settings", json={"min_severity": "all"}).json() == {"min_severity": "all"}
        again = c.post("/cds-services/joinedup-conflicts-patient-view", json=_hook(pid, _person(pid)))
        assert "sch-merge-condition-reviews" in {x["source"]["topic"]["code"] for x in again.json()["cards"]}
        assert c.put("/api/me/alert-settings", json={"min_severity": "low"}).status_code == 200


def test_screen_leaves_out_the_dead_unless_asked(server, api, uid) -> None:
    org = f"org-t17-{uid}"
    people = [f"t17s-{uid}-{i}" for i in range(2)]
    res: list[dict[str, Any]] = [{"resourceType": "Organization", "id": org, "name": f"T17 Surgery {uid}"}]
    for i, pid in enumerate(people):
        rs = _person(pid, dead=i == 1)
        rs[0]["generalPractitioner"] = [{"reference": f"Organization/{org}"}]
        res += rs
    _store(api, res)
    with server.client("admin") as c:
        body = c.get("/api/conflicts/screen", params={"practice": org, "refresh": "true"}).json()
        assert body["screened"] == 1 and [w["patient"] for w in body["worklist"]] == [f"Patient/{people[0]}"]
        asked = c.get("/api/conflicts/screen", params={"practice": org, "refresh": "true",
                                                       "include_deceased": "true"}).json()
        assert asked["screened"] == 2 and asked["total"] == 2
        assert asked["filters"]["include_deceased"] is True
