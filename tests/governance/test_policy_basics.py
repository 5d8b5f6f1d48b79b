"""The policy decision point seen over HTTP: who may read what, with explanations on refusal."""

from __future__ import annotations

import pytest

SELF = "self-1"


def _refused(r) -> str:
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["code"] == "forbidden"
    assert issue["diagnostics"].startswith("Access refused")
    return issue["diagnostics"]


def _obs(pid: str, uid: str, text: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": f"https://joinedup.example/test/policy/{uid}", "value": text}],
        "code": {
            "coding": [{"system": "https://joinedup.example/test/code", "code": f"c-{uid}"}],
            "text": text,
        },
        "subject": {"reference": f"Patient/{pid}"},
    }


@pytest.fixture()
def world(api, uid) -> dict:
    """self-1 (the patient user's own record), another patient, and Observations for each."""
    r = api.put(
        f"/fhir/Patient/{SELF}",
        json={"resourceType": "Patient", "id": SELF, "name": [{"family": "Self", "given": ["Pat"]}]},
    )
    assert r.status_code in (200, 201)
    # registered with the gp user's practice (practice-1): a legitimate relationship for that user
    other = api.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": f"Other{uid}"}],
              "generalPractitioner": [{"reference": "Organization/practice-1"}]},
    ).json()["id"]
    own_obs = api.post("/fhir/Observation", json=_obs(SELF, uid, "own")).json()["id"]
    other_obs = api.post("/fhir/Observation", json=_obs(other, uid, "other")).json()["id"]
    cond = api.post(
        "/fhir/Condition",
        json={
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{other}"},
            "code": {"text": f"asthma {uid}"},
        },
    ).json()["id"]
    return {"other": other, "own_obs": own_obs, "other_obs": other_obs, "cond": cond}


def test_analyst_is_refused_with_an_explanation(server, world):
    with server.client("analyst") as analyst:
        text = _refused(analyst.get(f"/fhir/Patient/{world['other']}"))
        assert "analyst" in text and "de-identified" in text
        _refused(analyst.get("/fhir/Patient", params={"_id": world["other"]}))
        _refused(analyst.get("/fhir/Observation", params={"subject": f"Patient/{world['other']}"}))
        _refused(analyst.get(f"/fhir/Observation/{world['other_obs']}"))
        _refused(analyst.get(f"/fhir/Patient/{world['other']}/$everything"))
        _refused(analyst.get(f"/fhir/Patient/{world['other']}/_history"))
        _refused(analyst.post("/fhir/Patient", json={"resourceType": "Patient"}))


def test_patient_reads_own_record_only(server, world, uid):
    with server.client("pat") as pat:
        r = pat.get(f"/fhir/Patient/{SELF}")
        assert r.status_code == 200 and r.json()["id"] == SELF
        assert pat.get(f"/fhir/Observation/{world['own_obs']}").status_code == 200
        text = _refused(pat.get(f"/fhir/Patient/{world['other']}"))
        assert "own record" in text
        _refused(pat.get(f"/fhir/Observation/{world['other_obs']}"))
        _refused(pat.get(f"/fhir/Condition/{world['cond']}"))
        _refused(pat.get(f"/fhir/Patient/{world['other']}/$everything"))
        assert pat.get(f"/fhir/Patient/{SELF}/$everything").status_code == 200


def test_patient_search_returns_own_entries_only(server, world, uid):
    with server.client("pat") as pat:
        r = pat.get("/fhir/Observation", params={"code": f"https://joinedup.example/test/code|c-{uid}"})
        assert r.status_code == 200, r.text
        b = r.json()
        assert [e["resource"]["id"] for e in b["entry"]] == [world["own_obs"]]
        assert b["total"] == 1
        everything = pat.get("/fhir/Observation", params={"_count": 1000}).json()
        assert everything["entry"]
        assert all(e["resource"]["subject"]["reference"] == f"Patient/{SELF}" for e in everything["entry"])
        _refused(pat.get("/fhir/Observation", params={"subject": f"Patient/{world['other']}"}))
        patients = pat.get("/fhir/Patient", params={"_count": 1000}).json()
        assert [e["resource"]["id"] for e in patients["entry"]] == [SELF]
        # includes cannot leak another person's record
        inc = pat.get("/fhir/Patient", params={"_id": SELF, "_revinclude": "Observation:subject"}).json()
        included = {e["resource"]["id"] for e in inc["entry"] if e["search"]["mode"] == "include"}
        assert world["own_obs"] in included and world["other_obs"] not in included


def test_patient_cannot_write_clinical_entries(server, world, uid):
    with server.client("pat") as pat:
        _refused(
            pat.post(
                "/fhir/Condition",
                json={"resourceType": "Condition", "subject": {"reference": f"Patient/{SELF}"}},
            )
        )
        _refused(pat.post("/fhir/Observation", json=_obs(world["other"], uid, "sneaky")))
        _refused(pat.delete(f"/fhir/Observation/{world['other_obs']}"))
        # an Observation about themselves (e.g. a home blood pressure) is accepted
        r = pat.post("/fhir/Observation", json=_obs(SELF, uid, "home-bp"))
        assert r.status_code == 201, r.text


def test_gp_can_read_and_write_clinical_data(server, world, uid):
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Patient/{world['other']}").status_code == 200
        assert gp.get(f"/fhir/Observation/{world['other_obs']}").status_code == 200
        r = gp.get("/fhir/Condition", params={"subject": f"Patient/{world['other']}"})
        assert r.status_code == 200
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [world["cond"]]
        assert gp.get(f"/fhir/Patient/{world['other']}/$everything").status_code == 200
        r = gp.post("/fhir/Observation", json=_obs(world["other"], uid, "gp-entry"))
        assert r.status_code == 201
        # but not the audit trail, nor the directory's upkeep
        _refused(gp.get("/fhir/AuditEvent"))
        _refused(gp.post("/fhir/Organization", json={"resourceType": "Organization", "name": f"Org {uid}"}))
        # a directory entry is readable by any professional
        org = api_put_org(server, uid)
        assert gp.get(f"/fhir/Organization/{org}").status_code == 200


def api_put_org(server, uid: str) -> str:
    with server.client("admin") as api:
        r = api.put(
            f"/fhir/Organization/org-{uid}",
            json={"resourceType": "Organization", "id": f"org-{uid}", "name": f"Org {uid}"},
        )
        assert r.status_code in (200, 201)
    return f"org-{uid}"


def test_refusal_does_not_reveal_existence(server, uid):
    with server.client("analyst") as analyst:
        # the same refusal whether or not the record exists
        _refused(analyst.get(f"/fhir/Patient/does-not-exist-{uid}"))


def test_gp_without_a_relationship_is_refused_with_an_explanation(server, api, uid):
    stranger = api.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Stranger{uid}"}],
                                               "generalPractitioner": [{"reference": "Organization/elsewhere"}]}
                        ).json()["id"]
    obs = api.post("/fhir/Observation", json=_obs(stranger, uid, "stranger")).json()["id"]
    with server.client("gp") as gp:
        text = _refused(gp.get(f"/fhir/Patient/{stranger}"))
        assert "legitimate relationship" in text and "break-glass" in text
        _refused(gp.get(f"/fhir/Observation/{obs}"))
        _refused(gp.get("/fhir/Observation", params={"subject": f"Patient/{stranger}"}))
        _refused(gp.get(f"/fhir/Patient/{stranger}/$everything"))
        _refused(gp.post("/fhir/Observation", json=_obs(stranger, uid, "gp-entry")))
        # a search without a named patient simply does not show the stranger's entries
        r = gp.get("/fhir/Observation", params={"identifier": f"https://joinedup.example/test/policy/{uid}|"})
        assert r.status_code == 200 and r.json()["total"] == 0
