"""Financing evidence for the integration self-assessment (issue 16): the cost of care across settings and per
multimorbidity band, computed in the evidence pass and attached to SELFIE financing, the checklist's question on
finances (checklist-cc-2) and the economic factors.

A small population is written through the gate (the integration account's FHIR writes) into a database of its own
(a SQLite file, and a schema of its own in the PostgreSQL test database when one is configured), and
`joinedup assessment report --format json` is read. Expected values are worked out by hand from the unit costs of the
Unit Costs of Health and Social Care 2024 Manual (PSSRU/CHE, 2023/24 prices) as restated in tests/population/
test_cost.py: GP surgery consultation GBP 45 (Table 9.4.2); non-elective long stay 5,134, outpatient consultant led
198, emergency care 273 (Table 6.1.1, NCC 2023/24); district nurse face to face 57 (Table 6.2.1); community mental
health functional 280, memory services 238 (Table 2.1.1); social worker 58 an hour (Table 10.1.1); home care worker
27 an hour (Table 10.4.1), with the schedule's stated assumption of 10 hours a week for a home care package.
The cost report's published rules: costs rounded to the nearest GBP 100, a cost over a suppressed count withheld.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.identity import SYSTEM

PG_URL = os.environ.get("JOINEDUP_TEST_DATABASE_URL")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SCT = "http://snomed.info/sct"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
# four QOF registers from SNOMED CT codes of knowledge/conditions.yaml: hypertension 38341003, atrial fibrillation
# 49436004, heart failure 84114007, COPD 13645005 - the cost engine's "4+" band of long-term conditions
FOUR_CONDITIONS = ("38341003", "49436004", "84114007", "13645005")
NO_SUPPRESSION = {"JOINEDUP_SUPPRESS_LOW": "1", "JOINEDUP_SUPPRESS_HIGH": "0", "JOINEDUP_SUPPRESS_ROUND": "1"}
FINANCE_ITEMS = ("selfie-financing", "checklist-coordination-of-care", "factor-economic")


def _iso(day: date, hour: int, minute: int = 0) -> str:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC).isoformat().replace("+00:00", "Z")


def _enc(eid: str, pid: str, cls: str, day: date, minutes: int, org: str, *, who: str | None = None,
         code: str | None = None, service_type: str | None = None, nights: int = 0) -> dict:
    end = day + timedelta(days=nights)
    res = {"resourceType": "Encounter", "id": eid, "status": "finished", "class": {"system": ACT, "code": cls},
           "subject": {"reference": f"Patient/{pid}"},
           "period": {"start": _iso(day, 9), "end": _iso(end, 9 + minutes // 60, minutes % 60)},
           "serviceProvider": {"reference": f"Organization/{org}"}}
    if who:
        res["participant"] = [{"individual": {"reference": f"Practitioner/{who}"}}]
    if code:
        res["type"] = [{"coding": [{"system": SCT, "code": code}]}]
    if service_type:
        res["serviceType"] = {"text": service_type}
    return res


def _population(gate, today: date) -> None:
    """Four people registered with one practice, their year of care:
    p1 (no condition): GP consultation 45 + A&E attendance 273 = 318
    p2 (no condition): GP consultation 45 + district nurse visit 57 = 102
    p3 (four conditions): GP consultation 45 + emergency admission of 3 nights (long stay) 5,134 + memory service
       238 + social worker for 60 minutes 58 = 5,475
    p4 (four conditions): outpatient attendance 198 + community mental health contact 280 + home care package for
       the 14 days today-20..today-7 = 2 weeks x 10 hours x 27 = 540; total 1,018"""
    for oid, extra in (("cq-gp", {"identifier": [{"system": ODS, "value": "Z90001"}]}), ("cq-acute", {}),
                       ("cq-comm", {}), ("cq-mh", {}), ("cq-la", {})):
        gate.update(SYSTEM, "Organization", oid, {"resourceType": "Organization", "id": oid, "name": oid, **extra})
    gate.update(SYSTEM, "PractitionerRole", "cq-role", {
        "resourceType": "PractitionerRole", "id": "cq-role", "active": True,
        "practitioner": {"reference": "Practitioner/cq-doc"}, "organization": {"reference": "Organization/cq-gp"},
        "code": [{"text": "GP"}]})
    for pid in ("p1", "p2", "p3", "p4"):
        gate.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "birthDate": "1950-03-01",
                                             "generalPractitioner": [{"reference": "Organization/cq-gp"}]})
    for pid in ("p3", "p4"):
        for n, code in enumerate(FOUR_CONDITIONS):
            gate.update(SYSTEM, "Condition", f"{pid}-c{n}", {
                "resourceType": "Condition", "id": f"{pid}-c{n}", "clinicalStatus": ACTIVE,
                "code": {"coding": [{"system": SCT, "code": code}]}, "subject": {"reference": f"Patient/{pid}"}})
    d = lambda n: today - timedelta(days=n)  # noqa: E731
    encounters = [
        _enc("e1", "p1", "AMB", d(30), 10, "cq-gp", who="cq-doc"),
        _enc("e2", "p1", "EMER", d(40), 120, "cq-acute"),
        _enc("e3", "p2", "AMB", d(50), 10, "cq-gp", who="cq-doc"),
        _enc("e4", "p2", "HH", d(60), 30, "cq-comm", service_type="District nursing"),
        _enc("e5", "p3", "AMB", d(70), 10, "cq-gp", who="cq-doc"),
        _enc("e6", "p3", "IMP", d(100), 60, "cq-acute", code="183452005", nights=3),
        _enc("e7", "p3", "AMB", d(80), 60, "cq-mh", service_type="Memory assessment service"),
        _enc("e8", "p3", "HH", d(90), 60, "cq-la", service_type="Adult social care"),
        _enc("e9", "p4", "AMB", d(110), 30, "cq-acute", service_type="Cardiology"),
        _enc("e10", "p4", "AMB", d(120), 60, "cq-mh", service_type="Community mental health"),
        # outside the 12 months: not counted
        _enc("e-old", "p1", "EMER", d(400), 60, "cq-acute"),
    ]
    for e in encounters:
        gate.update(SYSTEM, "Encounter", e["id"], e)
    gate.update(SYSTEM, "EpisodeOfCare", "hc4", {
        "resourceType": "EpisodeOfCare", "id": "hc4", "status": "finished", "type": [{"text": "Home care package"}],
        "patient": {"reference": "Patient/p4"}, "period": {"start": d(20).isoformat(), "end": d(7).isoformat()}})


@pytest.fixture(scope="module", params=["sqlite"] + (["postgresql"] if PG_URL else []))
def cost_db(request, tmp_path_factory):
    """A database holding only this population: a SQLite file, or a schema of its own in the PostgreSQL test
    database (dropped afterwards)."""
    from joinedup.governance.gate import get_gate

    today = datetime.now(UTC).date()
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('assessment-cost') / 'cost.db'}"
        schema = None
    else:
        schema = f"cost_ev_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        admin.dispose()
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    gate = get_gate(url)
    _population(gate, today)
    gate.flush_audit()
    yield url, today
    if schema:
        gate.flush_audit()
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _report(url: str, **env: str) -> dict:
    result = CliRunner().invoke(app, ["assessment", "report", "--format", "json"],
                                env={"JOINEDUP_DATABASE_URL": url, **env})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _period_start(today: date) -> str:
    """The 12 months to the report day: from the day after the same date a year before."""
    try:
        year_before = today.replace(year=today.year - 1)
    except ValueError:  # 29 February
        year_before = today.replace(year=today.year - 1, day=28)
    return (year_before + timedelta(days=1)).isoformat()


def test_cost_share_by_setting_worked_by_hand(cost_db):
    """Costs per setting (exact): general practice 45 x 3 = 135; acute hospital 273 + 5,134 + 198 = 5,605;
    community health 57; mental health 238 + 280 = 518; adult social care 58 + 540 = 598; total 6,913.
    Published to the nearest GBP 100: 100, 5,600, 100, 500, 600; total 6,900. Shares of the published total:
    100/6,900 = 1.4%, 5,600/6,900 = 81.2%, 1.4%, 500/6,900 = 7.2%, 600/6,900 = 8.7%; outside hospital
    (100 + 100 + 500 + 600)/6,900 = 18.8%."""
    url, today = cost_db
    rep = _report(url, **NO_SUPPRESSION)
    m = {e["measure"]: e for e in rep["measures"]}["cost_share_by_setting"]
    assert m["value"] == 18.8 and m["unit"] == "percent"
    assert m["total_cost"] == 6900 and m["people"] == 4
    shares = {s["setting"]: (s["share"], s["cost"]) for s in m["settings"]}
    assert shares == {"general-practice": (1.4, 100), "acute-hospital": (81.2, 5600),
                      "community-health": (1.4, 100), "mental-health": (7.2, 500), "social-care": (8.7, 600)}
    assert m["period"] == {"start": _period_start(today), "end": today.isoformat()}
    assert "not payments" in m["definition"] and "PSSRU" in m["definition"]


def test_cost_per_person_by_multimorbidity_worked_by_hand(cost_db):
    """Band 0 (p1, p2): (318 + 102)/2 = 210.00 per person; band 4+ (p3, p4): (5,475 + 1,018)/2 = 3,246.50;
    ratio 3,246.50/210.00 = 15.46, published to one decimal: 15.5. No one is in bands 1 or 2-3."""
    url, today = cost_db
    rep = _report(url, **NO_SUPPRESSION)
    m = {e["measure"]: e for e in rep["measures"]}["cost_per_person_by_multimorbidity"]
    assert m["value"] == 15.5
    assert m["compared"] == {"high": "4+", "low": "0"}
    seg = {g["group"]: (g["people"], g["cost_per_person"]) for g in m["segments"]}
    assert seg == {"0": (2, 210.0), "4+": (2, 3246.5)}
    assert m["period"] == {"start": _period_start(today), "end": today.isoformat()}


def test_financing_items_carry_the_cost_evidence(cost_db):
    url, _ = cost_db
    rep = _report(url, **NO_SUPPRESSION)
    items = {i["id"]: i for i in rep["items"]}
    for key in FINANCE_ITEMS:
        ev = {e["measure"]: e for e in items[key]["evidence"]}
        assert {"cost_share_by_setting", "cost_per_person_by_multimorbidity"} <= set(ev), key
        for e in ev.values():
            assert {"measure", "value", "period", "definition", "unit"} <= set(e)
        # the record holds no payments or budgets: what still rests on the board's own evidence is said
        note = items[key]["evidence_note"]
        assert "board's own evidence" in note and ("payments" in note or "budgets" in note)
        assert "no_evidence" not in items[key]
    questions = {q["id"]: q for q in items["checklist-coordination-of-care"]["questions"]}
    assert questions["checklist-cc-2"]["evidence"] == ["cost_share_by_setting", "cost_per_person_by_multimorbidity"]
    assert "evidence" not in questions["checklist-cc-1"]


def test_small_numbers_are_withheld(cost_db):
    """With the default suppression (1 to JOINEDUP_SUPPRESS_HIGH=7 shown as '*') four people are a small number:
    the total, every setting's cost and share, each band's cost per person and the ratio are withheld, and none
    of the exact or rounded costs above appears anywhere in the report."""
    url, _ = cost_db
    rep = _report(url)
    m = {e["measure"]: e for e in rep["measures"]}
    share, per = m["cost_share_by_setting"], m["cost_per_person_by_multimorbidity"]
    assert share["value"] == "*" and share["suppressed"] is True and share["people"] == "*"
    assert share["total_cost"] is None and share["settings"] == []
    assert per["value"] == "*" and per["suppressed"] is True
    assert all(g["people"] == "*" and g["cost_per_person"] is None and g["cost"] is None for g in per["segments"])
    text = json.dumps({"share": share, "per": per})
    for figure in ("6900", "6913", "5600", "210.0", "3246.5", "15.5", "18.8"):
        assert figure not in text


def test_a_small_setting_withholds_its_share_and_the_share_outside_hospital(cost_db):
    """Suppressing counts from 1 to 2 (JOINEDUP_SUPPRESS_HIGH=2, no rounding): four people and three GP contacts are
    published, but community health (one contact, one person), mental health (two contacts) and social care (two
    people) are small numbers: their costs and shares are withheld, and with them the share outside hospital.
    General practice (three contacts, three people) 100/6,900 = 1.4% and acute hospital (three contacts: p1, p3,
    p4) 5,600/6,900 = 81.2% stay published."""
    url, _ = cost_db
    rep = _report(url, JOINEDUP_SUPPRESS_LOW="1", JOINEDUP_SUPPRESS_HIGH="2", JOINEDUP_SUPPRESS_ROUND="1")
    m = {e["measure"]: e for e in rep["measures"]}["cost_share_by_setting"]
    shares = {s["setting"]: (s["share"], s["cost"]) for s in m["settings"]}
    assert shares["general-practice"] == (1.4, 100) and shares["acute-hospital"] == (81.2, 5600)
    for setting in ("community-health", "mental-health", "social-care"):
        assert shares[setting] == ("*", None)
    assert m["value"] == "*" and m["suppressed"] is True
    per = {e["measure"]: e for e in rep["measures"]}["cost_per_person_by_multimorbidity"]
    assert per["value"] == "*"  # each band holds two people: a small number here
