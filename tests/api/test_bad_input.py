"""Bad input over real HTTP: every failure is an OperationOutcome with the right status, never a traceback."""

from __future__ import annotations

import pytest

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def outcome(r, status: int) -> dict:
    """Check r is an OperationOutcome error with `status`; return its first issue."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/fhir+json"), r.headers["content-type"]
    assert "Traceback" not in r.text and "<html" not in r.text.lower()
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert issue["code"]
    assert issue["diagnostics"]
    return issue


def _patient(uid: str, **extra) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": f"https://joinedup.example/test/bad/{uid}", "value": "x"}],
        **extra,
    }


def _none_stored(api, uid: str) -> bool:
    r = api.get(
        "/fhir/Patient",
        params={"identifier": f"https://joinedup.example/test/bad/{uid}|", "_summary": "count"},
    )
    return r.json()["total"] == 0


def test_invalid_json(api, uid):
    r = api.post(
        "/fhir/Patient",
        content=b'{"resourceType": "Patient", ',
        headers={"Content-Type": "application/fhir+json"},
    )
    issue = outcome(r, 400)
    assert "JSON" in issue["diagnostics"]
    outcome(
        api.put(f"/fhir/Patient/x-{uid}", content=b"not json", headers={"Content-Type": "application/json"}),
        400,
    )
    outcome(api.post("/fhir", content=b"{", headers={"Content-Type": "application/fhir+json"}), 400)


def test_json_array_body(api, uid):
    outcome(api.post("/fhir/Patient", json=[_patient(uid)]), 400)
    outcome(api.put(f"/fhir/Patient/x-{uid}", json=[_patient(uid, id=f"x-{uid}")]), 400)
    outcome(api.post("/fhir/Patient", json="Patient"), 400)
    outcome(api.post("/fhir", json=[]), 400)
    assert _none_stored(api, uid)


def test_unknown_resource_type_in_url(api, uid):
    issue = outcome(api.get("/fhir/Shoe"), 404)
    assert "Shoe" in issue["diagnostics"]
    outcome(api.get(f"/fhir/Shoe/{uid}"), 404)
    outcome(api.get(f"/fhir/Shoe/{uid}/_history"), 404)
    outcome(api.get("/fhir/Shoe/_history"), 404)
    outcome(api.delete(f"/fhir/Shoe/{uid}"), 404)
    outcome(api.get("/fhir/patient"), 404)  # types are case-sensitive
    r = api.post("/fhir/Shoe", json={"resourceType": "Shoe"})
    assert r.status_code in (400, 404)
    outcome(r, r.status_code)


def test_unknown_resource_type_in_body(api, uid):
    issue = outcome(api.post("/fhir/Patient", json={"resourceType": "Shoe"}), 400)
    assert "Shoe" in issue["diagnostics"]
    issue = outcome(api.put(f"/fhir/Shoe/x-{uid}", json={"resourceType": "Shoe", "id": f"x-{uid}"}), 400)
    assert "Shoe" in issue["diagnostics"]
    outcome(api.post("/fhir/Patient", json={"name": [{"family": "NoType"}]}), 400)


def test_resource_type_mismatch(api, uid):
    issue = outcome(
        api.post(
            "/fhir/Patient", json={"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
        ),
        400,
    )
    assert issue["expression"] == ["resourceType"]
    outcome(
        api.put(
            f"/fhir/Patient/x-{uid}",
            json={"resourceType": "Observation", "id": f"x-{uid}", "status": "final", "code": {"text": "x"}},
        ),
        400,
    )
    assert api.get(f"/fhir/Observation/x-{uid}").status_code == 404


def test_id_mismatch_on_put(api, uid):
    issue = outcome(api.put(f"/fhir/Patient/a-{uid}", json=_patient(uid, id=f"b-{uid}")), 400)
    assert issue["expression"] == ["Patient.id"]
    outcome(api.put(f"/fhir/Patient/a-{uid}", json=_patient(uid)), 400)  # no id in the body
    assert api.get(f"/fhir/Patient/a-{uid}").status_code == 404
    assert api.get(f"/fhir/Patient/b-{uid}").status_code == 404


@pytest.mark.parametrize(
    "extra,where",
    [
        ({"birthDate": "3rd of May"}, "Patient.birthDate"),
        ({"shoeSize": 42}, "Patient.shoeSize"),
        ({"name": [{"family": ["not", "a", "string"]}]}, "Patient.name[0].family"),
        ({"active": "perhaps"}, "Patient.active"),
    ],
)
def test_invalid_element_is_422_naming_it(api, uid, extra, where):
    issue = outcome(api.post("/fhir/Patient", json=_patient(uid, **extra)), 422)
    assert issue["expression"] == [where]
    assert where in issue["diagnostics"]
    assert _none_stored(api, uid)


def test_invalid_id_is_refused(api, uid):
    outcome(api.put("/fhir/Patient/bad_id!", json=_patient(uid, id="bad_id!")), 422)


def test_nhs_number_failing_modulus_11(api, uid):
    res = _patient(uid)
    res["identifier"] = [{"system": NHS, "value": "9434765918"}] + res["identifier"]
    issue = outcome(api.post("/fhir/Patient", json=res), 422)
    assert issue["expression"] == ["Patient.identifier[0]"]
    assert "9434765918" in issue["diagnostics"]
    assert _none_stored(api, uid)
    # on update too
    rid = f"nhs-{uid}"
    outcome(api.put(f"/fhir/Patient/{rid}", json=dict(res, id=rid)), 422)
    # valid one accepted
    res["identifier"][0]["value"] = "9434765919"
    assert api.post("/fhir/Patient", json=res).status_code == 201


def test_nhs_number_failing_inside_transaction(api, uid):
    res = _patient(uid)
    res["identifier"].append({"system": NHS, "value": "9434765918"})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(uid), "request": {"method": "POST", "url": "Patient"}},
            {"resource": res, "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    issue = outcome(api.post("/fhir", json=bundle), 422)
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert issue["expression"] == ["Patient.identifier[1]"]
    assert _none_stored(api, uid)


@pytest.mark.parametrize(
    "params",
    [
        {"birthdate": "yesterday"},
        {"birthdate": "2023-13-01"},
        {"birthdate": "ge"},
        {"_lastUpdated": "gtsoon"},
        {"_count": "ten"},
        {"_count": "-1"},
        {"_offset": "x"},
        {"_sort": "shoe-size"},
        {"_sort": "-nothing"},
        {"_include": "Patient:shoe"},
        {"_include": "nonsense"},
        {"_include": "Patient:family"},
        {"_revinclude": "Observation"},
        {"_summary": "maybe"},
        {"_total": "lots"},
        {"gender:missing": "perhaps"},
        {"family:fuzzy": "x"},
        {"gender:below": "x"},
        {"general-practitioner:identifier": "x|y"},
    ],
)
def test_bad_search_values_are_400(api, params):
    issue = outcome(api.get("/fhir/Patient", params=params), 400)
    assert issue["diagnostics"]


def test_chained_search_is_refused_not_silently_ignored(api):
    # ignoring a chained filter would widen the result to every Patient; it must be refused
    issue = outcome(api.get("/fhir/Patient", params={"general-practitioner.name": "x"}), 400)
    assert "general-practitioner.name" in issue["diagnostics"]
    outcome(api.get("/fhir/Patient", params={"_has:Observation:subject:code": "1234-5"}), 400)


def test_bad_quantity_and_date_values(api):
    outcome(api.get("/fhir/Observation", params={"value-quantity": "lots"}), 400)
    outcome(api.get("/fhir/Observation", params={"date": "2023-02-30"}), 400)
    outcome(api.get("/fhir/Observation", params={"subject": ""}), 400)


def test_strict_handling_refuses_unknown_parameter(api):
    issue = outcome(
        api.get("/fhir/Patient", params={"shoe-size": "9"}, headers={"Prefer": "handling=strict"}), 400
    )
    assert "shoe-size" in issue["diagnostics"]


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/xml", "application/fhir+xml", "application/x-www-form-urlencoded"]
)
def test_wrong_content_type_is_415(api, uid, ctype):
    import json

    r = api.post("/fhir/Patient", content=json.dumps(_patient(uid)).encode(), headers={"Content-Type": ctype})
    outcome(r, 415)
    outcome(api.put(f"/fhir/Patient/x-{uid}", content=b"<Patient/>", headers={"Content-Type": ctype}), 415)
    assert _none_stored(api, uid)


def test_format_xml_is_406(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid)).json()["id"]
    outcome(api.get("/fhir/Patient", params={"_format": "xml"}), 406)
    outcome(api.get(f"/fhir/Patient/{pid}", params={"_format": "application/fhir+xml"}), 406)
    assert api.get(f"/fhir/Patient/{pid}", params={"_format": "json"}).status_code == 200
    assert (
        api.get("/fhir/Patient", params={"_id": pid, "_format": "application/fhir+json"}).status_code == 200
    )


def test_no_token_is_401_with_www_authenticate(server):
    with server.client(None) as anon:
        for r in (
            anon.get("/fhir/Patient"),
            anon.get("/fhir/Patient/x"),
            anon.post("/fhir/Patient", json={}),
            anon.post("/fhir", json={}),
            anon.get("/fhir/$export", headers={"Prefer": "respond-async"}),
        ):
            issue = outcome(r, 401)
            assert issue["code"] == "login"
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_bad_token_is_401(server):
    with server.client(None) as anon:
        r = anon.get("/fhir/Patient", headers={"Authorization": "Bearer ju_not-a-real-token"})
        outcome(r, 401)
        assert "www-authenticate" in r.headers
        r = anon.get("/fhir/Patient", headers={"Authorization": "Basic YWRtaW46YWRtaW4="})
        outcome(r, 401)


def test_unknown_route_is_404_outcome(api):
    issue = outcome(api.get("/no/such/place"), 404)
    assert issue["code"] == "not-found"
    outcome(api.get("/fhir/Patient/x/y/z/w"), 404)


def test_wrong_method_is_outcome(api):
    r = api.post("/fhir/metadata", json={})
    assert r.status_code in (400, 404, 405)
    outcome(r, r.status_code)
    r = api.patch("/fhir/Patient/x", json={})
    assert r.status_code in (404, 405)
    outcome(r, r.status_code)


def test_bad_version_id(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid)).json()["id"]
    outcome(api.get(f"/fhir/Patient/{pid}/_history/one"), 400)
    outcome(api.get(f"/fhir/Patient/{pid}/_history/2"), 404)


def test_bad_history_parameters(api):
    outcome(api.get("/fhir/Patient/_history", params={"_count": "many"}), 400)
    outcome(api.get("/fhir/_history", params={"_since": "last week"}), 400)


def test_bad_if_none_exist(api, uid):
    outcome(api.post("/fhir/Patient", json=_patient(uid), headers={"If-None-Exist": "shoe-size=9"}), 400)
    assert _none_stored(api, uid)
