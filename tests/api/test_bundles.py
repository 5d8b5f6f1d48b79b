"""Transaction and batch Bundles over real HTTP: urn:uuid references, atomicity, conditional logic."""

from __future__ import annotations

import uuid

NHS = "https://fhir.nhs.uk/Id/nhs-number"
SNOMED = "http://snomed.info/sct"


def _sys(uid: str) -> str:
    return f"https://joinedup.example/test/bundles/{uid}"


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _patient(uid: str, value: str, **extra) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": _sys(uid), "value": value}],
        "name": [{"family": f"Bundle{uid}"}],
        **extra,
    }


def _condition(uid: str, subject: str, value: str = "c") -> dict:
    return {
        "resourceType": "Condition",
        "identifier": [{"system": _sys(uid), "value": value}],
        "code": {"coding": [{"system": SNOMED, "code": "38341003"}]},
        "subject": {"reference": subject},
    }


def _observation(uid: str, subject: str, value: str = "o") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": _sys(uid), "value": value}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": subject},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def _post(url: str, res: dict, full_url: str | None = None, **request) -> dict:
    e = {"resource": res, "request": {"method": "POST", "url": url, **request}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def _count(api, rtype: str, uid: str) -> int:
    r = api.get(f"/fhir/{rtype}", params={"identifier": f"{_sys(uid)}|", "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _tx(entries: list[dict], btype: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": btype, "entry": entries}


def test_transaction_with_urn_uuid_references(api, uid):
    p_urn = _urn()
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "p"), p_urn),
            _post("Condition", _condition(uid, p_urn), _urn()),
            _post("Observation", _observation(uid, p_urn), _urn()),
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["resourceType"] == "Bundle" and out["type"] == "transaction-response"
    assert len(out["entry"]) == 3
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses
    loc = out["entry"][0]["response"]["location"]
    assert loc.startswith("Patient/") and loc.endswith("/_history/1")
    pid = loc.split("/")[1]
    assert out["entry"][0]["response"]["etag"] == 'W/"1"'
    assert out["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert out["entry"][2]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    # stored with the rewritten reference, and searchable by it
    cid = out["entry"][1]["resource"]["id"]
    assert api.get(f"/fhir/Condition/{cid}").json()["subject"]["reference"] == f"Patient/{pid}"
    found = api.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [out["entry"][2]["resource"]["id"]]
    assert api.get(f"/fhir/Patient/{pid}").json()["identifier"][0]["value"] == "p"


def test_transaction_is_atomic_on_bad_nhs_number(api, uid):
    p_urn = _urn()
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "p"), p_urn),
            _post("Condition", _condition(uid, p_urn), _urn()),
            _post(
                "Patient", _patient(uid, "bad", identifier=[{"system": NHS, "value": "9434765918"}]), _urn()
            ),
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[2]" in body["issue"][0]["diagnostics"]
    assert "modulus 11" in body["issue"][0]["diagnostics"]
    assert _count(api, "Patient", uid) == 0
    assert _count(api, "Condition", uid) == 0


def test_transaction_is_atomic_on_unknown_element(api, uid):
    p_urn = _urn()
    bad = _observation(uid, p_urn)
    bad["shoeSize"] = 42
    r = api.post("/fhir", json=_tx([_post("Patient", _patient(uid, "p"), p_urn), _post("Observation", bad)]))
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"] and "shoeSize" in issue["diagnostics"]
    assert _count(api, "Patient", uid) == 0
    assert _count(api, "Observation", uid) == 0


def test_transaction_unknown_type_names_the_entry(api, uid):
    r = api.post(
        "/fhir", json=_tx([_post("Patient", _patient(uid, "p")), _post("Shoe", {"resourceType": "Shoe"})])
    )
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Bundle.entry[1].request.url"]
    assert _count(api, "Patient", uid) == 0


def test_transaction_if_match_failure_rolls_back(api, uid):
    created = api.post("/fhir/Patient", json=_patient(uid, "existing")).json()
    pid = created["id"]
    api.put(f"/fhir/Patient/{pid}", json=dict(created, gender="male"))
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "new")),
            {
                "resource": dict(created, gender="female"),
                "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
            },
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 412, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|new"}).json()["total"] == 0
    cur = api.get(f"/fhir/Patient/{pid}").json()
    assert cur["meta"]["versionId"] == "2" and cur["gender"] == "male"
    # with the right version the same transaction succeeds
    bundle["entry"][1]["request"]["ifMatch"] = 'W/"2"'
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "200"]
    assert api.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"


def test_transaction_conditional_create(api, uid):
    existing = api.post("/fhir/Patient", json=_patient(uid, "known")).json()["id"]
    p_urn = _urn()
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "known"), p_urn, ifNoneExist=f"identifier={_sys(uid)}|known"),
            _post("Condition", _condition(uid, p_urn), _urn()),
            _post("Patient", _patient(uid, "fresh"), _urn(), ifNoneExist=f"identifier={_sys(uid)}|fresh"),
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"].startswith("200")
    assert entries[0]["response"]["location"].startswith(f"Patient/{existing}/")
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{existing}"
    assert entries[2]["response"]["status"].startswith("201")
    assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|known"}).json()["total"] == 1
    # running it again creates nothing more than a second Condition
    r = api.post("/fhir", json=bundle)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "201", "200"]
    assert _count(api, "Patient", uid) == 2
    assert _count(api, "Condition", uid) == 2


def test_transaction_conditional_reference(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid, "ref")).json()["id"]
    bundle = _tx([_post("Condition", _condition(uid, f"Patient?identifier={_sys(uid)}|ref"))])
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    cid = r.json()["entry"][0]["resource"]["id"]
    assert api.get(f"/fhir/Condition/{cid}").json()["subject"]["reference"] == f"Patient/{pid}"
    # a conditional reference that matches nothing fails the whole transaction
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "other")),
            _post("Condition", _condition(uid, f"Patient?identifier={_sys(uid)}|nobody", "c2")),
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "nobody" in r.json()["issue"][0]["diagnostics"]
    assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|other"}).json()["total"] == 0


def test_transaction_put_delete_and_get(api, uid):
    victim = api.post("/fhir/Patient", json=_patient(uid, "victim")).json()["id"]
    keep = api.post("/fhir/Patient", json=_patient(uid, "keep")).json()["id"]
    rid = f"tx-{uid}"
    bundle = _tx(
        [
            {"request": {"method": "GET", "url": f"Patient/{keep}"}},
            {"resource": _patient(uid, "put", id=rid), "request": {"method": "PUT", "url": f"Patient/{rid}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{victim}"}},
        ]
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"].startswith("200")
    assert entries[0]["resource"]["id"] == keep
    assert entries[1]["response"]["status"].startswith("201")
    assert entries[2]["response"]["status"].startswith("204")
    assert api.get(f"/fhir/Patient/{rid}").status_code == 200
    assert api.get(f"/fhir/Patient/{victim}").status_code == 410


def test_batch_reports_each_entry(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid, "there")).json()["id"]
    bundle = _tx(
        [
            _post("Patient", _patient(uid, "good")),
            _post("Patient", _patient(uid, "bad", identifier=[{"system": NHS, "value": "9434765918"}])),
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": f"Patient?identifier={_sys(uid)}|there"}},
            {"request": {"method": "GET", "url": f"Patient/missing-{uid}"}},
            _post("Observation", {"resourceType": "Observation"}),
        ],
        btype="batch",
    )
    r = api.post("/fhir", json=bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    e = out["entry"]
    assert len(e) == 6
    assert e[0]["response"]["status"].startswith("201")
    assert e[1]["response"]["status"].startswith("422")
    assert e[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert "modulus 11" in e[1]["response"]["outcome"]["issue"][0]["diagnostics"]
    assert e[2]["response"]["status"].startswith("200") and e[2]["resource"]["id"] == pid
    assert e[3]["response"]["status"].startswith("200")
    assert e[3]["resource"]["type"] == "searchset" and e[3]["resource"]["total"] == 1
    assert e[3]["resource"]["entry"][0]["resource"]["id"] == pid
    assert e[4]["response"]["status"].startswith("404")
    assert e[4]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert e[5]["response"]["status"].startswith("422")
    assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|good"}).json()["total"] == 1
    assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|bad"}).json()["total"] == 0


def test_bad_bundles(api, uid):
    r = api.post("/fhir", json={"resourceType": "Bundle", "type": "collection", "entry": []})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.type"]
    r = api.post("/fhir", json=_patient(uid, "x"))
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = api.post("/fhir", json=_tx([{"resource": _patient(uid, "x")}]))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[0].request"]
    r = api.post("/fhir", json=_tx([{"request": {"method": "POST", "url": "Patient"}}]))
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource"]
    assert _count(api, "Patient", uid) == 0
