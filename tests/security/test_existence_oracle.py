"""Issue 11 part 8 — no existence oracle.

To a user without a relationship with a person (a GP of another practice, a social worker, a patient user looking
at someone else's ids), an existing record and a missing one get the same status and the same words: reads,
vreads, histories, deletes, and a sealed entry (whose refusal must not say 'sealed'). Break-glass answers the same
for an existing and a missing person. The integration account still gets 404 for missing ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.security.conftest import (
    missing_id,
    observation,
    organization,
    patient,
    put,
    sealed,
)

OUTSIDERS = ["other-gp", "social-worker", "patient"]


@dataclass
class World:
    g: str  # the person's practice
    h: str  # a hospital
    pid: str
    obs: str  # an ordinary entry (recorded by the hospital)
    sealed_obs: str  # a sealed entry (recorded by the hospital)
    deleted_obs: str  # an entry that was deleted


@pytest.fixture()
def world(api, people, uid) -> World:
    g, h, pid = f"ex-g-{uid}", f"ex-h-{uid}", f"ex-p-{uid}"
    put(api, organization(g))
    put(api, organization(h))
    put(api, patient(pid, source=g, gp_org=g, family=f"Exists{uid}"))
    put(api, patient(f"ex-own-{uid}", source=g, gp_org=g, family=f"Onlooker{uid}"))
    w = World(g, h, pid, f"ex-obs-{uid}", f"ex-sealed-{uid}", f"ex-del-{uid}")
    put(api, observation(w.obs, pid, source=h))
    put(api, observation(w.sealed_obs, pid, source=h, security=sealed("R")))
    put(api, observation(w.deleted_obs, pid, source=h))
    assert api.delete(f"/fhir/Observation/{w.deleted_obs}").status_code in (200, 204)
    # outsiders: no relationship with the person
    people.add("other-gp", "gp", org=f"ex-elsewhere-{uid}")
    people.add("social-worker", "social-worker", org=f"ex-la-{uid}")
    people.add("patient", "patient", patient=f"ex-own-{uid}")
    return w


def shape(r, *ids: str) -> tuple:
    """What a response tells: its status and, for an OperationOutcome, each issue's severity, code and words (with
    the asked-for id replaced, so only what the id names could differ)."""
    try:
        body = r.json()
    except ValueError:
        return r.status_code, r.text
    if not isinstance(body, dict):
        return r.status_code, type(body).__name__
    if body.get("resourceType") == "Bundle":
        return r.status_code, "Bundle", body.get("total"), len(body.get("entry") or [])
    if body.get("resourceType") != "OperationOutcome":
        return r.status_code, body.get("resourceType")
    issues = []
    for issue in body.get("issue") or []:
        text = str(issue.get("diagnostics") or "")
        for i in ids:
            text = text.replace(i, "<id>")
        issues.append((issue.get("severity"), issue.get("code"), text))
    return r.status_code, issues


def same(c, method: str, path: str, existing: str, missing: str) -> tuple:
    """Ask the same thing about an existing and a missing id; they must answer alike. Returns the answer."""
    a = c.request(method, path.format(id=existing))
    b = c.request(method, path.format(id=missing))
    sa, sb = shape(a, existing, missing), shape(b, existing, missing)
    assert sa == sb, f"{method} {path}: existing -> {sa} / missing -> {sb}"
    return sa


@pytest.mark.parametrize("who", OUTSIDERS)
def test_reads_of_an_observation_answer_alike(people, world, who):
    with people.client(who) as c:
        for path in ("/fhir/Observation/{id}", "/fhir/Observation/{id}/_history/1", "/fhir/Observation/{id}/_history",
                     "/fhir/Observation/{id}/_history/99"):
            answer = same(c, "GET", path, world.obs, missing_id())
            assert answer[0] in (403, 404) or answer[0] == 200 and path.endswith("_history") and answer[3] == 0, path


@pytest.mark.parametrize("who", OUTSIDERS)
def test_reads_of_a_person_answer_alike(people, world, who):
    with people.client(who) as c:
        for path in ("/fhir/Patient/{id}", "/fhir/Patient/{id}/_history/1", "/fhir/Patient/{id}/_history",
                     "/fhir/Patient/{id}/$everything"):
            answer = same(c, "GET", path, world.pid, missing_id())
            assert answer[0] in (403, 404) or answer[0] == 200 and path.endswith("_history") and answer[3] == 0, path


@pytest.mark.parametrize("who", OUTSIDERS)
def test_a_sealed_entry_answers_like_a_missing_one(people, world, who):
    with people.client(who) as c:
        for path in ("/fhir/Observation/{id}", "/fhir/Observation/{id}/_history/1", "/fhir/Observation/{id}/_history"):
            same(c, "GET", path, world.sealed_obs, missing_id())
            r = c.get(path.format(id=world.sealed_obs))
            assert "sealed" not in r.text.lower(), r.text[:500]


@pytest.mark.parametrize("who", OUTSIDERS)
def test_a_deleted_entry_answers_like_a_missing_one(people, world, who):
    with people.client(who) as c:
        for path in ("/fhir/Observation/{id}", "/fhir/Observation/{id}/_history/1", "/fhir/Observation/{id}/_history"):
            same(c, "GET", path, world.deleted_obs, missing_id())
            r = c.get(path.format(id=world.deleted_obs))
            assert "deleted" not in r.text.lower(), r.text[:500]


@pytest.mark.parametrize("who", OUTSIDERS)
def test_deletes_answer_alike(api, people, world, who):
    with people.client(who) as c:
        status = same(c, "DELETE", "/fhir/Observation/{id}", world.obs, missing_id())[0]
        assert status in (403, 404)
        same(c, "DELETE", "/fhir/Observation/{id}", world.sealed_obs, missing_id())
        status = same(c, "DELETE", "/fhir/Patient/{id}", world.pid, missing_id())[0]
        assert status in (403, 404)
    # and nothing was deleted
    for rid in (world.obs, world.sealed_obs):
        assert api.get(f"/fhir/Observation/{rid}").status_code == 200
    assert api.get(f"/fhir/Patient/{world.pid}").status_code == 200


@pytest.mark.parametrize("who", OUTSIDERS)
def test_searches_by_id_answer_alike(people, world, who):
    with people.client(who) as c:
        for rtype, existing in (("Observation", world.obs), ("Observation", world.sealed_obs), ("Patient", world.pid)):
            missing = missing_id()
            a = c.get(f"/fhir/{rtype}", params={"_id": existing})
            b = c.get(f"/fhir/{rtype}", params={"_id": missing})
            assert a.status_code == b.status_code, (a.text[:300], b.text[:300])
            if a.status_code == 200:
                assert not a.json().get("entry") and a.json().get("total", 0) == b.json().get("total", 0) == 0
            else:
                assert shape(a, existing, missing) == shape(b, existing, missing)


@pytest.mark.parametrize("who", OUTSIDERS)
def test_writes_answer_alike(api, people, world, who):
    """A PUT at an existing id and at a missing one (about the same person, whom the user does not know)."""
    with people.client(who) as c:
        missing = missing_id()
        a = c.put(f"/fhir/Observation/{world.obs}", json=observation(world.obs, world.pid, value=1))
        b = c.put(f"/fhir/Observation/{missing}", json=observation(missing, world.pid, value=1))
        assert shape(a, world.obs, missing) == shape(b, world.obs, missing)
        assert a.status_code == 403, a.text[:500]
    assert api.get(f"/fhir/Observation/{world.obs}").json()["valueQuantity"]["value"] == 120
    assert api.get(f"/fhir/Observation/{missing}").status_code == 404


@pytest.mark.parametrize("who", OUTSIDERS)
def test_searches_about_a_person_answer_alike(people, world, who):
    with people.client(who) as c:
        for path in ("/fhir/Observation?patient={id}", "/fhir/Observation?subject=Patient/{id}",
                     "/fhir/Patient?_id={id}&_revinclude=Observation:subject"):
            same(c, "GET", path, world.pid, missing_id())


@pytest.mark.parametrize("who", OUTSIDERS)
def test_batch_reads_answer_alike(people, world, who):
    missing = missing_id()
    with people.client(who) as c:
        r = c.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Observation/{world.obs}"}},
            {"request": {"method": "GET", "url": f"Observation/{missing}"}},
            {"request": {"method": "GET", "url": f"Observation/{world.sealed_obs}"}}]})
        assert r.status_code == 200, r.text[:500]
    answers = []
    for e, rid in zip(r.json()["entry"], (world.obs, missing, world.sealed_obs)):
        issues = [(i.get("severity"), i.get("code"), str(i.get("diagnostics")).replace(rid, "<id>"))
                  for i in (e["response"].get("outcome") or {}).get("issue") or []]
        answers.append((e["response"]["status"], issues, "resource" in e))
    assert answers[0] == answers[1] == answers[2], answers
    assert "sealed" not in r.text.lower()


BREAK_GLASS = {"reason_category": "emergency-treatment", "reason": "unconscious in A&E, needs history"}


@pytest.mark.parametrize("who", OUTSIDERS)
def test_break_glass_answers_alike_for_an_existing_and_a_missing_person(people, world, who):
    with people.client(who) as c:
        a = c.post("/api/break-glass", json={"patient": world.pid, **BREAK_GLASS})
        b = c.post("/api/break-glass", json={"patient": missing_id(), **BREAK_GLASS})
    assert a.status_code == b.status_code, (a.text[:300], b.text[:300])
    ka, kb = a.json(), b.json()
    assert isinstance(ka, dict) and isinstance(kb, dict)
    assert set(ka) == set(kb), (sorted(ka), sorted(kb))
    if ka.get("resourceType") == "OperationOutcome":
        assert [(i.get("severity"), i.get("code")) for i in ka.get("issue") or []] == \
               [(i.get("severity"), i.get("code")) for i in kb.get("issue") or []]
    if who == "other-gp":  # a GP may break glass: the request is taken, for a person known or not
        assert a.status_code == 201, a.text[:500]


def test_the_integration_account_gets_404_for_missing_ids(api):
    rid = missing_id()
    for path in (f"/fhir/Observation/{rid}", f"/fhir/Observation/{rid}/_history/1",
                 f"/fhir/Observation/{rid}/_history", f"/fhir/Patient/{rid}", f"/fhir/Patient/{rid}/$everything"):
        r = api.get(path)
        assert r.status_code == 404, (path, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome"


def test_the_persons_own_gp_still_gets_told_why(people, world):
    """The words are only hidden from those without a relationship: the person's own GP (a relationship) is told
    the entry is restricted, as before."""
    people.add("own-gp", "gp", org=world.g)
    with people.client("own-gp") as c:
        r = c.get(f"/fhir/Observation/{world.sealed_obs}")
        assert r.status_code == 403 and "recorded it" in r.json()["issue"][0]["diagnostics"]
        assert c.get(f"/fhir/Observation/{world.obs}").status_code == 200


def test_a_professional_refused_the_persons_access_log_is_audited(server, api):
    """Every refusal is audited: a professional asking for the person's own access-log view is refused, and the
    refusal is in the audit trail (it used to leave no event)."""
    with server.client("gp") as gp:
        r = gp.get("/api/me/access-log")
        assert r.status_code == 403
    server.gate.flush_audit()
    events = api.get("/fhir/AuditEvent", params={"agent-name": "gp", "outcome": "8", "_count": 50}).json()
    assert any(e["resource"].get("entity") and any(x.get("what", {}).get("reference") == "access-log"
                                                    for x in e["resource"]["entity"])
               for e in events.get("entry") or []), events
