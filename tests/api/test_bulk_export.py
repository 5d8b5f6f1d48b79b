"""Bulk Data $export over real HTTP: async kick-off, status polling, manifest, NDJSON download."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

ASYNC = {"Prefer": "respond-async"}


def _sys(uid: str) -> str:
    return f"https://joinedup.example/test/export/{uid}"


def _instant(delta_seconds: float = 0.0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _kickoff(api, path: str = "/fhir/$export", **params) -> str:
    r = api.get(path, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    loc = r.headers["content-location"]
    assert "/fhir/$export-status/" in loc
    return loc


def _wait(api, status_url: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while True:
        r = api.get(status_url)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json")
            return r.json()
        assert r.status_code == 202, r.text
        assert time.time() < deadline, "export did not finish"
        time.sleep(0.1)


def _download(api, manifest: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in manifest["output"]:
        r = api.get(item["url"])
        assert r.status_code == 200, r.text
        assert "ndjson" in r.headers["content-type"]
        lines = r.text.splitlines()
        assert len(lines) == item["count"]
        resources = [json.loads(line) for line in lines]
        assert all(res["resourceType"] == item["type"] for res in resources)
        out[item["type"]] = resources
    return out


@pytest.fixture()
def seeded(api, uid):
    """A Patient with a Condition and an Organization, all unique to this test."""
    org = api.put(
        f"/fhir/Organization/org-{uid}",
        json={"resourceType": "Organization", "id": f"org-{uid}", "name": f"Org {uid}"},
    )
    assert org.status_code == 201
    pid = api.post(
        "/fhir/Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": _sys(uid), "value": "p"}],
            "managingOrganization": {"reference": f"Organization/org-{uid}"},
        },
    ).json()["id"]
    cid = api.post(
        "/fhir/Condition",
        json={
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"text": f"cond {uid}"},
        },
    ).json()["id"]
    return {"patient": pid, "condition": cid, "organization": f"org-{uid}"}


def test_system_export_round_trip(api, seeded):
    status_url = _kickoff(api)
    manifest = _wait(api, status_url)
    assert manifest["requiresAccessToken"] is True
    assert manifest["transactionTime"]
    assert "$export" in manifest["request"]
    assert manifest["error"] == []
    types = [o["type"] for o in manifest["output"]]
    assert len(types) == len(set(types))
    assert {"Patient", "Condition", "Organization"} <= set(types)
    for o in manifest["output"]:
        assert o["url"].endswith(f"/{o['type']}.ndjson")
        assert o["count"] > 0
    files = _download(api, manifest)
    assert seeded["patient"] in {p["id"] for p in files["Patient"]}
    assert seeded["condition"] in {c["id"] for c in files["Condition"]}
    assert seeded["organization"] in {o["id"] for o in files["Organization"]}
    # every line is a complete resource with its version
    assert all(res.get("meta", {}).get("versionId") for rs in files.values() for res in rs)


def test_type_filter(api, seeded):
    manifest = _wait(api, _kickoff(api, _type="Patient,Condition"))
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Condition"}
    files = _download(api, manifest)
    assert seeded["condition"] in {c["id"] for c in files["Condition"]}


def test_since(api, uid):
    since = _instant(-0.5)
    pid = api.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "identifier": [{"system": _sys(uid), "value": "since"}]},
    ).json()["id"]
    manifest = _wait(api, _kickoff(api, _type="Patient", _since=since))
    files = _download(api, manifest)
    ids = {p["id"] for p in files["Patient"]}
    assert pid in ids
    assert all(p["meta"]["lastUpdated"] >= since[:19] for p in files["Patient"])
    future = _wait(api, _kickoff(api, _since="2999-01-01T00:00:00Z"))
    assert future["output"] == []


def test_patient_level_export(api, seeded):
    manifest = _wait(api, _kickoff(api, "/fhir/Patient/$export"))
    types = {o["type"] for o in manifest["output"]}
    assert {"Patient", "Condition"} <= types
    assert "Organization" not in types and "Practitioner" not in types
    files = _download(api, manifest)
    assert seeded["condition"] in {c["id"] for c in files["Condition"]}
    patients = {p["id"] for p in files["Patient"]}
    for rtype, resources in files.items():
        if rtype == "Patient":
            continue
        for res in resources:
            # in an exported patient's compartment (Bulk Data: Patient-level export), through whichever element
            # the R4 CompartmentDefinition names: subject, patient, Coverage.beneficiary, Appointment.participant...
            refs = _references(res)
            assert any(ref.removeprefix("Patient/") in patients for ref in refs), (rtype, res["id"], refs)


def _references(value) -> list[str]:
    """Every Reference.reference in a resource, at any depth."""
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_kickoff_needs_prefer_respond_async(api):
    r = api.get("/fhir/$export")
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "respond-async" in r.json()["issue"][0]["diagnostics"]
    assert api.get("/fhir/Patient/$export").status_code == 400


@pytest.mark.parametrize(
    "params", [{"_type": "Patient,Shoe"}, {"_since": "last tuesday"}, {"_outputFormat": "text/csv"}]
)
def test_bad_kickoff_parameters(api, params):
    r = api.get("/fhir/$export", params=params, headers=ASYNC)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("user", ["gp", "analyst"])
def test_non_system_user_is_refused(server, user):
    with server.client(user) as c:
        r = c.get("/fhir/$export", headers=ASYNC)
        assert r.status_code == 403, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert c.get("/fhir/Patient/$export", headers=ASYNC).status_code == 403


def test_other_users_cannot_see_a_job(server, api):
    status_url = _kickoff(api, _type="Organization")
    manifest = _wait(api, status_url)
    with server.client("gp") as gp:
        assert gp.get(status_url).status_code == 403
        for o in manifest["output"]:
            assert gp.get(o["url"]).status_code == 403
        assert gp.delete(status_url).status_code == 403
    assert api.get(status_url).status_code == 200


def test_delete_job(api):
    status_url = _kickoff(api, _type="Patient")
    manifest = _wait(api, status_url)
    assert manifest["output"]
    file_url = manifest["output"][0]["url"]
    r = api.delete(status_url)
    assert r.status_code == 202
    gone = api.get(status_url)
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
    assert api.get(file_url).status_code == 404


def test_unknown_job_and_file(api):
    assert api.get("/fhir/$export-status/0000deadbeef").status_code == 404
    manifest_url = _kickoff(api, _type="Patient")
    _wait(api, manifest_url)
    job = manifest_url.rsplit("/", 1)[1]
    assert api.get(f"/fhir/$export-file/{job}/Shoe.ndjson").status_code == 404
    assert api.get(f"/fhir/$export-file/{job}/..%2F..%2Fsecret.ndjson").status_code == 404
