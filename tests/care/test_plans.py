"""The personalised care and support plan over HTTP: the API shape, optimistic locking (stale edits refused
with 412, nothing lost), owned actions, history, refusals, and the plan page."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest

from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.identity import SYSTEM


@dataclass
class CareWorld:
    uid: str
    patient: str
    community: str
    hospital: str
    far_org: str
    kw: str  # key worker practitioner (community)
    nurse: str  # community nurse practitioner
    cons: str  # consultant practitioner (hospital)
    far: str  # practitioner with no route to the person
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, server, user: str) -> httpx.Client:
        token = self.tokens.get(user) or server.tokens[user]
        return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def build_world(server, uid: str, *, conditions: bool = True) -> CareWorld:
    """Two organisations caring for one person, a key worker, and a professional elsewhere with no route."""
    g = server.gate
    comm, hosp, far_org = f"comm-{uid}", f"hosp-{uid}", f"farorg-{uid}"
    for oid, name in ((comm, f"Dale Community Trust {uid}"), (hosp, f"Dale Hospitals {uid}"),
                      (far_org, f"Faraway Practice {uid}")):
        g.update(SYSTEM, "Organization", oid, {"resourceType": "Organization", "id": oid, "name": name})
    pracs = {"kw": (f"kw-{uid}", "Kim", "Keyworker", comm, "Care coordinator"),
             "nurse": (f"nurse-{uid}", "Nia", "Nurse", comm, "Community nurse"),
             "cons": (f"cons-{uid}", "Colin", "Consultant", hosp, "Consultant"),
             "far": (f"far-{uid}", "Fay", "Faraway", far_org, "GP")}
    for pid, given, family, org, role in pracs.values():
        g.update(SYSTEM, "Practitioner", pid, {"resourceType": "Practitioner", "id": pid, "active": True,
                                               "name": [{"given": [given], "family": f"{family}{uid}"}]})
        g.update(SYSTEM, "PractitionerRole", f"role-{pid}", {
            "resourceType": "PractitionerRole", "id": f"role-{pid}", "active": True,
            "practitioner": {"reference": f"Practitioner/{pid}"}, "organization": {"reference": f"Organization/{org}"},
            "code": [{"text": role}]})
    patient = f"pcsp-{uid}"
    g.update(SYSTEM, "Patient", patient, {"resourceType": "Patient", "id": patient, "birthDate": "1940-05-06",
                                          "name": [{"given": ["Maud"], "family": f"Plan{uid}"}],
                                          "generalPractitioner": [{"reference": "Organization/practice-1"}]})
    g.update(SYSTEM, "CareTeam", f"ct-{uid}", {
        "resourceType": "CareTeam", "id": f"ct-{uid}", "status": "active", "name": "Multidisciplinary care team",
        "subject": {"reference": f"Patient/{patient}"},
        "participant": [
            {"role": [{"text": "care coordinator"}], "member": {"reference": f"Practitioner/kw-{uid}"},
             "onBehalfOf": {"reference": f"Organization/{comm}"}},
            {"role": [{"text": "Community nurse"}], "member": {"reference": f"Practitioner/nurse-{uid}"},
             "onBehalfOf": {"reference": f"Organization/{comm}"}},
            {"role": [{"text": "Consultant"}], "member": {"reference": f"Practitioner/cons-{uid}"},
             "onBehalfOf": {"reference": f"Organization/{hosp}"}}]})
    if conditions:
        for n, (code, text) in enumerate((("38341003", "Hypertension"), ("44054006", "Type 2 diabetes"))):
            g.update(SYSTEM, "Condition", f"cond-{uid}-{n}", {
                "resourceType": "Condition", "id": f"cond-{uid}-{n}", "subject": {"reference": f"Patient/{patient}"},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": text}]}})
    w = CareWorld(uid, patient, comm, hosp, far_org, pracs["kw"][0], pracs["nurse"][0], pracs["cons"][0],
                  pracs["far"][0])
    for user, role, prac, org in ((f"kw-{uid}", "care-coordinator", w.kw, comm),
                                  (f"nurse-{uid}", "community-nurse", w.nurse, comm),
                                  (f"cons-{uid}", "consultant", w.cons, hosp),
                                  (f"far-{uid}", "gp", w.far, far_org)):
        add_user(g, name=user, role=role, practitioner=prac, organization=org, password="pw", replace=True)
        w.tokens[user] = issue_token(g, user)
    return w


@pytest.fixture()
def world(server, uid) -> CareWorld:
    return build_world(server, uid)


def _due(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def test_empty_plan_has_the_documented_shape(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.get(f"/api/patients/{world.patient}/care-plan")
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("goals", "actions", "what_matters", "updated", "sources"):
        assert key in body
    assert body["goals"] == [] and body["actions"] == [] and body["version"] is None


def test_build_a_plan_with_what_matters_goals_and_owned_actions(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.patch(f"/api/patients/{world.patient}/care-plan",
                    json={"what_matters": "Staying in my own home with my cat", "written_by": "the person"})
        assert r.status_code == 200, r.text
        etag = r.headers["etag"]
        assert etag == f'W/"{r.json()["version"]}"'
        r = c.post(f"/api/patients/{world.patient}/care-plan/goals",
                   json={"description": "Walk to the shop on my own", "target_date": _due(60)},
                   headers={"If-Match": etag})
        assert r.status_code == 200, r.text
        r = c.post(f"/api/patients/{world.patient}/care-plan/actions",
                   json={"description": "Home visit to review falls risk", "owner_practitioner": world.nurse,
                         "owner_organization": world.community, "due": _due(14)},
                   headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200, r.text
    with world.client(server, f"cons-{world.uid}") as c:  # the whole team, across organisations, sees it
        plan = c.get(f"/api/patients/{world.patient}/care-plan").json()
    assert plan["what_matters"]["text"] == "Staying in my own home with my cat"
    assert plan["what_matters"]["written_by"] == "the person"
    assert [g["description"] for g in plan["goals"]] == ["Walk to the shop on my own"]
    (action,) = plan["actions"]
    assert action["owner"]["practitioner"] == f"Practitioner/{world.nurse}"
    assert action["owner"]["organization"] == f"Organization/{world.community}"
    assert action["owner"]["name"] == f"Nia Nurse{world.uid}"
    assert action["due"] == _due(14) and action["status"] == "not-started" and action["overdue"] is False
    assert plan["updated"] and plan["sources"][0]["organization"] == f"Organization/{world.community}"
    # the one view of the person shows it too, so nobody asks again
    with world.client(server, f"cons-{world.uid}") as c:
        about = c.get(f"/api/patients/{world.patient}/summary").json()["what_matters"]
    said = [w for w in about if w["text"] == "Staying in my own home with my cat"]
    assert said and said[0]["written_by"] == "the person" and said[0]["provenance"]["ref"].startswith("CarePlan/")
    assert "Walk to the shop on my own" in [w["text"] for w in about]


def test_stale_edit_is_refused_with_412_and_nothing_is_lost(server, world):
    kw, nurse = world.client(server, f"kw-{world.uid}"), world.client(server, f"nurse-{world.uid}")
    with kw, nurse:
        first = kw.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "My garden"})
        seen = first.headers["etag"]
        # both open the same version; the key worker saves first
        a = kw.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "My garden and my grandson"},
                     headers={"If-Match": seen})
        assert a.status_code == 200
        b = nurse.post(f"/api/patients/{world.patient}/care-plan/goals", json={"description": "Sleep better"},
                       headers={"If-Match": seen})
        assert b.status_code == 412, b.text
        outcome = b.json()
        assert outcome["resourceType"] == "OperationOutcome"
        current = a.json()["version"]
        assert f"now version {current}" in outcome["issue"][0]["diagnostics"]
        assert b.headers["etag"] == f'W/"{current}"'
        plan = kw.get(f"/api/patients/{world.patient}/care-plan").json()
        assert plan["what_matters"]["text"] == "My garden and my grandson" and plan["goals"] == []
        retry = nurse.post(f"/api/patients/{world.patient}/care-plan/goals", json={"description": "Sleep better"},
                           headers={"If-Match": b.headers["etag"]})
        assert retry.status_code == 200
        plan = retry.json()
        assert plan["what_matters"]["text"] == "My garden and my grandson"
        assert [g["description"] for g in plan["goals"]] == ["Sleep better"]
        # an edit that names no version is refused too once the plan exists
        r = nurse.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "x"})
        assert r.status_code == 428 and "If-Match" in r.json()["issue"][0]["diagnostics"]


def test_history_says_who_changed_what(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "Music"})
        c.patch(f"/api/patients/{world.patient}/care-plan/actions/none", json={"status": "completed"},
                headers={"If-Match": r.headers["etag"]})
        r = c.post(f"/api/patients/{world.patient}/care-plan/actions",
                   json={"description": "Memory clinic letter", "owner_practitioner": world.cons,
                         "owner_organization": world.hospital, "due": _due(7)}, headers={"If-Match": r.headers["etag"]})
        aid = r.json()["actions"][0]["id"]
        r = c.patch(f"/api/patients/{world.patient}/care-plan/actions/{aid}", json={"status": "completed"},
                    headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 200 and r.json()["actions"][0]["status"] == "completed"
        hist = c.get(f"/api/patients/{world.patient}/care-plan/history").json()["history"]
    changes = [h["change"] for h in hist]
    assert any("completed" in ch for ch in changes[:1])
    assert any("added action 'Memory clinic letter'" in ch for ch in changes)
    assert any("what matters" in ch for ch in changes)
    assert all(h["by"] and f"Kim Keyworker{world.uid}" in h["by"] for h in hist if h["version"] != "1")


def test_bad_input_gets_clear_refusals(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        base = f"/api/patients/{world.patient}/care-plan"
        r = c.patch(base, json={"what_matters": "   "})
        assert r.status_code == 422 and "empty" in r.text
        r = c.patch(base, json={"what_matters": "ok", "written_by": "the cat"})
        assert r.status_code == 422 and "written_by" in r.text
        etag = c.get(base).headers.get("etag") or "0"
        act = {"description": "Check blood pressure", "owner_practitioner": world.nurse,
               "owner_organization": world.community, "due": _due(3)}
        r = c.post(f"{base}/actions", json={**act, "due": "next tuesday"}, headers={"If-Match": etag})
        assert r.status_code == 422 and "not a date" in r.text
        r = c.post(f"{base}/actions", json={**act, "owner_practitioner": f"ghost-{world.uid}"},
                   headers={"If-Match": etag})
        assert r.status_code == 422 and "not in the directory" in r.text
        r = c.post(f"{base}/actions", json={**act, "owner_organization": world.hospital}, headers={"If-Match": etag})
        assert r.status_code == 422 and "does not work for" in r.text
        r = c.post(f"{base}/actions", json={**act, "owner_practitioner": world.far,
                                            "owner_organization": world.far_org}, headers={"If-Match": etag})
        assert r.status_code == 422
        assert "no route to this person" in r.json()["issue"][0]["diagnostics"]
        r = c.post(f"{base}/actions", json={**act, "status": "sort-of"}, headers={"If-Match": etag})
        assert r.status_code == 422
        r = c.post(f"{base}/actions", json={**act, "colour": "red"}, headers={"If-Match": etag})
        assert r.status_code == 400
        r = c.patch(f"{base}/actions/nope", json={"status": "completed"}, headers={"If-Match": etag})
        assert r.status_code in (404, 412)
        # nothing was saved by any of the refusals
        assert c.get(base).json()["actions"] == []


def test_no_relationship_no_plan(server, world):
    with world.client(server, f"far-{world.uid}") as c:
        r = c.get(f"/api/patients/{world.patient}/care-plan")
        assert r.status_code == 403 and "no legitimate relationship" in r.text
        r = c.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "x"})
        assert r.status_code == 403
    with world.client(server, "analyst") as c:
        assert c.get(f"/api/patients/{world.patient}/care-plan").status_code == 403
    with world.client(server, f"kw-{world.uid}") as c:
        assert c.get(f"/api/patients/nobody-{world.uid}/care-plan").status_code in (403, 404)


def test_plan_page_keeps_what_was_typed_on_a_stale_edit(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        c.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "Seeing my sister"})
        c.cookies.set("joinedup_token", world.tokens[f"kw-{world.uid}"])
        page = c.get(f"/patients/{world.patient}/care-plan")
        assert page.status_code == 200
        assert "What matters to me" in page.text and "Seeing my sister" in page.text
        assert f"Kim Keyworker{world.uid}" in page.text  # the key worker is shown
        ok = c.post(f"/patients/{world.patient}/care-plan/goals", data={"description": "Bake a cake", "version": "1"},
                    follow_redirects=False)
        assert ok.status_code == 412
        assert "has changed since you opened it" in ok.text and "Bake a cake" in ok.text
        ok = c.post(f"/patients/{world.patient}/care-plan/goals", data={"description": "Bake a cake", "version": "2"},
                    follow_redirects=False)
        assert ok.status_code == 303
        assert "Bake a cake" in c.get(f"/patients/{world.patient}/care-plan").text


def test_review_merge_becomes_a_key_worker_action(server, world):
    base = f"/api/patients/{world.patient}/care-plan"
    with world.client(server, f"nurse-{world.uid}") as c:
        props = c.get(f"{base}/review-proposals").json()["proposals"]
        assert len(props) == 1 and not props[0]["accepted"]
        assert "hypertension review" in props[0]["reviews"] and len(props[0]["reviews"]) >= 2
        r = c.post(f"{base}/review-proposals/{props[0]['finding']}/accept", json={}, headers={"If-Match": "0"})
        assert r.status_code == 403 and "key worker" in r.text
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(f"{base}/review-proposals/unknown/accept", json={}, headers={"If-Match": "0"})
        assert r.status_code == 404
        r = c.post(f"{base}/review-proposals/{props[0]['finding']}/accept", json={"due": _due(30)},
                   headers={"If-Match": "0"})
        assert r.status_code == 200, r.text
        (action,) = r.json()["actions"]
        assert action["description"].startswith("Book one multimorbidity review")
        assert action["owner"]["practitioner"] == f"Practitioner/{world.kw}" and action["due"] == _due(30)
        again = c.post(f"{base}/review-proposals/{props[0]['finding']}/accept", json={},
                       headers={"If-Match": r.headers["etag"]})
        assert again.status_code == 409
        assert c.get(f"{base}/review-proposals").json()["proposals"][0]["accepted"] is True


def test_overdue_actions_are_flagged(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(f"/api/patients/{world.patient}/care-plan/actions",
                   json={"description": "Overdue thing", "owner_practitioner": world.kw,
                         "owner_organization": world.community, "due": (date.today() - timedelta(days=3)).isoformat()})
        assert r.status_code == 200, r.text
        assert r.json()["actions"][0]["overdue"] is True


def test_the_person_sees_their_own_plan(server, world):
    add_user(server.gate, name=f"me-{world.uid}", role="patient", patient=world.patient, password="pw",
             replace=True)
    token = issue_token(server.gate, f"me-{world.uid}")
    with world.client(server, f"kw-{world.uid}") as c:
        c.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "My dog Biscuit",
                                                                   "written_by": "the person"})
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        r = c.get(f"/api/patients/{world.patient}/care-plan")
        assert r.status_code == 200 and r.json()["what_matters"]["text"] == "My dog Biscuit"
        r = c.patch(f"/api/patients/{world.patient}/care-plan", json={"what_matters": "x"},
                    headers={"If-Match": r.headers["etag"]})
        assert r.status_code == 403
        other = build_world(server, world.uid + "b", conditions=False)
        assert c.get(f"/api/patients/{other.patient}/care-plan").status_code == 403
