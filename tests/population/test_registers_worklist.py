"""Registers and care gaps through the real interfaces: the engine on worked examples from the QOF register rules
and the care-process intervals (NICE NG28 / National Diabetes Audit 8 care processes, QOF DEM004, NICE NG106 ...),
the API (`/api/registers`, `/api/registers/worklist`, `/api/patients/{id}/risk`) and the CLI (`joinedup registers`,
`joinedup risk`), as each relevant role. Direct care: opted-out people stay on the worklist; deceased people are
left out unless asked for; patients and social workers are refused."""

from __future__ import annotations

import csv
import io
import itertools
import json
from datetime import date

import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM
from joinedup.population.registers import engine
from joinedup.population.risk import facts as F

SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
TODAY = date(2026, 6, 30)
_IDS = itertools.count(1)


def obs(loinc, day):
    n = next(_IDS)
    return {"resourceType": "Observation", "id": f"o{n}", "status": "final", "subject": {"reference": "Patient/p"},
            "code": {"coding": [{"system": LOINC, "code": loinc}]}, "effectiveDateTime": day}


def cond(code, *, status="active", text=None):
    c = {"resourceType": "Condition",
         "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                        "code": status}]},
         "code": {"coding": [{"system": SCT, "code": code}]}, "subject": {"reference": "Patient/p"}}
    if text:
        c["code"]["text"] = text
    return c


def person(birth):
    return {"resourceType": "Patient", "id": "p", "birthDate": birth}


def test_register_age_limits_and_resolved_codes():
    # 44054006 type 2 diabetes: QOF DM register from age 17
    assert [r["register"] for r in engine.registers_of(F.build(person("2010-01-01"), [cond("44054006")]), TODAY)] \
        == []
    on = engine.registers_of(F.build(person("2009-06-01"), [cond("44054006")]), TODAY)
    assert [r["register"] for r in on] == ["diabetes"]
    resolved = F.build(person("1950-01-01"), [cond("44054006", status="resolved"), cond("38341003")])
    assert [r["register"] for r in engine.registers_of(resolved, TODAY)] == ["hypertension"]


def test_ckd_register_is_stages_3_to_5_only():
    stage2 = F.build(person("1950-01-01"), [cond("709044004", text="Chronic kidney disease stage 2")])
    stage3 = F.build(person("1950-01-01"), [cond("709044004", text="Chronic kidney disease stage 3a")])
    assert "ckd" not in [r["register"] for r in engine.registers_of(stage2, TODAY)]
    assert "ckd" in [r["register"] for r in engine.registers_of(stage3, TODAY)]


def test_diabetes_care_processes_due_and_overdue():
    items = [cond("44054006"),
             obs("59261-8", "2026-03-30"),   # HbA1c 3 months ago: done
             obs("85354-9", "2025-05-30"),   # BP 13 months ago: overdue
             obs("14959-1", "2025-07-15"),   # urine ACR 11.5 months ago: due within 30 days
             obs("62238-1", "2026-07-15"),   # eGFR after the date of the list: not counted
             {"resourceType": "Procedure", "id": "pr", "status": "completed", "performedDateTime": "2026-01-05",
              "code": {"coding": [{"system": SCT, "code": "401191002"}]}}]  # foot examination: done
    r = engine.person_registers(F.build(person("1950-01-01"), items), TODAY)
    status = {p["process"]: p["status"] for p in r["registers"][0]["care_processes"]}
    assert status == {"hba1c": "done", "blood_pressure": "overdue", "cholesterol": "overdue",
                      "kidney_function": "overdue", "urine_acr": "due", "foot_check": "done"}
    acr = next(p for p in r["registers"][0]["care_processes"] if p["process"] == "urine_acr")
    assert acr["due_by"] == "2026-07-15" and acr["last_done"] == "2025-07-15"


def test_dementia_care_plan_review_by_name():
    items = [cond("52448006"), {"resourceType": "Procedure", "id": "x", "status": "completed",
                                "performedDateTime": "2025-12-01", "code": {"text": "Dementia care plan review"}}]
    r = engine.person_registers(F.build(person("1940-01-01"), items), TODAY)
    dem = next(g for g in r["registers"] if g["register"] == "dementia")
    assert dem["care_processes"][0]["status"] == "done"


# -- through the API and the CLI ----------------------------------------------------------------------------------
@pytest.fixture()
def ics(server, api, uid):
    """A practice (own ODS code) in a PCN with four people: diabetes with gaps, the same but opted out of secondary
    use, the same but deceased, and a well person; and users of each role at that practice."""
    from joinedup.governance.accounts import add_user, issue_token

    org, pcn, ods, pcn_ods = f"org-{uid}", f"pcn-{uid}", f"T{uid[:6].upper()}", f"N{uid[:6].upper()}"
    for oid, code, part in ((pcn, pcn_ods, None), (org, ods, pcn)):
        body = {"resourceType": "Organization", "id": oid, "name": f"Surgery {uid}",
                "identifier": [{"system": ODS, "value": code}]}
        if part:
            body["partOf"] = {"reference": f"Organization/{part}"}
        assert api.put(f"/fhir/Organization/{oid}", json=body).status_code in (200, 201)
    ids = {k: f"rg-{k}-{uid}" for k in ("dm", "out", "dead", "well")}
    for key, pid in ids.items():
        p = {"resourceType": "Patient", "id": pid, "birthDate": "1950-02-01", "gender": "male",
             "name": [{"family": f"Reg{key.title()}", "given": ["Sam"]}],
             "generalPractitioner": [{"reference": f"Organization/{org}"}]}
        if key == "dead":
            p["deceasedDateTime"] = "2026-01-02"
        assert api.put(f"/fhir/Patient/{pid}", json=p).status_code in (200, 201)
        if key != "well":
            body = cond("44054006")
            body["subject"] = {"reference": f"Patient/{pid}"}
            assert api.post("/fhir/Condition", json=body).status_code == 201
            o = obs("59261-8", "2026-03-30")
            o.pop("id")
            o["subject"] = {"reference": f"Patient/{pid}"}
            o["valueQuantity"] = {"value": 52, "unit": "mmol/mol"}
            assert api.post("/fhir/Observation", json=o).status_code == 201
    r = api.post("/fhir/Consent", json={
        "resourceType": "Consent", "status": "active",
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
        "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
        "patient": {"reference": f"Patient/{ids['out']}"}, "provision": {"type": "deny"}})
    assert r.status_code == 201, r.text
    tokens = {}
    for role, extra in (("gp", {}), ("practice-nurse", {}), ("social-worker", {}),
                        ("patient", {"patient": ids["dm"]})):
        name = f"{role}-{uid}"
        links = extra or {"organization": org}
        add_user(server.gate, name=name, role=role, password="pw-pw-pw-pw", replace=True, **links)
        tokens[role] = issue_token(server.gate, name)
    return {"org": org, "ods": ods, "pcn_ods": pcn_ods, "ids": ids, "tokens": tokens}


def client(server, token):
    import httpx

    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@pytest.mark.parametrize("role", ["gp", "practice-nurse"])
def test_worklist_for_clinicians_keeps_opted_out_and_leaves_out_deceased(server, ics, role):
    with client(server, ics["tokens"][role]) as c:
        r = c.get("/api/registers/worklist", params={"practice": ics["ods"], "date": "2026-06-30"})
        assert r.status_code == 200, r.text
        rows = {row["patient"]: row for row in r.json()["rows"]}
        assert set(rows) == {ics["ids"]["dm"], ics["ids"]["out"]}  # opted out: still there (direct care)
        gaps = {g["process"]: g["status"] for g in rows[ics["ids"]["dm"]]["gaps"]}
        assert "hba1c" not in gaps and gaps["blood_pressure"] == "overdue" and gaps["foot_check"] == "overdue"
        assert r.json()["deceased_excluded"] == 1
        r = c.get("/api/registers/worklist", params={"pcn": ics["pcn_ods"], "include_deceased": "true",
                                                     "date": "2026-06-30", "status": "overdue"})
        assert {row["patient"] for row in r.json()["rows"]} == {ics["ids"][k] for k in ("dm", "out", "dead")}


@pytest.mark.parametrize("role", ["social-worker", "patient"])
def test_worklist_refused_to_non_clinicians(server, ics, role):
    with client(server, ics["tokens"][role]) as c:
        r = c.get("/api/registers/worklist", params={"practice": ics["ods"]})
        assert r.status_code == 403
        assert r.json()["resourceType"] == "OperationOutcome"


def test_register_sizes_by_practice(server, ics):
    with client(server, ics["tokens"]["gp"]) as c:
        r = c.get("/api/registers", params={"practice": ics["ods"], "date": "2026-06-30"})
        assert r.status_code == 200, r.text
        regs = {x["register"]: x for x in r.json()["registers"]}
        assert regs["diabetes"]["by_practice"] == {ics["ods"]: 2}  # alive: dm and out
        assert r.json()["list_size"] == {ics["ods"]: 3}


@pytest.mark.parametrize(("params", "where"), [({"practice": "Z!!"}, "ODS"), ({"register": "gout"}, "register"),
                                               ({"status": "late"}, "status"), ({"date": "30/06/2026"}, "date"),
                                               ({"practice": "QQQ999"}, "no organisation")])
def test_worklist_bad_input_is_an_operation_outcome(server, ics, params, where):
    with client(server, ics["tokens"]["gp"]) as c:
        r = c.get("/api/registers/worklist", params=params)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["resourceType"] == "OperationOutcome" and where in body["issue"][0]["diagnostics"]


def test_person_risk_api_as_gp_and_refusals(server, ics, uid):
    pid = ics["ids"]["dm"]
    with client(server, ics["tokens"]["gp"]) as c:
        r = c.get(f"/api/patients/{pid}/risk", params={"date": "2026-06-30"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cambridge_multimorbidity_score"]["score"] == pytest.approx(0.75)  # diabetes
        assert body["registers"]["registers"][0]["register"] == "diabetes"
        assert c.get(f"/api/patients/{pid}/risk", params={"date": "yesterday"}).status_code == 400
        bad = c.get("/api/patients/bad id!/risk")
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
        other = c.get(f"/api/patients/nobody-{uid}/risk")
        assert other.status_code == 403 and other.json()["resourceType"] == "OperationOutcome"
    with client(server, ics["tokens"]["patient"]) as c:  # a person sees their own scores
        assert c.get(f"/api/patients/{pid}/risk").status_code == 200
        assert c.get(f"/api/patients/{ics['ids']['well']}/risk").status_code == 403


def run_cli(server, *args):
    return CliRunner().invoke(app, list(args), env={"JOINEDUP_DATABASE_URL": server.db_url,
                                                    "JOINEDUP_SECRET_KEY": "test-secret"})


def test_cli_worklist_csv_and_json(server, ics):
    r = run_cli(server, "registers", "worklist", "--practice", ics["ods"], "--format", "csv", "--date", "2026-06-30")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert {row["patient"] for row in rows} == {ics["ids"]["dm"], ics["ids"]["out"]}
    assert {"hba1c"} & {row["process"] for row in rows} == set()
    r = run_cli(server, "registers", "list", "--practice", ics["ods"], "--date", "2026-06-30")
    assert r.exit_code == 0, r.output
    regs = {x["register"]: x["total"] for x in json.loads(r.stdout)["registers"]}
    assert regs["diabetes"] == 2
    r = run_cli(server, "risk", "person", ics["ids"]["dm"], "--date", "2026-06-30")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["regular_medicines"]["count"] == 0


@pytest.mark.parametrize("args", [["registers", "worklist", "--practice", "NOPE99"],
                                  ["registers", "worklist", "--format", "xml"],
                                  ["registers", "list", "--date", "2026-13-01"],
                                  ["risk", "person", "bad id!"]])
def test_cli_bad_input_exit_2_one_line(server, args):
    r = run_cli(server, *args)
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 or len(r.output.strip().splitlines()) == 1


def test_population_distribution_is_suppressed(server, ics):
    with client(server, ics["tokens"]["gp"]) as c:
        r = c.get("/api/population/risk", params={"practice": ics["ods"], "date": "2026-06-30"})
        assert r.status_code == 200, r.text
        body = r.json()
        # planning excludes the opted-out person and the deceased: 2 people, a small number, shown as '*'
        assert body["people"] == {ics["ods"]: "*"}
        assert all(v == "*" for per in body["distributions"].values() for cell in per.values()
                   for v in cell.values())


def test_population_distribution_for_an_analyst_from_deidentified_records(server, ics):
    with server.client("analyst") as c:
        r = c.get("/api/population/risk", params={"date": "2026-06-30"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["people"] and all(v == "*" or (isinstance(v, int) and v % 5 == 0) for v in body["people"].values())
        # no person's id or name in what an analyst gets
        assert ics["ids"]["dm"] not in r.text and "RegDm" not in r.text
        assert c.get("/api/registers/worklist").status_code == 403


def test_risk_panel_for_the_person_page(server, ics):
    pid = ics["ids"]["dm"]
    with client(server, ics["tokens"]["gp"]) as c:
        r = c.get(f"/patients/{pid}/panels/risk", headers={"HX-Request": "true"})
        if r.status_code in (302, 303) and "/login" in r.headers.get("location", ""):
            pytest.skip("pages need a signed-in session (covered by tests/browser/test_population_worklist.py)")
        assert r.status_code == 200, r.text
        assert 'id="risk-panel"' in r.text and 'data-score="cms"' in r.text
        assert "Diabetes mellitus (QOF DM)" in r.text
        r = c.get(f"/patients/{pid}/panels/risk", follow_redirects=False)  # without HTMX: the full page
        assert r.status_code == 303 and r.headers["location"] == f"/patients/{pid}/risk"
    with client(server, ics["tokens"]["social-worker"]) as c:  # no clinical record access: a quiet note, no scores
        r = c.get(f"/patients/{pid}/panels/risk", headers={"HX-Request": "true"})
        assert r.status_code == 200 and "could not be shown" in r.text and 'data-score="cms"' not in r.text
        assert c.get(f"/api/patients/{pid}/risk").status_code == 403
