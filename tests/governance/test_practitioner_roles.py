"""Care-team members recorded as PractitionerRole (as UK Core CareTeam examples do) reach the user who is that
role's practitioner, acting for its organisation; the relationship follows the role as it changes."""

from __future__ import annotations

import httpx
import pytest

from joinedup.governance.accounts import add_user, issue_token


def _put(api, res: dict) -> None:
    r = api.put(f"/fhir/{res['resourceType']}/{res['id']}", json=res)
    assert r.status_code in (200, 201), r.text


def _role(uid: str, *, active: bool = True) -> dict:
    return {"resourceType": "PractitionerRole", "id": f"pr-{uid}", "active": active,
            "practitioner": {"reference": f"Practitioner/nurse-{uid}"},
            "organization": {"reference": f"Organization/comm-{uid}"}, "code": [{"text": "District nurse"}]}


@pytest.fixture()
def world(server, api, uid):
    """A person whose care team names a district nurse by PractitionerRole only (written before the role, as a
    bulk load in type order would); the nurse's user acts for the community trust, another user is the same
    practitioner acting for a different organisation."""
    pid = f"prp-{uid}"
    _put(api, {"resourceType": "Organization", "id": f"comm-{uid}", "name": f"Community Trust {uid}"})
    _put(api, {"resourceType": "Practitioner", "id": f"nurse-{uid}", "name": [{"family": f"Nurse{uid}"}]})
    _put(api, {"resourceType": "Patient", "id": pid, "name": [{"family": f"Roles{uid}"}]})
    _put(api, {"resourceType": "Observation", "id": f"{pid}-o1", "status": "final", "code": {"text": "Weight"},
               "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 70, "unit": "kg"}})
    _put(api, {"resourceType": "CareTeam", "id": f"{pid}-ct", "status": "active",
               "subject": {"reference": f"Patient/{pid}"},
               "participant": [{"member": {"reference": f"PractitionerRole/pr-{uid}"}}]})
    tokens = {}
    for name, org in ((f"rn-{uid}", f"comm-{uid}"), (f"rn2-{uid}", f"elsewhere-{uid}")):
        add_user(server.gate, name=name, password="pw", role="community-nurse", practitioner=f"nurse-{uid}",
                 organization=org, replace=True)
        tokens[name] = issue_token(server.gate, name)
    return {"pid": pid, "tokens": tokens, "nurse": f"rn-{uid}", "other": f"rn2-{uid}"}


def _client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _reads(server, world, user: str) -> int:
    with _client(server, world["tokens"][user]) as c:
        return c.get(f"/fhir/Patient/{world['pid']}").status_code


def test_care_team_member_by_practitioner_role(server, api, world, uid):
    pid = world["pid"]
    # no role yet: the care team names nobody this user is
    assert _reads(server, world, world["nurse"]) == 403
    _put(api, _role(uid))
    assert _reads(server, world, world["nurse"]) == 200
    with _client(server, world["tokens"][world["nurse"]]) as c:
        found = c.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
        assert found["total"] == 1
        mine = c.get("/fhir/Patient", params={"_id": pid}).json()
        assert mine["total"] == 1
    # the same practitioner acting for another organisation is not that role
    assert _reads(server, world, world["other"]) == 403


def test_relationship_follows_the_role(server, api, world, uid):
    _put(api, _role(uid))
    assert _reads(server, world, world["nurse"]) == 200
    _put(api, _role(uid, active=False))  # the role ended
    assert _reads(server, world, world["nurse"]) == 403
    _put(api, _role(uid))
    assert _reads(server, world, world["nurse"]) == 200
    assert api.delete(f"/fhir/PractitionerRole/pr-{uid}").status_code in (200, 204)
    assert _reads(server, world, world["nurse"]) == 403
