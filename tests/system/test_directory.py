"""The services directory over real HTTP: `GET /api/directory?need=`, FHIR HealthcareService search, who can help a
person, the referral picker ordering, bad input and refusals, as a GP, a patient, an analyst and a board member."""

from __future__ import annotations

import uuid

import pytest
from tests.system.world import NEED, build

from joinedup.governance.accounts import add_user, issue_token


@pytest.fixture(scope="module")
def world(server):
    w = build(server.gate, uuid.uuid4().hex[:6])
    for name, role in ((f"board-{w.uid}", "board"),):
        add_user(server.gate, name=name, role=role, password="pw", replace=True)
        w.roles[name] = issue_token(server.gate, name)
    return w


def _client(server, world, name):
    import httpx

    token = world.roles.get(name) or server.tokens[name]
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _ids(body) -> list[str]:
    return [s["id"] for s in body["services"]]


def test_gp_finds_services_for_falls_with_what_they_accept(server, world):
    with server.client("gp") as gp:
        r = gp.get("/api/directory", params={"need": "Who can help with falls?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [n["key"] for n in body["recognised"]] == ["falls"]
    ids = _ids(body)
    assert world.falls_clinic in ids and world.therapies in ids and world.diabetes not in ids
    # the service that says it meets the need comes before the one found by its description
    assert ids.index(world.falls_clinic) < ids.index(world.therapies)
    falls = next(s for s in body["services"] if s["id"] == world.falls_clinic)
    assert falls["matched"] == [{"need": "falls", "how": "coded"}]
    assert falls["criteria"] == ["Two or more falls in 12 months, or one fall with injury"]
    # referralMethod codes elec/phone shown by their R4 value set meaning
    assert falls["referral_methods"] == ["Secure messaging", "Phone"]
    assert falls["advice_and_guidance"] is True
    assert falls["response_promise"]["text"] == "within 5 working days"
    assert falls["contact"] == [{"system": "phone", "value": "01632 960001"}]
    assert falls["hours"] == ["Mon–Fri 08:30–17:00"]
    assert falls["organization"]["name"].startswith("Dale Teaching Hospitals")
    assert falls["locations"] == [f"Falls clinic, Dale {world.uid}"]
    therapies = next(s for s in body["services"] if s["id"] == world.therapies)
    assert therapies["matched"] == [{"need": "falls", "how": "text"}]
    assert therapies["hours"] == ["Mon–Sat 09:00–13:00"]
    assert therapies["response_promise"] is None and therapies["advice_and_guidance"] is False


def test_a_condition_synonym_finds_the_need(server, world):
    """'emphysema' is a COPD synonym in knowledge/conditions.yaml: the breathlessness need."""
    with server.client("gp") as gp:
        body = gp.get("/api/directory", params={"need": "emphysema"}).json()
    assert [n["key"] for n in body["recognised"]] == ["breathlessness"]


def test_unrecognised_words_search_the_services_own_text(server, world):
    with server.client("gp") as gp:
        body = gp.get("/api/directory", params={"need": f"diabetes centre {world.uid}"}).json()
    assert world.diabetes in _ids(body)
    with server.client("gp") as gp:
        body = gp.get("/api/directory", params={"need": "zebra husbandry"}).json()
    assert body["recognised"] == [] and body["services"] == [] and body["total"] == 0


@pytest.mark.parametrize("params, code", [({}, "required"), ({"need": "   "}, "required"),
                                          ({"need": "x" * 201}, "too-long"), ({"need": "falls\x07"}, "value"),
                                          ({"need": "!!! ???"}, "value")])
def test_bad_need_is_a_400_operation_outcome(server, world, params, code):
    with server.client("gp") as gp:
        r = gp.get("/api/directory", params=params)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code and body["issue"][0]["expression"] == ["need"]


def test_fhir_healthcare_service_search(server, world):
    """The R4 HealthcareService search parameters: organization (providedBy), characteristic, name, specialty."""
    with server.client("gp") as gp:
        r = gp.get("/fhir/HealthcareService", params={"organization": f"Organization/{world.hospital}",
                                                      "active": "true"})
        assert r.status_code == 200
        got = {e["resource"]["id"] for e in r.json().get("entry", [])}
        assert got == {world.falls_clinic, world.diabetes}
        r = gp.get("/fhir/HealthcareService", params={"characteristic": f"{NEED}|falls",
                                                      "organization": f"Organization/{world.hospital}"})
        assert {e["resource"]["id"] for e in r.json().get("entry", [])} == {world.falls_clinic}
        r = gp.get("/fhir/HealthcareService", params={"name": f"Community therapies {world.uid}"})
        assert {e["resource"]["id"] for e in r.json().get("entry", [])} == {world.therapies}
        r = gp.get("/fhir/HealthcareService", params={"specialty:text": "care of older",
                                                      "organization": f"Organization/{world.hospital}"})
        assert {e["resource"]["id"] for e in r.json().get("entry", [])} == {world.falls_clinic}


def test_one_service_lists_its_people(server, world):
    with server.client("gp") as gp:
        r = gp.get(f"/api/directory/services/{world.falls_clinic}")
    assert r.status_code == 200
    people = r.json()["people"]
    assert [p["role_id"] for p in people] == [world.roles["consultant"]]
    assert people[0]["name"] == f"Dr Fay Falls{world.uid}" and people[0]["role"] == "Consultant"


def test_who_can_help_matches_problems_and_goals(server, world):
    with server.client("gp") as gp:
        r = gp.get(f"/api/patients/{world.patient}/who-can-help")
    assert r.status_code == 200, r.text
    needs = {n["key"]: n for n in r.json()["needs"]}
    # falls from the problem's text, breathlessness from SNOMED CT 13645005 (COPD), care at home from the goal
    assert set(needs) == {"falls", "breathlessness", "care-at-home"}
    assert needs["falls"]["from"] == ["problem: Recurrent falls"]
    assert needs["care-at-home"]["from"][0].startswith("care plan goal: Get help with washing")
    falls_ids = [s["id"] for s in needs["falls"]["services"]]
    assert falls_ids.index(world.falls_clinic) < falls_ids.index(world.therapies)
    with server.client("gp") as gp:
        r = gp.get(f"/api/patients/{world.patient}/who-can-help", params={"need": "\x01"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_who_can_help_needs_a_relationship(server, world):
    with server.client("gp") as gp:
        r = gp.get(f"/api/patients/{world.stranger}/who-can-help")
    assert r.status_code == 403
    assert r.json()["issue"][0]["code"] == "forbidden"


def test_patient_may_search_the_directory_but_not_others_needs(server, world):
    with server.client("pat") as pat:
        r = pat.get("/api/directory", params={"need": "falls"})
        assert r.status_code == 200 and world.falls_clinic in _ids(r.json())
        assert pat.get(f"/api/patients/{world.patient}/who-can-help").status_code == 403


def test_analyst_and_board_cannot_read_the_directory(server, world):
    """The directory is for professionals (and people looking for help); the analyst and board roles have no
    activity that reads it (deny by default)."""
    with server.client("analyst") as an:
        assert an.get("/api/directory", params={"need": "falls"}).status_code == 403
    with _client(server, world, f"board-{world.uid}") as board:
        assert board.get("/api/directory", params={"need": "falls"}).status_code == 403


def test_referral_picker_puts_services_meeting_the_need_first(server, world):
    from joinedup.care.referrals.service import recipients
    from joinedup.governance.accounts import get_user

    gp = get_user(server.gate, "gp")
    plain = recipients(gate=server.gate, who=gp)
    mine = next(r for r in plain if r["role_id"] == world.roles["consultant"])
    assert mine["services"] == [f"Falls and frailty clinic {world.uid}"]
    ordered = recipients(gate=server.gate, who=gp, need="recurrent falls")
    offering = [r for r in ordered if r.get("offers")]
    assert offering and ordered[:len(offering)] == offering
    assert f"Falls and frailty clinic {world.uid}" in next(
        r for r in ordered if r["role_id"] == world.roles["consultant"])["offers"]
    # a reason that is no searchable need leaves the list as it was
    assert [r["role_id"] for r in recipients(gate=server.gate, who=gp, need="???")] == [r["role_id"] for r in plain]


def test_directory_cli(server, world):
    from typer.testing import CliRunner

    from joinedup.cli import app

    runner = CliRunner()
    env = {"JOINEDUP_DATABASE_URL": server.db_url}
    r = runner.invoke(app, ["directory", "search", "falls", "--format", "json"], env=env)
    assert r.exit_code == 0, r.output
    import json

    assert world.falls_clinic in [s["id"] for s in json.loads(r.output)["services"]]
    r = runner.invoke(app, ["directory", "search", " "], env=env)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["directory", "search", "falls", "--format", "xml"], env=env)
    assert r.exit_code == 2 and "--format must be one of json, text" in " ".join(r.output.split())


def test_who_can_help_says_what_a_social_worker_cannot_see(server, world):
    """A social worker may not read problems (roles.yaml): their needs come from the care plan goals, and the page
    says problems are not shown rather than pretending there are none (hidden is not absent)."""
    from joinedup.governance.identity import SYSTEM

    sw = f"sys-sw-{world.uid}"
    server.gate.update(SYSTEM, "CareTeam", f"team-{world.uid}", {
        "resourceType": "CareTeam", "id": f"team-{world.uid}", "status": "active",
        "subject": {"reference": f"Patient/{world.patient}"},
        "participant": [{"role": [{"text": "Social worker"}], "member": {"reference": f"Practitioner/{sw}"}}]})
    add_user(server.gate, name=sw, role="social-worker", practitioner=sw, organization=f"cncl-{world.uid}",
             password="pw", replace=True)
    world.roles[sw] = issue_token(server.gate, sw)
    with _client(server, world, sw) as c:
        r = c.get(f"/api/patients/{world.patient}/who-can-help")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [n["key"] for n in body["needs"]] == ["care-at-home"]
    assert body["not_shown"] == ["The person's problems are not shown to your role, so needs they point to are "
                                 "not listed."]


def test_inactive_services_are_not_offered_and_active_is_optional(server, world):
    """HealthcareService.active is optional (0..1): an entry without it is listed; one marked false is not."""
    from tests.system.world import service

    from joinedup.governance.identity import SYSTEM

    old, plain = f"sys-old-{world.uid}", f"sys-plain-{world.uid}"
    server.gate.update(SYSTEM, "HealthcareService", old, {**service(old, world.hospital, f"Old falls clinic {world.uid}",
                                                                    needs=["falls"]), "active": False})
    unmarked = service(plain, world.hospital, f"Falls prevention {world.uid}", needs=["falls"])
    unmarked.pop("active")
    server.gate.update(SYSTEM, "HealthcareService", plain, unmarked)
    with server.client("gp") as gp:
        ids = _ids(gp.get("/api/directory", params={"need": "falls"}).json())
    assert plain in ids and old not in ids
