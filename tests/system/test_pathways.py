"""Pathway and process analytics over their real interfaces: `GET /api/pathways` as an analyst and as a partnership
board member (refused to a GP and a patient), and `joinedup pathways export --format xes|ocel` validated against the
published schemas (IEEE 1849-2016 XES XSD, OCEL 2.0 JSON schema; tests/data/process-mining-schemas/).

The population is built for the purpose, in 1922 so that no other test's data falls in the period, and every
expected figure is worked out by hand from the definitions in knowledge/system/pathways.yaml:

* A (10 people): admitted 5 March 10:00, discharged 10 March 10:00 (COPD), community visit 2 days later;
* B (10): the same stay (not COPD), community visit 10 days later;
* C (10): the same stay (COPD), no follow-up at all;
* O (10): as C, but registered a National Data Opt-out - never counted, never exported;
* D (20): advice request on Thursday 1 May 09:00 to a service promising a reply within 5 working days (so by
  Thursday 8 May); 10 answered after 2 days, 10 after 10 days;
* E (20): referral on 2 June to the community trust (no service of it in the directory makes a promise: the
  126-day default applies); 10 seen in the hospital's outpatients 30 days later, 10 never answered;
* F (40): tasks created 1 July: 10 asked of another organisation, due 15 July, still open; 10 of another
  organisation, due 2099; 10 within one organisation, overdue; 10 of another organisation, completed 5 July.

* S (3): discharged in April 1921 without follow-up - alone in 1921, so every figure of 1921 is suppressed.

Small-number suppression (defaults 1-7 shown as '*', others rounded to 5) leaves 10, 20 and 30 as they are.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import jsonschema
import pytest
import xmlschema
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.governance import deid
from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM
from joinedup.governance.identity import SYSTEM

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "process-mining-schemas"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SNOMED = "http://snomed.info/sct"
PROMISE = "https://joinedup.example/fhir/StructureDefinition/response-time-promise"
OFFER = "https://joinedup.example/fhir/CodeSystem/service-offer"
PERIOD = {"from": "1922-01-01", "to": "1922-12-31"}
COPD = [{"coding": [{"system": SNOMED, "code": "13645005",
                     "display": "Chronic obstructive pulmonary disease (disorder)"}]}]


def _put(gate, resource: dict) -> None:
    gate.update(SYSTEM, resource["resourceType"], resource["id"], resource)


def _patient(gate, pid: str, gp: str) -> str:
    _put(gate, {"resourceType": "Patient", "id": pid, "gender": "male", "birthDate": "1940-02-03",
                "generalPractitioner": [{"reference": f"Organization/{gp}"}]})
    return pid


def _enc(gate, eid: str, pid: str, cls: str, start: str, end: str, org: str, **extra) -> None:
    _put(gate, {"resourceType": "Encounter", "id": eid, "status": "finished", "meta": {"source": f"Organization/{org}"},
                "class": {"system": ACT, "code": cls}, "subject": {"reference": f"Patient/{pid}"},
                "period": {"start": start, "end": end}, "serviceProvider": {"reference": f"Organization/{org}"},
                **extra})


@pytest.fixture(scope="module")
def world(server):
    gate, u = server.gate, uuid.uuid4().hex[:8]
    hosp, comm, gp = f"pw-hosp-{u}", f"pw-comm-{u}", f"pw-gp-{u}"
    for oid in (hosp, comm, gp):
        _put(gate, {"resourceType": "Organization", "id": oid, "name": f"Pathway org {oid}", "active": True})
    hs = f"pw-ag-{u}"
    _put(gate, {"resourceType": "HealthcareService", "id": hs, "active": True, "name": f"Respiratory A&G {u}",
                "providedBy": {"reference": f"Organization/{hosp}"},
                "characteristic": [{"coding": [{"system": OFFER, "code": "advice-and-guidance"}]}],
                "extension": [{"url": PROMISE, "valueDuration": {"value": 5, "unit": "working days",
                                                                  "system": "http://unitsofmeasure.org",
                                                                  "code": "d"}}]})
    people: dict[str, list[str]] = {}
    for group, copd, follow in (("A", True, "1922-03-12T10:00:00Z"), ("B", False, "1922-03-20T10:00:00Z"),
                                ("C", True, None), ("O", True, None)):
        for i in range(10):
            pid = _patient(gate, f"pw-{group}{i}-{u}", gp)
            people.setdefault(group, []).append(pid)
            _enc(gate, f"pw-adm-{group}{i}-{u}", pid, "IMP", "1922-03-05T10:00:00Z", "1922-03-10T10:00:00Z", hosp,
                 **({"reasonCode": COPD} if copd else {}))
            if follow:
                _enc(gate, f"pw-fu-{group}{i}-{u}", pid, "HH", follow, follow, comm)
            if group == "O":
                _put(gate, {"resourceType": "Consent", "id": f"pw-oo-{i}-{u}", "status": "active",
                            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                                  "code": "research"}]},
                            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                            "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
                            "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
    for i in range(3):
        pid = _patient(gate, f"pw-S{i}-{u}", gp)
        _enc(gate, f"pw-adm-S{i}-{u}", pid, "IMP", "1921-04-01T10:00:00Z", "1921-04-03T10:00:00Z", hosp)
    for i in range(20):
        pid = _patient(gate, f"pw-D{i}-{u}", gp)
        people.setdefault("D", []).append(pid)
        q = f"pw-agq-{i}-{u}"
        _put(gate, {"resourceType": "Communication", "id": q, "status": "completed",
                    "meta": {"source": f"Organization/{gp}"}, "subject": {"reference": f"Patient/{pid}"},
                    "category": [{"text": "Advice and guidance request"}], "sent": "1922-05-01T09:00:00Z",
                    "recipient": [{"reference": f"HealthcareService/{hs}"}]})
        _put(gate, {"resourceType": "Communication", "id": f"pw-agr-{i}-{u}", "status": "completed",
                    "meta": {"source": f"Organization/{hosp}"}, "subject": {"reference": f"Patient/{pid}"},
                    "category": [{"text": "Advice and guidance response"}],
                    "inResponseTo": [{"reference": f"Communication/{q}"}],
                    "sent": "1922-05-03T09:00:00Z" if i < 10 else "1922-05-11T09:00:00Z"})
    for i in range(20):
        pid = _patient(gate, f"pw-E{i}-{u}", gp)
        people.setdefault("E", []).append(pid)
        sr = f"pw-srq-{i}-{u}"
        _put(gate, {"resourceType": "ServiceRequest", "id": sr, "status": "active", "intent": "order",
                    "meta": {"source": f"Organization/{gp}"}, "subject": {"reference": f"Patient/{pid}"},
                    "category": [{"text": "Outpatient referral"}], "authoredOn": "1922-06-02T09:00:00Z",
                    "performer": [{"reference": f"Organization/{comm}"}]})
        if i < 10:
            _enc(gate, f"pw-opa-{i}-{u}", pid, "AMB", "1922-07-02T09:00:00Z", "1922-07-02T09:30:00Z", hosp,
                 basedOn=[{"reference": f"ServiceRequest/{sr}"}])
    for i in range(40):
        pid = _patient(gate, f"pw-F{i}-{u}", gp)
        people.setdefault("F", []).append(pid)
        kind = i // 10  # 0 overdue across organisations, 1 not yet due, 2 overdue within one, 3 completed
        task = {"resourceType": "Task", "id": f"pw-task-{i}-{u}", "intent": "order",
                "status": "completed" if kind == 3 else "requested", "meta": {"source": f"Organization/{gp}"},
                "for": {"reference": f"Patient/{pid}"}, "authoredOn": "1922-07-01T09:00:00Z",
                "requester": {"reference": f"Organization/{gp}"},
                "owner": {"reference": f"Organization/{gp if kind == 2 else comm}"},
                "restriction": {"period": {"end": "2099-01-01T00:00:00Z" if kind == 1 else "1922-07-15T00:00:00Z"}}}
        if kind == 3:
            task["executionPeriod"] = {"start": "1922-07-01T09:00:00Z", "end": "1922-07-05T09:00:00Z"}
        _put(gate, task)
    gate.flush_audit()
    board = f"pw-board-{u}"
    add_user(gate, name=board, role="board", display="Board member", password="pw", replace=True)
    return {"uid": u, "people": people, "hosp": hosp, "comm": comm, "gp": gp, "board": board,
            "board_token": issue_token(gate, board)}


def _figures(server, token: str, **params) -> httpx.Response:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        return c.get("/api/pathways", params=params)


def _check_expected(fig: dict) -> None:
    """Every figure against the hand-worked expectations of the module docstring."""
    assert fig["period"] == PERIOD
    assert fig["people"] == 110 and fig["events"] == 200  # O never counted
    nodes = {n["code"]: n["count"] for n in fig["map"]["nodes"]}
    assert nodes == {"ADM": 30, "DIS": 30, "CON": 20, "AGQ": 20, "AGR": 20, "REF": 20, "OPA": 10, "TCR": 40,
                     "TCO": 10}
    edges = {(e["from_name"], e["to_name"]): (e["count"], e["median_days"]) for e in fig["map"]["edges"]}
    assert edges == {("Hospital admission", "Hospital discharge"): (30, 5.0),
                     ("Hospital discharge", "Community or GP contact"): (20, 6.0),
                     ("Advice requested", "Advice reply"): (20, 6.0),
                     ("Referral sent", "Outpatient attendance"): (10, 30.0),
                     ("Task created", "Task completed"): (10, 4.0)}
    variants = {" → ".join(v["steps"]): v["count"] for v in fig["variants"]}
    assert variants == {"Hospital admission → Hospital discharge → Community or GP contact": 20,
                        "Hospital admission → Hospital discharge": 10, "Advice requested → Advice reply": 20,
                        "Referral sent": 10, "Referral sent → Outpatient attendance": 10, "Task created": 30,
                        "Task created → Task completed": 10}
    gaps = {g["id"]: (g["count"], g["denominator"], g["share"]) for g in fig["gaps"]}
    assert gaps == {"discharge-without-follow-up": (20, 30, 67), "advice-without-reply": (10, 20, 50),
                    "referral-without-reply": (10, 20, 50), "task-overdue-across-organisations": (10, 20, 50)}
    guides = {g["id"]: g for g in fig["guidelines"]}
    g72 = guides["discharge-contact-72h"]
    assert (g72["within"], g72["denominator"], g72["share"], g72["median_days"]) == (10, 30, 33, 6.0)
    assert g72["verification"] == "secondary" and "NG27" in g72["source"]
    copd = guides["copd-exacerbation-review-2-weeks"]
    assert (copd["within"], copd["denominator"], copd["share"], copd["median_days"]) == (10, 20, 50, 2.0)
    assert copd["verification"] == "unverified"
    for g in fig["gaps"] + fig["guidelines"]:  # every figure says what it is and where it comes from
        assert g["definition"] and g["source"]
    assert "fewer than 8" in fig["suppression"] and "Opt-out" in fig["suppression"]


def test_analyst_and_board_get_the_same_published_figures(server, world):
    analyst = _figures(server, server.tokens["analyst"], **PERIOD)
    assert analyst.status_code == 200, analyst.text
    _check_expected(analyst.json())
    board = _figures(server, world["board_token"], **PERIOD)
    assert board.status_code == 200, board.text
    _check_expected(board.json())


def test_small_numbers_are_suppressed(server, world):
    # 1921 holds only S: three people discharged without follow-up
    fig = _figures(server, server.tokens["analyst"], **{"from": "1921-01-01", "to": "1921-12-31"}).json()
    assert fig["people"] == "*" and fig["events"] == "*"
    assert {n["code"]: n["count"] for n in fig["map"]["nodes"]} == {"ADM": "*", "DIS": "*"}
    assert fig["map"]["edges"] == [] and fig["map"]["hidden_edges"] == 1
    assert fig["variants"] == [] and fig["rare_variants"] == 1
    gap = next(g for g in fig["gaps"] if g["id"] == "discharge-without-follow-up")
    assert (gap["count"], gap["denominator"], gap["share"]) == ("*", "*", None)
    g72 = next(g for g in fig["guidelines"] if g["id"] == "discharge-contact-72h")
    assert (g72["within"], g72["denominator"], g72["share"], g72["median_days"]) == (0, "*", None, None)


def test_refused_to_a_gp_and_a_patient_and_bad_dates_are_400(server, world):
    for user in ("gp", "pat"):
        r = _figures(server, server.tokens[user], **PERIOD)
        assert r.status_code == 403, (user, r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    r = _figures(server, server.tokens["analyst"], **{"from": "1922-13-01"})
    assert r.status_code == 400 and "'1922-13-01' is not a date" in r.text
    r = _figures(server, server.tokens["analyst"], **{"from": "1922-12-01", "to": "1922-01-01"})
    assert r.status_code == 400 and "is after" in r.text


def _export(server, tmp_path: Path, fmt: str, *extra: str) -> tuple[Path, object]:
    out = tmp_path / f"log.{fmt}"
    result = CliRunner().invoke(app, ["pathways", "export", "--format", fmt, "--out", str(out),
                                      "--from", PERIOD["from"], "--to", PERIOD["to"], *extra],
                                env={"JOINEDUP_DATABASE_URL": server.db_url, "JOINEDUP_SECRET_KEY": "test-secret"})
    return out, result


def test_xes_export_is_valid_ieee_1849_and_holds_each_journey(server, world, tmp_path):
    out, result = _export(server, tmp_path, "xes")
    assert result.exit_code == 0, result.output
    assert "wrote 110 traces and 200 events" in result.output
    xmlschema.XMLSchema(str(SCHEMAS / "xes-ieee-1849-2016.xsd")).validate(str(out))
    root = ET.parse(out).getroot()
    assert {e.get("prefix") for e in root.findall("extension")} == {"concept", "time", "org", "lifecycle"}
    traces = {t.find("string[@key='concept:name']").get("value"): t for t in root.findall("trace")}
    a0 = world["people"]["A"][0]
    assert f"Patient/{world['people']['O'][0]}" not in traces  # the opted-out are never exported
    events = [{a.get("key"): a.get("value") for a in ev} for ev in traces[f"Patient/{a0}"].findall("event")]
    assert [(e["concept:name"], e["time:timestamp"], e["org:group"]) for e in events] == [
        ("Hospital admission", "1922-03-05T10:00:00.000Z", f"Organization/{world['hosp']}"),
        ("Hospital discharge", "1922-03-10T10:00:00.000Z", f"Organization/{world['hosp']}"),
        ("Community or GP contact", "1922-03-12T10:00:00.000Z", f"Organization/{world['comm']}")]
    assert all(e["org:resource"] == e["org:group"] and e["lifecycle:transition"] == "complete" for e in events)


def test_ocel_export_is_valid_ocel_2_with_objects_and_relationships(server, world, tmp_path):
    out, result = _export(server, tmp_path, "ocel")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    schema = json.loads((SCHEMAS / "ocel20-schema-json.json").read_text())
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    assert list(validator.iter_errors(doc)) == []
    assert len(doc["events"]) == 200
    assert {"person", "organisation", "referral", "encounter"} <= {t["name"] for t in doc["objectTypes"]}
    objects = {o["id"]: o for o in doc["objects"]}
    e0 = world["people"]["E"][0]
    sr = f"ServiceRequest/pw-srq-0-{world['uid']}"
    assert objects[sr]["type"] == "referral"
    assert {"objectId": f"Patient/{e0}", "qualifier": "of-person"} in objects[sr]["relationships"]
    assert {"objectId": f"Organization/{world['comm']}", "qualifier": "addressed-to"} in objects[sr]["relationships"]
    seen = [e for e in doc["events"] if {"objectId": sr, "qualifier": "based-on"} in e["relationships"]]
    assert [(e["type"], e["time"]) for e in seen] == [("Outpatient attendance", "1922-07-02T09:00:00.000Z")]
    assert {"objectId": f"Patient/{e0}", "qualifier": "subject"} in seen[0]["relationships"]
    assert any(r["objectId"].startswith("Encounter/") for r in seen[0]["relationships"])


def test_analyst_export_is_de_identified(server, world, tmp_path):
    out, result = _export(server, tmp_path, "xes", "--user", "analyst")
    assert result.exit_code == 0, result.output
    assert "de-identified" in result.output
    xmlschema.XMLSchema(str(SCHEMAS / "xes-ieee-1849-2016.xsd")).validate(str(out))
    text = out.read_text()
    assert world["uid"] not in text.replace(world["hosp"], "").replace(world["comm"], "").replace(world["gp"], "")
    pseudo = deid.Pseudonymiser("test-secret")
    root = ET.parse(out).getroot()
    traces = {t.find("string[@key='concept:name']").get("value"): t for t in root.findall("trace")}
    a0 = traces[f"Patient/{pseudo('Patient/' + world['people']['A'][0])}"]
    events = [{a.get("key"): a.get("value") for a in ev} for ev in a0.findall("event")]
    assert [(e["concept:name"], e["time:timestamp"], e["joinedup:time-precision"]) for e in events] == [
        ("Hospital admission", "1922-03-01T00:00:00.000Z", "month"),
        ("Hospital discharge", "1922-03-01T00:00:00.000Z", "month"),
        ("Community or GP contact", "1922-03-01T00:00:00.000Z", "month")]
    assert f"Patient/{pseudo('Patient/' + world['people']['O'][0])}" not in traces
    # an analyst works on de-identified records for secondary purposes only
    _, refused = _export(server, tmp_path, "xes", "--user", "analyst", "--purpose", "direct-care")
    assert refused.exit_code == 2 and "not direct care" in refused.output


def test_export_bad_input_is_one_line_and_exit_2(server, world, tmp_path):
    env = {"JOINEDUP_DATABASE_URL": server.db_url}
    cases = [(["--format", "csv", "--out", str(tmp_path / "x")], "--format csv: choose xes or ocel"),
             (["--format", "xes", "--out", str(tmp_path)], "is a directory"),
             (["--format", "xes", "--out", "/proc/joinedup-none/log.xes"], "--out /proc/joinedup-none/log.xes"),
             (["--format", "ocel", "--out", str(tmp_path / "o.json"), "--from", "03/01/1922"], "is not a date"),
             (["--format", "ocel", "--out", str(tmp_path / "o.json"), "--purpose", "marketing"],
              "--purpose marketing"),
             (["--format", "ocel", "--out", str(tmp_path / "o.json"), "--user", "nobody-here"], "no such active user"),
             (["--format", "ocel", "--out", str(tmp_path / "b.json"), "--user", world["board"]], "")]
    for args, words in cases:
        r = CliRunner().invoke(app, ["pathways", "export", *args], env=env)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1 and words in r.output, (args, r.output)
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "b.json").exists()  # nothing half-written
