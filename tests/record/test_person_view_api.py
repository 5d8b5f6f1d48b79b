"""The summary API says why a section is empty (none recorded / not shown to your role / withheld at the
person's request), shows the dead as dead, and opens any entry in full through the gate (issue 13, parts 1, 2
and 5). Roles and their activities come from governance/roles.yaml (a social worker may not read clinical or
prescribing entries; a pharmacist may not read the care plan group, which holds CareTeam)."""

from __future__ import annotations

import base64

import pytest

from tests.record.helpers import load, organisations, rich_record

LETTER = "Discharge summary\nStopped: ramipril (acute kidney injury).\nFollow-up: GP review in 1 week."


@pytest.fixture(scope="module")
def roles(server):
    """A social worker and a pharmacist; each test puts them in the person's care team."""
    from joinedup.governance.accounts import add_user, issue_token

    for name, role in (("sw-view", "social-worker"), ("ph-view", "pharmacist")):
        add_user(server.gate, name=name, role=role, practitioner=f"pr-{name}", organization=f"org-{name}",
                 password=f"{name}-pw", replace=True)
        server.tokens[name] = issue_token(server.gate, name)
    return server


@pytest.fixture()
def person(roles, api, uid):
    pid = f"pv-{uid}"
    res = organisations(uid) + rich_record(uid, pid, gp_practitioner="gp-1", seed=int(uid[:6], 16))
    team = next(r for r in res if r["resourceType"] == "CareTeam")
    team["participant"] += [{"role": [{"text": "Social worker"}], "member": {"reference": "Practitioner/pr-sw-view"}},
                            {"role": [{"text": "Pharmacist"}], "member": {"reference": "Practitioner/pr-ph-view"}}]
    res.append({"resourceType": "DocumentReference", "id": f"{pid}-letter", "meta": {"source": f"Organization/acute-{uid}"},
                "status": "current", "type": {"text": "Discharge summary"}, "subject": {"reference": f"Patient/{pid}"},
                "date": "2026-03-04T16:20:00Z", "author": [{"reference": f"Practitioner/kw-{uid}"}],
                "content": [{"attachment": {"contentType": "text/plain",
                                            "data": base64.b64encode(LETTER.encode()).decode()}}]})
    load(api, res)
    return pid


def _get(server, user, path):
    with server.client(user) as c:
        return c.get(path)


def test_social_worker_is_told_what_is_not_shown(server, person):
    s = _get(server, "sw-view", f"/api/patients/{person}/summary").json()
    meds = s["access"]["medicines"]
    assert s["medicines"] == [] and meds["state"] == "not shown to your role"
    # rich_record writes three GP prescriptions and three medicines list entries (hospital, community)
    assert meds["not_shown_to_role"] == {"prescriptions": 3, "medicines list entries": 3}
    assert "not shown to a social worker" in meds["note"]
    assert s["access"]["problems"]["state"] == "not shown to your role"
    assert s["access"]["allergies"]["state"] == "not shown to your role"
    # the count is the gate's, and audited with the read (kinds and numbers, never content)
    import orjson

    from joinedup.governance.audit import search_events

    server.gate.flush_audit()
    _, events = search_events(server.gate.store_for_tests, patient_id=person, user_name="sw-view",
                              action="everything")
    text = orjson.dumps(events[0]).decode()
    assert "not_shown_to_role" in text and "MedicationRequest" in text and "Metformin" not in text
    # what a social worker may see is shown, and not counted as hidden
    assert s["access"]["carers"]["state"] == "shown" and s["carers"]
    # the GP sees everything: nothing is not shown, and an empty section would say "none recorded"
    g = _get(server, "gp", f"/api/patients/{person}/summary").json()
    assert g["access"]["medicines"]["state"] == "shown" and g["access"]["medicines"]["not_shown_to_role"] == {}


def test_pharmacist_is_told_the_key_worker_is_not_shown(server, person):
    s = _get(server, "ph-view", f"/api/patients/{person}/summary").json()
    assert s["key_worker"] is None
    assert s["access"]["key_worker"]["state"] == "not shown to your role"
    assert s["access"]["key_worker"]["not_shown_to_role"] == {"care teams": 1}
    j = _get(server, "ph-view", f"/api/patients/{person}/journey").json()
    assert j["access"]["next"]["state"] in ("not shown to your role", "shown")
    assert j["access"]["next"]["not_shown_to_role"]  # referrals and messages exist in rich_record


def test_private_entry_is_withheld_without_kind_or_count(server, api, person, uid):
    """The person keeps one problem private: the GP learns only that something is withheld at their request."""
    cond = next(c["resource"]["id"] for c in api.get(f"/fhir/Condition?patient=Patient/{person}").json()["entry"]
                if c["resource"]["meta"].get("source", "").endswith(f"acute-{uid}"))
    r = api.put(f"/fhir/Consent/{person}-private", json={
        "resourceType": "Consent", "id": f"{person}-private", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{person}"},
        "provision": {"type": "permit", "provision": [{"type": "deny", "data": [
            {"meaning": "instance", "reference": {"reference": f"Condition/{cond}"}}]}]}})
    assert r.status_code in (200, 201), r.text
    s = _get(server, "gp", f"/api/patients/{person}/summary").json()
    p = s["access"]["problems"]
    assert p["withheld_at_request"] is True and p["not_shown_to_role"] == {}
    assert "withheld at the person's request" in p["note"]
    assert all(e["provenance"]["ref"] != f"Condition/{cond}" for x in s["problems"] for e in x["entries"])
    # opening the private entry is refused, and nothing of it is in the refusal
    r = _get(server, "gp", f"/api/patients/{person}/entries/Condition/{cond}")
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


def test_the_dead_are_shown_as_dead(server, api, person):
    p = api.get(f"/fhir/Patient/{person}").json()
    p["deceasedDateTime"] = "2023-04-02T08:15:00Z"  # FHIR R4 Patient.deceased[x]
    assert api.put(f"/fhir/Patient/{person}", json=p).status_code == 200
    s = _get(server, "gp", f"/api/patients/{person}/summary").json()
    born = p["birthDate"]
    y, m, d = (int(x) for x in born.split("-"))
    expected = 2023 - y - ((4, 2) < (m, d))
    assert s["person"]["deceased"] is True and s["person"]["deceased_date"] == "2023-04-02"
    assert s["person"]["age"] == expected  # age at death, not today
    assert s["medicines"] and not any(m["current"] for m in s["medicines"])
    assert s["alerts"] == [] and s["next_steps"] == []
    j = _get(server, "gp", f"/api/patients/{person}/journey").json()
    assert j["deceased"] is True and j["where"] == "Died" and j["next"] == []


def test_an_entry_opens_with_its_text_author_and_versions(server, api, person, uid):
    r = _get(server, "gp", f"/api/patients/{person}/entries/DocumentReference/{person}-letter")
    assert r.status_code == 200, r.text
    e = r.json()
    assert any("Stopped: ramipril (acute kidney injury)." in t["text"] for t in e["text"])
    assert e["author"] == "Fatima Mistry" and "Northshire Teaching Hospitals" in e["organisation"]
    assert e["recorded"].startswith("2026-03-04") and [v["version"] for v in e["versions"]] == [1]
    # a second version: the history says what changed
    doc = api.get(f"/fhir/DocumentReference/{person}-letter").json()
    doc["status"] = "superseded"
    assert api.put(f"/fhir/DocumentReference/{person}-letter", json=doc).status_code == 200
    e = _get(server, "gp", f"/api/patients/{person}/entries/DocumentReference/{person}-letter").json()
    assert [v["version"] for v in e["versions"]] == [2, 1]
    assert "status" in e["versions"][0]["what"].lower()


def test_entry_refusals_and_wrong_person(server, api, person, uid):
    # a social worker may not read prescriptions: the gate's refusal, not the entry
    meds = api.get(f"/fhir/MedicationRequest?patient=Patient/{person}").json()["entry"]
    mid = meds[0]["resource"]["id"]
    r = _get(server, "sw-view", f"/api/patients/{person}/entries/MedicationRequest/{mid}")
    assert r.status_code == 403 and "Metformin" not in r.text and "Amlodipine" not in r.text
    # an entry of someone else is not shown under this person's address
    other = f"pv2-{uid}"
    load(api, rich_record(uid, other, gp_practitioner="gp-1", seed=int(uid[:6], 16) + 5003))
    omid = api.get(f"/fhir/MedicationRequest?patient=Patient/{other}").json()["entry"][0]["resource"]["id"]
    r = _get(server, "gp", f"/api/patients/{person}/entries/MedicationRequest/{omid}")
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    # an unknown type is bad input
    r = _get(server, "gp", f"/api/patients/{person}/entries/NoSuchType/x")
    assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome"
