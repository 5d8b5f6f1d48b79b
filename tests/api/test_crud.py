"""FHIR REST conformance over real HTTP: CapabilityStatement, create/read/update/vread/history/delete."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _sys(uid: str) -> str:
    return f"https://joinedup.example/test/crud/{uid}"


def _patient(uid: str, value: str = "p1", **extra) -> dict:
    res = {
        "resourceType": "Patient",
        "identifier": [{"system": _sys(uid), "value": value}],
        "name": [{"family": f"Crud{uid}", "given": ["Ada"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
    }
    res.update(extra)
    return res


def _instant(delta_seconds: float = 0.0) -> str:
    t = datetime.now(UTC) + timedelta(seconds=delta_seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _is_outcome(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and body["issue"][0]["diagnostics"]
    return body


# -- CapabilityStatement -----------------------------------------------------------------------------


def test_capability_statement_needs_no_token(server):
    with server.client(None) as anon:
        r = anon.get("/fhir/metadata")
    assert r.status_code == 200
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement"
    assert cs["fhirVersion"] == "4.0.1"
    assert "application/fhir+json" in cs["format"]
    rest = cs["rest"][0]
    assert rest["mode"] == "server"
    assert {"transaction", "batch", "history-system"} <= {i["code"] for i in rest["interaction"]}
    assert "export" in {o["name"] for o in rest["operation"]}
    patient = next(res for res in rest["resource"] if res["type"] == "Patient")
    params = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert params["identifier"] == "token"
    assert params["birthdate"] == "date"
    assert params["family"] == "string"
    assert params["_id"] == "token" and params["_lastUpdated"] == "date"
    interactions = {i["code"] for i in patient["interaction"]}
    assert {
        "read",
        "vread",
        "update",
        "delete",
        "create",
        "search-type",
        "history-instance",
        "history-type",
    } <= interactions
    assert {"everything", "export"} <= {o["name"] for o in patient["operation"]}
    assert patient["versioning"] == "versioned"
    assert patient["conditionalCreate"] is True
    assert "Patient:general-practitioner" in patient["searchInclude"]
    observation = next(res for res in rest["resource"] if res["type"] == "Observation")
    assert {"code", "date", "subject", "patient", "value-quantity"} <= {
        p["name"] for p in observation["searchParam"]
    }


# -- create / read / update / vread ------------------------------------------------------------------


def test_create_returns_201_with_location_etag_and_meta(api, uid):
    r = api.post("/fhir/Patient", json=_patient(uid))
    assert r.status_code == 201, r.text
    body = r.json()
    pid = body["id"]
    assert pid
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert r.headers["location"].startswith(server_base(api))
    assert body["meta"]["versionId"] == "1"
    last = body["meta"]["lastUpdated"]
    assert abs(datetime.fromisoformat(last) - datetime.now(UTC)) < timedelta(minutes=5)
    assert body["name"][0]["family"] == f"Crud{uid}"

    got = api.get(f"/fhir/Patient/{pid}")
    assert got.status_code == 200
    assert got.headers["etag"] == 'W/"1"'
    assert got.json()["id"] == pid
    assert got.json()["identifier"][0]["value"] == "p1"
    assert got.json()["meta"]["lastUpdated"] == last


def server_base(client) -> str:
    return str(client.base_url).rstrip("/")


def test_server_assigns_id_ignoring_client_id_on_create(api, uid):
    r = api.post("/fhir/Patient", json=_patient(uid, id=f"client-{uid}"))
    assert r.status_code == 201
    assert r.json()["id"] != f"client-{uid}"
    assert api.get(f"/fhir/Patient/client-{uid}").status_code == 404


def test_update_with_if_match_versions_and_vread(api, uid):
    created = api.post("/fhir/Patient", json=_patient(uid)).json()
    pid = created["id"]
    changed = dict(created, name=[{"family": f"Crud{uid}", "given": ["Grace"]}])
    r = api.put(f"/fhir/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"2"'
    assert r.json()["meta"]["versionId"] == "2"
    assert r.headers["location"].endswith(f"/Patient/{pid}/_history/2")

    # a stale version is refused with 412 and nothing changes
    stale = dict(created, name=[{"family": f"Crud{uid}", "given": ["Stale"]}])
    body = _is_outcome(api.put(f"/fhir/Patient/{pid}", json=stale, headers={"If-Match": 'W/"1"'}), 412)
    assert "version 2" in body["issue"][0]["diagnostics"]
    assert api.get(f"/fhir/Patient/{pid}").json()["name"][0]["given"] == ["Grace"]

    v1 = api.get(f"/fhir/Patient/{pid}/_history/1")
    v2 = api.get(f"/fhir/Patient/{pid}/_history/2")
    assert v1.status_code == 200 and v2.status_code == 200
    assert v1.json()["name"][0]["given"] == ["Ada"] and v1.json()["meta"]["versionId"] == "1"
    assert v2.json()["name"][0]["given"] == ["Grace"] and v2.json()["meta"]["versionId"] == "2"
    assert v1.headers["etag"] == 'W/"1"' and v2.headers["etag"] == 'W/"2"'

    _is_outcome(api.get(f"/fhir/Patient/{pid}/_history/99"), 404)
    _is_outcome(api.get(f"/fhir/Patient/{pid}/_history/abc"), 400)
    _is_outcome(api.get(f"/fhir/Patient/nope-{uid}/_history/1"), 404)


def test_update_without_if_match_and_unquoted_etag(api, uid):
    created = api.post("/fhir/Patient", json=_patient(uid)).json()
    pid = created["id"]
    r = api.put(f"/fhir/Patient/{pid}", json=dict(created, gender="male"))
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "2"
    r = api.put(f"/fhir/Patient/{pid}", json=dict(created, gender="other"), headers={"If-Match": '"2"'})
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == "3"
    assert api.get(f"/fhir/Patient/{pid}").json()["gender"] == "other"


def test_if_match_on_missing_resource_is_412(api, uid):
    res = _patient(uid, id=f"ifm-{uid}")
    _is_outcome(api.put(f"/fhir/Patient/ifm-{uid}", json=res, headers={"If-Match": 'W/"1"'}), 412)
    assert api.get(f"/fhir/Patient/ifm-{uid}").status_code == 404


def test_put_with_new_client_id_creates(api, uid):
    rid = f"client-{uid}"
    r = api.put(f"/fhir/Patient/{rid}", json=_patient(uid, id=rid))
    assert r.status_code == 201, r.text
    assert r.headers["etag"] == 'W/"1"'
    assert r.json()["id"] == rid
    r2 = api.put(f"/fhir/Patient/{rid}", json=_patient(uid, id=rid, gender="male"))
    assert r2.status_code == 200
    assert r2.headers["etag"] == 'W/"2"'
    assert api.get(f"/fhir/Patient/{rid}").json()["gender"] == "male"


def test_if_none_match_gives_304(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid)).json()["id"]
    r = api.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    # an old etag gets the full resource
    api.put(f"/fhir/Patient/{pid}", json=_patient(uid, id=pid, gender="male"))
    r = api.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert r.status_code == 200 and r.json()["gender"] == "male"


def test_conditional_create_if_none_exist(api, uid):
    headers = {"If-None-Exist": f"identifier={_sys(uid)}|cond"}
    first = api.post("/fhir/Patient", json=_patient(uid, "cond"), headers=headers)
    assert first.status_code == 201
    second = api.post("/fhir/Patient", json=_patient(uid, "cond"), headers=headers)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["etag"] == 'W/"1"'
    found = api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|cond"}).json()
    assert found["total"] == 1
    # two matches make the condition ambiguous: 412
    api.post("/fhir/Patient", json=_patient(uid, "dup"))
    api.post("/fhir/Patient", json=_patient(uid, "dup"))
    _is_outcome(
        api.post(
            "/fhir/Patient",
            json=_patient(uid, "dup"),
            headers={"If-None-Exist": f"identifier={_sys(uid)}|dup"},
        ),
        412,
    )


def test_prefer_return_minimal_and_operation_outcome(api, uid):
    r = api.post("/fhir/Patient", json=_patient(uid), headers={"Prefer": "return=minimal"})
    assert r.status_code == 201
    assert r.content == b""
    loc = r.headers["location"]
    assert "/fhir/Patient/" in loc and loc.endswith("/_history/1")
    pid = loc.split("/fhir/Patient/")[1].split("/")[0]
    assert api.get(f"/fhir/Patient/{pid}").status_code == 200

    r = api.post("/fhir/Patient", json=_patient(uid), headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["severity"] == "information"


def test_read_with_summary_and_elements(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid, maritalStatus={"text": "Married"})).json()["id"]
    full = api.get(f"/fhir/Patient/{pid}").json()
    assert "maritalStatus" in full
    summ = api.get(f"/fhir/Patient/{pid}", params={"_summary": "true"}).json()
    assert "maritalStatus" not in summ
    assert summ["birthDate"] == "1980-02-03"
    assert any(t["code"] == "SUBSETTED" for t in summ["meta"]["tag"])
    el = api.get(f"/fhir/Patient/{pid}", params={"_elements": "gender"}).json()
    assert el["gender"] == "female" and el["id"] == pid
    assert "name" not in el and "birthDate" not in el
    assert any(t["code"] == "SUBSETTED" for t in el["meta"]["tag"])


# -- history ------------------------------------------------------------------------------------------


def test_instance_type_and_system_history(api, uid):
    since = _instant(-1)
    created = api.post("/fhir/Patient", json=_patient(uid)).json()
    pid = created["id"]
    api.put(f"/fhir/Patient/{pid}", json=dict(created, gender="male"))
    api.put(f"/fhir/Patient/{pid}", json=dict(created, gender="other"))

    h = api.get(f"/fhir/Patient/{pid}/_history")
    assert h.status_code == 200
    b = h.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "history"
    assert b["total"] == 3
    etags = [e["response"]["etag"] for e in b["entry"]]
    assert etags == ['W/"3"', 'W/"2"', 'W/"1"']  # newest first
    assert [e["resource"]["meta"]["versionId"] for e in b["entry"]] == ["3", "2", "1"]
    assert [e["resource"]["gender"] for e in b["entry"]] == ["other", "male", "female"]
    methods = [e["request"]["method"] for e in b["entry"]]
    assert methods == ["PUT", "PUT", "POST"]
    assert b["entry"][-1]["response"]["status"] == "201"
    assert b["entry"][0]["response"]["status"] == "200"
    assert all(e["fullUrl"].endswith(f"/Patient/{pid}") for e in b["entry"])

    # paging of instance history
    p1 = api.get(f"/fhir/Patient/{pid}/_history", params={"_count": 2}).json()
    assert len(p1["entry"]) == 2
    nxt = next(link["url"] for link in p1["link"] if link["relation"] == "next")
    p2 = api.get(nxt).json()
    assert [e["response"]["etag"] for e in p2["entry"]] == ['W/"1"']

    t = api.get("/fhir/Patient/_history", params={"_since": since, "_count": 1000}).json()
    assert t["type"] == "history"
    mine = [e for e in t["entry"] if e["fullUrl"].endswith(f"/Patient/{pid}")]
    assert [e["response"]["etag"] for e in mine] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert all(e["fullUrl"].split("/fhir/")[1].startswith("Patient/") for e in t["entry"])

    s = api.get("/fhir/_history", params={"_since": since, "_count": 1000}).json()
    mine = [e for e in s["entry"] if e["fullUrl"].endswith(f"/Patient/{pid}")]
    assert len(mine) == 3

    future = api.get(f"/fhir/Patient/{pid}/_history", params={"_since": "2999-01-01T00:00:00Z"}).json()
    assert future["total"] == 0 and future["entry"] == []
    _is_outcome(api.get("/fhir/_history", params={"_since": "yesterday"}), 400)
    _is_outcome(api.get(f"/fhir/Patient/nope-{uid}/_history"), 404)


# -- delete -------------------------------------------------------------------------------------------


def test_delete_then_read_is_gone_and_delete_again_is_fine(api, uid):
    pid = api.post("/fhir/Patient", json=_patient(uid)).json()["id"]
    r = api.delete(f"/fhir/Patient/{pid}")
    assert r.status_code in (200, 204)
    if r.status_code == 200:
        assert r.json()["resourceType"] == "OperationOutcome"
    _is_outcome(api.get(f"/fhir/Patient/{pid}"), 410)
    again = api.delete(f"/fhir/Patient/{pid}")
    assert again.status_code in (200, 204)
    # never-existing resources can be "deleted" too
    assert api.delete(f"/fhir/Patient/never-{uid}").status_code in (200, 204)
    # deleted resources do not match searches
    found = api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|p1"}).json()
    assert found["total"] == 0
    # history keeps the deletion, newest first, with the old version still readable
    h = api.get(f"/fhir/Patient/{pid}/_history").json()
    assert h["total"] == 2
    assert h["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in h["entry"][0]
    assert h["entry"][1]["resource"]["id"] == pid
    assert api.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    # a PUT brings it back as a new version
    back = api.put(f"/fhir/Patient/{pid}", json=_patient(uid, id=pid))
    assert back.status_code in (200, 201)
    assert back.json()["meta"]["versionId"] == "3"
    assert api.get(f"/fhir/Patient/{pid}").status_code == 200


def test_read_unknown_id_is_404(api, uid):
    body = _is_outcome(api.get(f"/fhir/Patient/missing-{uid}"), 404)
    assert body["issue"][0]["code"] == "not-found"


# -- provenance ---------------------------------------------------------------------------------------


def test_write_by_gp_carries_organisation_as_source(server, api, uid):
    with server.client("gp") as gp:
        r = gp.post("/fhir/Patient", json=_patient(uid, "gp", meta={"source": "Organization/somewhere-else"}))
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert r.json()["meta"]["source"] == "Organization/practice-1"
        cond = gp.post(
            "/fhir/Condition",
            json={
                "resourceType": "Condition",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {
                    "coding": [{"system": "http://snomed.info/sct", "code": "44054006"}],
                    "text": f"T2DM {uid}",
                },
            },
        )
        assert cond.status_code == 201
        assert cond.json()["meta"]["source"] == "Organization/practice-1"
    assert api.get(f"/fhir/Patient/{pid}").json()["meta"]["source"] == "Organization/practice-1"
    found = api.get(
        "/fhir/Patient", params={"_source": "Organization/practice-1", "identifier": f"{_sys(uid)}|gp"}
    ).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [pid]
    assert (
        api.get(
            "/fhir/Patient", params={"_source": "Organization/elsewhere", "identifier": f"{_sys(uid)}|gp"}
        ).json()["total"]
        == 0
    )
    # the integration account keeps the source it is given
    r = api.post("/fhir/Patient", json=_patient(uid, "sys", meta={"source": f"Organization/feed-{uid}"}))
    assert r.json()["meta"]["source"] == f"Organization/feed-{uid}"
    assert api.get("/fhir/Patient", params={"_source": f"Organization/feed-{uid}"}).json()["total"] == 1


# -- NHS number ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,status", [("9434765919", 201), ("943 476 5919", 201), ("9434765918", 422), ("123", 422)]
)
def test_nhs_number_checked(api, uid, value, status):
    res = _patient(
        uid, "nhs", identifier=[{"system": NHS, "value": value}, {"system": _sys(uid), "value": "nhs"}]
    )
    r = api.post("/fhir/Patient", json=res)
    assert r.status_code == status, r.text
    if status == 422:
        body = _is_outcome(r, 422)
        assert body["issue"][0]["expression"] == ["Patient.identifier[0]"]
        assert "modulus 11" in body["issue"][0]["diagnostics"]
        assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|nhs"}).json()["total"] == 0
    else:
        assert api.get("/fhir/Patient", params={"identifier": f"{_sys(uid)}|nhs"}).json()["total"] == 1


def test_last_modified_header_and_time_moves_forward(api, uid):
    created = api.post("/fhir/Patient", json=_patient(uid)).json()
    time.sleep(0.01)
    updated = api.put(f"/fhir/Patient/{created['id']}", json=dict(created, gender="male")).json()
    assert updated["meta"]["lastUpdated"] > created["meta"]["lastUpdated"]
    r = api.get(f"/fhir/Patient/{created['id']}")
    from email.utils import parsedate_to_datetime

    modified = parsedate_to_datetime(r.headers["last-modified"])  # an RFC 7231 HTTP-date
    stamp = datetime.fromisoformat(updated["meta"]["lastUpdated"])
    assert abs(modified - stamp) < timedelta(seconds=1)
