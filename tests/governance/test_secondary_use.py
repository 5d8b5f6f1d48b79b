"""National Data Opt-out, de-identified extracts, small-number suppression, subject access reports (CLI)."""

from __future__ import annotations

import json

import orjson
import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.fhir.errors import FhirError
from joinedup.fhir.nhs_number import NHS_NUMBER_SYSTEM, check_digit
from joinedup.governance import deid
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM
from joinedup.governance.identity import SYSTEM, Principal

CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]


def nhs_number(seed: int) -> str:
    """A valid NHS number in the 999 test range."""
    n = 999000000 + seed
    while True:
        first = str(n)
        digit = check_digit(first)
        if digit is not None:
            return first + str(digit)
        n += 1


def _person(api, uid: str, tag: str, nhs: str, *, opted_out: bool = False) -> str:
    pid = f"su-{tag}-{uid}"
    r = api.put(f"/fhir/Patient/{pid}", json={
        "resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1948-07-21",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
        "name": [{"family": f"Secret{tag}", "given": ["Ada"]}], "telecom": [{"system": "phone", "value": "0113 4960000"}],
        "address": [{"line": ["1 Private Road"], "city": "Leeds", "postalCode": "LS6 2AB"}],
        "generalPractitioner": [{"reference": "Organization/practice-1"}],
        "text": {"status": "generated", "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\">Ada Secret{tag}</div>"}})
    assert r.status_code in (200, 201), r.text
    api.post("/fhir/Condition", json={
        "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"}, "recordedDate": "2021-03-14",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}], "text": "T2DM free text"},
        "note": [{"text": f"Lives with daughter, Secret{tag} family"}]})
    if opted_out:
        api.post("/fhir/Consent", json={
            "resourceType": "Consent", "status": "active", "category": CATEGORY,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]},
            "policyRule": {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE}]},
            "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
    return pid


@pytest.fixture()
def people(api, uid) -> dict:
    seed = int(uid[:6], 16) % 900000
    return {"in": _person(api, uid, "in", nhs_number(seed)),
            "out": _person(api, uid, "out", nhs_number(seed + 1000), opted_out=True),
            "nhs_in": nhs_number(seed)}


def test_suppression_defaults_and_configuration(monkeypatch):
    assert [deid.suppress(n) for n in (0, 1, 5, 7, 8, 12, 13, 17, 18, 1234)] == \
        [0, "*", "*", "*", 10, 10, 15, 15, 20, 1235]
    assert deid.suppress(9, low=1, high=10) == "*"
    assert deid.suppress(12, round_to=10) == 10 and deid.suppress(12, round_to=1) == 12
    monkeypatch.setenv("JOINEDUP_SUPPRESS_HIGH", "9")
    assert deid.suppress(9) == "*" and deid.suppress(10) == 10
    assert deid.suppress_table({"a": 3, "b": 40}) == {"a": "*", "b": 40}
    with pytest.raises(ValueError):
        deid.suppress(-1)


def test_deidentify_rules():
    pseudo = deid.Pseudonymiser("k1")
    p = {"resourceType": "Patient", "id": "p1", "meta": {"source": "Organization/o1"},
         "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9990000018"}], "name": [{"family": "Smith"}],
         "birthDate": "1950-04-12", "deceasedDateTime": "2020-05-06T10:00:00Z",
         "address": [{"line": ["1 High St"], "postalCode": "LS1 4AP"}],
         "generalPractitioner": [{"reference": "Practitioner/dr1", "display": "Dr Jones"},
                                 {"reference": "Organization/o1"}],
         "text": {"status": "generated", "div": "<div>Smith</div>"}}
    out = deid.deidentify(p, pseudo)
    text = json.dumps(out)
    for secret in ("p1", "Smith", "9990000018", "High St", "Jones", "dr1", "4AP"):
        assert secret not in text.replace(out["id"], "")
    assert out["birthDate"] == "1950" and out["deceasedDateTime"] == "2020-05"
    assert out["address"] == [{"postalCode": "LS1"}]
    assert out["id"] == pseudo("Patient/p1") and out["id"] == deid.Pseudonymiser("k1")("Patient/p1")
    assert out["id"] != deid.Pseudonymiser("k2")("Patient/p1")  # keyed
    assert {"reference": "Organization/o1"} in out["generalPractitioner"]  # organisations are not people
    assert deid.deidentify(p, pseudo, birth_precision="month")["birthDate"] == "1950-04"
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
           "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}],
                    "text": "home BP by daughter"},
           "effectiveDateTime": "2023-05-06T10:00:00Z", "valueQuantity": {"value": 141, "unit": "mmHg"},
           "note": [{"text": "anxious"}], "valueString": "x"}
    o = deid.deidentify(obs, pseudo)
    assert o["subject"]["reference"] == f"Patient/{out['id']}"
    assert o["effectiveDateTime"] == "2023-05" and o["valueQuantity"]["value"] == 141
    assert o["code"] == {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic"}]}
    assert "note" not in o and "valueString" not in o


def test_extract_excludes_opt_outs_and_identifiers(server, people, tmp_path):
    gate = server.gate
    records = list(gate.deidentified_records(SYSTEM, purpose="research", key="test-secret"))
    ids = {r[0]["id"] for r in records}
    pseudo = deid.Pseudonymiser("test-secret")
    assert pseudo(f"Patient/{people['in']}") in ids
    assert pseudo(f"Patient/{people['out']}") not in ids
    blob = orjson.dumps(records).decode()
    for secret in (people["in"], people["out"], "Secretin", "Secretout", people["nhs_in"], "Private Road",
                   "0113 4960000", "T2DM free text", "Lives with daughter"):
        assert secret not in blob
    # direct care is not affected: case-finding over the population includes the opted-out person
    direct = {p.id for p, _ in gate.records(SYSTEM, purpose="case-finding")}
    assert people["out"] in direct and people["in"] in direct
    planning = {p.id for p, _ in gate.records(SYSTEM, purpose="planning")}
    assert people["out"] not in planning and people["in"] in planning


def test_extract_is_for_analysts_and_professionals_get_their_own_population(server, people):
    gate = server.gate
    analyst = Principal("analyst", "analyst")
    first = next(iter(gate.deidentified_records(analyst, purpose="planning", key="k")))
    assert first[0]["resourceType"] == "Patient"
    with pytest.raises(FhirError) as err:
        next(iter(gate.records(analyst, purpose="case-finding")))
    assert err.value.status == 403
    gp = Principal("gp", "gp", practitioner_id="gp-1", organization_id="practice-1")
    with pytest.raises(FhirError):
        next(iter(gate.deidentified_records(gp, purpose="research")))
    stranger = Principal("gp2", "gp", practitioner_id="gp-2", organization_id=f"nowhere-{people['in']}")
    assert not {p.id for p, _ in gate.records(stranger, purpose="case-finding")} & {people["in"], people["out"]}
    mine = {p.id for p, _ in gate.records(gp, purpose="case-finding")}
    assert {people["in"], people["out"]} <= mine


def _run(server, *args):
    return CliRunner().invoke(app, list(args), env={"JOINEDUP_DATABASE_URL": server.db_url,
                                                    "JOINEDUP_SECRET_KEY": "test-secret", "COLUMNS": "200"})


def test_extract_cli(server, people, tmp_path):
    r = _run(server, "extract", "--out", str(tmp_path / "x"))
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "x" / "Patient.ndjson").read_text().splitlines()
    ids = {json.loads(line)["id"] for line in lines}
    pseudo = deid.Pseudonymiser("test-secret")
    assert pseudo(f"Patient/{people['in']}") in ids and pseudo(f"Patient/{people['out']}") not in ids
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    for v in summary["published"]["people_by_sex"].values():
        assert v == "*" or v % 5 == 0
    assert _run(server, "extract", "--out", str(tmp_path / "y"), "--purpose", "marketing").exit_code == 2
    (tmp_path / "file").write_text("x")
    assert _run(server, "extract", "--out", str(tmp_path / "file")).exit_code == 2


def test_subject_access_report_cli(server, people, tmp_path):
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Patient/{people['in']}").status_code == 200
    server.gate.flush_audit()
    out = tmp_path / "sar.json"
    r = _run(server, "sar", people["nhs_in"], "--out", str(out))
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["nhs_number"] == people["nhs_in"]
    rec = report["records"][0]
    assert rec["patient"] == f"Patient/{people['in']}"
    assert {e["resourceType"] for e in rec["entries"]} >= {"Patient", "Condition"}
    assert any(line["who"] == "gp" and line["outcome"] == "allowed" for line in rec["access_log"])
    stdout = _run(server, "sar", people["nhs_in"][:3] + " " + people["nhs_in"][3:])
    assert stdout.exit_code == 0 and json.loads(stdout.stdout)["nhs_number"] == people["nhs_in"]
    for bad, words in [("12345", "10 digits"), ("999000001X", "10 digits"),
                       (people["nhs_in"][:9] + str((int(people["nhs_in"][9]) + 1) % 10), "check digit")]:
        r = _run(server, "sar", bad)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), r.output
        assert "Traceback" not in r.output
    unknown = nhs_number(int(people["nhs_in"][3:9]) + 777)
    r = _run(server, "sar", unknown)
    assert r.exit_code == 2 and "no person" in r.output


def test_privacy_reviews_cli(server, people):
    from joinedup.governance.accounts import add_user
    from joinedup.governance.service import grant_break_glass

    add_user(server.gate, name="cli-cons", role="consultant", practitioner="cli-c", organization="cli-h",
             replace=True)
    add_user(server.gate, name="cli-po", role="privacy-officer", replace=True)
    cons = Principal("cli-cons", "consultant", practitioner_id="cli-c", organization_id="cli-h")
    grant = grant_break_glass(server.gate, cons, patient_id=people["in"], reason_category="emergency-treatment",
                              reason="Seen in ED after a fall")
    r = _run(server, "privacy", "reviews")
    assert r.exit_code == 0 and grant["id"] in r.output
    assert _run(server, "privacy", "reviews", "--status", "odd").exit_code == 2
    r = _run(server, "privacy", "review", grant["id"], "--outcome", "appropriate", "--reviewer", "cli-po")
    assert r.exit_code == 0, r.output
    assert grant["id"] not in _run(server, "privacy", "reviews").output
    again = _run(server, "privacy", "review", grant["id"], "--outcome", "appropriate", "--reviewer", "cli-po")
    assert again.exit_code == 2 and "already reviewed" in again.output
    assert _run(server, "privacy", "review", grant["id"], "--outcome", "appropriate",
                "--reviewer", "nobody").exit_code == 2
    from joinedup.store import schema

    u = schema.app_user
    with server.gate.store_for_tests.writing() as conn:
        conn.execute(u.update().where(u.c.name.in_(["cli-cons", "cli-po"])).values(active=False))
