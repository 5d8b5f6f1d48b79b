"""Issue 11 part 4 — provenance is not rewritten by editing.

Another organisation's clinician (with a relationship to the person) may update an entry, but the entry stays the
recording organisation's: meta.source is kept, and the editor is recorded (by the server, never by the client) in
the meta extension last-edited-by (organization, user, edited). Only the recording organisation may seal an entry
(meta.security R or V) or mark it private (the data-sharing tag 'private').
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tests.security.conftest import (
    LAST_EDITED_BY,
    entry_ids,
    observation,
    organization,
    patient,
    private_tag,
    put,
    referral,
    sealed,
)


@dataclass
class World:
    a: str  # recorded the entry
    b: str  # another organisation with a relationship (an open referral)
    pid: str
    oid: str


@pytest.fixture()
def world(api, people, uid) -> World:
    a, b, pid = f"pv-a-{uid}", f"pv-b-{uid}", f"pv-p-{uid}"
    put(api, organization(a))
    put(api, organization(b))
    put(api, patient(pid, source=a, gp_org=a, family=f"Prov{uid}"))
    put(api, referral(f"pv-sr-{uid}", pid, b))
    people.add("a", "gp", org=a)
    people.add("b", "consultant", org=b)
    oid = f"pv-obs-{uid}"
    with people.client("a") as ca:  # recorded by org A's clinician: the gate stamps A as the source
        r = ca.put(f"/fhir/Observation/{oid}", json=observation(oid, pid, value=150))
        assert r.status_code == 201, r.text[:500]
    w = World(a, b, pid, oid)
    assert stored(api, w)["meta"]["source"] == f"Organization/{a}"
    with people.client("b") as cb:
        assert cb.get(f"/fhir/Observation/{oid}").status_code == 200
    return w


def stored(api, w: World) -> dict:
    r = api.get(f"/fhir/Observation/{w.oid}")
    assert r.status_code == 200, r.text[:500]
    return r.json()


def edited_by(resource: dict) -> list[dict]:
    return [e for e in (resource.get("meta") or {}).get("extension") or [] if e.get("url") == LAST_EDITED_BY]


def sub(ext: dict, url: str) -> dict:
    found = [e for e in ext.get("extension") or [] if e.get("url") == url]
    assert len(found) == 1, ext
    return found[0]


def assert_edited_by(resource: dict, org: str, user: str) -> None:
    exts = edited_by(resource)
    assert len(exts) == 1, resource.get("meta")
    ext = exts[0]
    assert sub(ext, "organization")["valueReference"]["reference"] == f"Organization/{org}"
    assert user in sub(ext, "user")["valueString"]
    edited = sub(ext, "edited")["valueInstant"]
    when = datetime.fromisoformat(edited)
    assert when.tzinfo is not None, edited  # an instant carries its zone
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=10), edited


def update(client, w: World, body: dict, via: str):
    """An update by PUT, or by a transaction Bundle PUT (status of the whole request returned)."""
    if via == "put":
        return client.put(f"/fhir/Observation/{w.oid}", json=body)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": body, "request": {"method": "PUT", "url": f"Observation/{w.oid}"}}]}
    return client.post("/fhir", json=bundle)


VIA = ["put", "transaction"]


# -- editing keeps the source ----------------------------------------------------------------------------------
@pytest.mark.parametrize("via", VIA)
def test_another_organisations_edit_keeps_the_source_and_records_the_editor(api, people, world, via):
    with people.client("b") as cb:
        body = cb.get(f"/fhir/Observation/{world.oid}").json()
        body["valueQuantity"]["value"] = 151
        r = update(cb, world, body, via)
        assert r.status_code == 200, r.text[:500]
    s = stored(api, world)
    assert s["valueQuantity"]["value"] == 151
    assert s["meta"]["source"] == f"Organization/{world.a}"
    assert_edited_by(s, world.b, people.names["b"])
    # the recording organisation still has it as its own, the editor still sees it as shared
    with people.client("a") as ca:
        got = ca.get(f"/fhir/Observation/{world.oid}")
        assert got.status_code == 200 and got.json()["meta"]["source"] == f"Organization/{world.a}"
    with people.client("b") as cb:
        assert cb.get(f"/fhir/Observation/{world.oid}").status_code == 200


@pytest.mark.parametrize("via", VIA)
def test_the_editor_cannot_be_spoofed(api, people, world, uid, via):
    fake = {"url": LAST_EDITED_BY, "extension": [
        {"url": "organization", "valueReference": {"reference": f"Organization/pv-fake-{uid}"}},
        {"url": "user", "valueString": f"someone-else-{uid}"},
        {"url": "edited", "valueInstant": "2001-01-01T00:00:00Z"}]}
    with people.client("b") as cb:
        body = cb.get(f"/fhir/Observation/{world.oid}").json()
        body["valueQuantity"]["value"] = 152
        body["meta"]["extension"] = [fake]
        body["meta"]["source"] = f"Organization/{world.b}"  # and a claim to be the recording organisation
        r = update(cb, world, body, via)
        assert r.status_code == 200, r.text[:500]
    s = stored(api, world)
    assert s["meta"]["source"] == f"Organization/{world.a}"
    assert_edited_by(s, world.b, people.names["b"])
    assert f"pv-fake-{uid}" not in str(s) and f"someone-else-{uid}" not in str(s)
    assert "2001-01-01" not in str(edited_by(s))


def test_a_new_entry_cannot_carry_a_forged_editor(api, people, world, uid):
    oid = f"pv-new-{uid}"
    body = observation(oid, world.pid, value=99)
    body["meta"] = {"source": f"Organization/{world.a}", "extension": [{"url": LAST_EDITED_BY, "extension": [
        {"url": "organization", "valueReference": {"reference": f"Organization/{world.a}"}},
        {"url": "user", "valueString": people.names["a"]},
        {"url": "edited", "valueInstant": "2001-01-01T00:00:00Z"}]}]}
    with people.client("b") as cb:
        r = cb.put(f"/fhir/Observation/{oid}", json=body)
        assert r.status_code == 201, r.text[:500]
    s = api.get(f"/fhir/Observation/{oid}").json()
    assert s["meta"]["source"] == f"Organization/{world.b}"  # B recorded it, whatever the body said
    for ext in edited_by(s):  # if an editor is recorded at all, it is the real one
        assert sub(ext, "organization")["valueReference"]["reference"] == f"Organization/{world.b}"
        assert people.names["b"] in sub(ext, "user")["valueString"]
        assert "2001-01-01" not in str(ext)


# -- only the recording organisation seals or marks private ------------------------------------------------------
LABELS = {
    "sealed-R": {"security": sealed("R")},
    "very-restricted-V": {"security": sealed("V")},
    "private-tag": {"tag": private_tag()},
}


@pytest.mark.parametrize("via", VIA)
@pytest.mark.parametrize("label", list(LABELS))
def test_another_organisation_cannot_seal_or_mark_private(api, people, world, label, via):
    before = stored(api, world)
    with people.client("b") as cb:
        body = cb.get(f"/fhir/Observation/{world.oid}").json()
        body["meta"] = {**body["meta"], **copy.deepcopy(LABELS[label])}
        r = update(cb, world, body, via)
        assert r.status_code == 403, r.text[:500]
        assert r.json()["resourceType"] == "OperationOutcome"
        # unchanged, and still shared
        assert cb.get(f"/fhir/Observation/{world.oid}").status_code == 200
    after = stored(api, world)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert not after["meta"].get("security") and not after["meta"].get("tag")
    with people.client("a") as ca:
        assert ca.get(f"/fhir/Observation/{world.oid}").status_code == 200


@pytest.mark.parametrize("label", list(LABELS))
def test_the_recording_organisation_seals_its_own_entry(api, people, world, label):
    with people.client("a") as ca:
        body = ca.get(f"/fhir/Observation/{world.oid}").json()
        body["meta"] = {**body["meta"], **copy.deepcopy(LABELS[label])}
        r = ca.put(f"/fhir/Observation/{world.oid}", json=body)
        assert r.status_code == 200, r.text[:500]
        assert ca.get(f"/fhir/Observation/{world.oid}").status_code == 200
    with people.client("b") as cb:
        r = cb.get(f"/fhir/Observation/{world.oid}")
        assert r.status_code == 403, r.text[:500]
        b = cb.get("/fhir/Observation", params={"patient": world.pid}).json()
        assert world.oid not in entry_ids(b)


def test_an_edit_does_not_let_the_editor_see_the_entry_once_sealed(api, people, world):
    """After B's edit the entry is still A's: when A seals it, B loses sight of it on every path."""
    with people.client("b") as cb:
        body = cb.get(f"/fhir/Observation/{world.oid}").json()
        body["valueQuantity"]["value"] = 153
        assert cb.put(f"/fhir/Observation/{world.oid}", json=body).status_code == 200
    with people.client("a") as ca:
        body = ca.get(f"/fhir/Observation/{world.oid}").json()
        body["meta"] = {**body["meta"], "security": sealed("R")}
        assert ca.put(f"/fhir/Observation/{world.oid}", json=body).status_code == 200
    with people.client("b") as cb:
        assert cb.get(f"/fhir/Observation/{world.oid}").status_code == 403
        b = cb.get("/fhir/Observation", params={"patient": world.pid}).json()
        assert world.oid not in entry_ids(b)
        everything = cb.get(f"/fhir/Patient/{world.pid}/$everything").json()
        assert world.oid not in entry_ids(everything)
    assert stored(api, world)["meta"]["source"] == f"Organization/{world.a}"


def test_the_person_editing_an_entry_does_not_take_it_over(api, people, world):
    """Whatever a person may change in their own record, an organisation's entry stays that organisation's."""
    people.add("person", "patient", patient=world.pid)
    with people.client("person") as me:
        body = me.get(f"/fhir/Observation/{world.oid}").json()
        body["valueQuantity"]["value"] = 90
        r = me.put(f"/fhir/Observation/{world.oid}", json=body)
        assert r.status_code in (200, 403), r.text[:500]
    s = stored(api, world)
    assert s["meta"]["source"] == f"Organization/{world.a}"
    with people.client("a") as ca:
        assert ca.get(f"/fhir/Observation/{world.oid}").status_code == 200


def test_deleting_and_recreating_does_not_take_over_the_entry(api, people, world):
    """Two steps are no way round: B deleting A's entry and writing it again at the same id (now sealed) must not
    leave an entry that is B's and hidden from A."""
    with people.client("b") as cb:
        cb.delete(f"/fhir/Observation/{world.oid}")
        cb.put(f"/fhir/Observation/{world.oid}", json=observation(world.oid, world.pid, value=1, security=sealed("R")))
    r = api.get(f"/fhir/Observation/{world.oid}")
    assert r.status_code in (200, 410), r.text[:500]
    if r.status_code == 200:  # it exists: still A's, unsealed, and A sees it
        assert r.json()["meta"]["source"] == f"Organization/{world.a}"
        assert not r.json()["meta"].get("security")
        with people.client("a") as ca:
            assert ca.get(f"/fhir/Observation/{world.oid}").status_code == 200
