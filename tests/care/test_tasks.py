"""Tasks across organisations, overdue escalation (API, CLI), and the my tasks / my people worklists."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from joinedup.cli import app as cli_app
from joinedup.governance.identity import SYSTEM
from tests.care.test_plans import CareWorld, build_world


@pytest.fixture()
def world(server, uid) -> CareWorld:
    return build_world(server, uid, conditions=False)


def _day(days: int) -> str:
    return (datetime.now(UTC).date() + timedelta(days=days)).isoformat()


def _task(world: CareWorld, **over):
    return {"description": "Review the home care package", "owner_practitioner": world.cons,
            "owner_organization": world.hospital, "due": _day(5), **over}


def test_assign_a_task_across_organisations(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due=_day(-2), priority="routine"))
        assert r.status_code == 201, r.text
        t = r.json()
        assert t["owner"]["practitioner"] == f"Practitioner/{world.cons}"
        assert t["owner"]["organization"] == f"Organization/{world.hospital}"
        assert t["status"] == "requested" and t["overdue"] is True and r.headers["etag"] == 'W/"1"'
        assert t["requester"] == f"Kim Keyworker{world.uid}"
        listed = c.get(f"/api/patients/{world.patient}/tasks").json()["tasks"]
        assert [x["id"] for x in listed] == [t["id"]]
    with world.client(server, f"cons-{world.uid}") as c:
        mine = c.get("/api/care/my-tasks").json()
        assert t["id"] in [x["id"] for x in mine["tasks"]] and mine["overdue"] >= 1
        # accept it, on the version seen
        r = c.patch(f"/api/tasks/{t['id']}", json={"status": "accepted"})
        assert r.status_code == 428
        r = c.patch(f"/api/tasks/{t['id']}", json={"status": "accepted"}, headers={"If-Match": 'W/"1"'})
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        stale = c.patch(f"/api/tasks/{t['id']}", json={"status": "completed"}, headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412 and "now version 2" in stale.text
        assert c.get(f"/api/tasks/{t['id']}").json()["status"] == "accepted"


def test_no_route_no_task(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        r = c.post(f"/api/patients/{world.patient}/tasks",
                   json=_task(world, owner_practitioner=world.far, owner_organization=world.far_org))
        assert r.status_code == 422
        msg = r.json()["issue"][0]["diagnostics"]
        assert f"Fay Faraway{world.uid}" in msg and "no route to this person" in msg
        r = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, owner_practitioner=f"x-{world.uid}"))
        assert r.status_code == 422
        r = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due="31/12/2026"))
        assert r.status_code == 422 and "not a date" in r.text
        r = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, priority="whenever"))
        assert r.status_code == 422
        assert c.get(f"/api/patients/{world.patient}/tasks").json()["tasks"] == []
    with world.client(server, f"far-{world.uid}") as c:  # no relationship: cannot give or see tasks about them
        r = c.post(f"/api/patients/{world.patient}/tasks",
                   json=_task(world, owner_practitioner=world.far, owner_organization=world.far_org))
        assert r.status_code == 403
        assert c.get(f"/api/patients/{world.patient}/tasks").status_code == 403


def test_escalation_marks_overdue_once(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        late = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due=_day(-1))).json()
        fine = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due=_day(3))).json()
        assert c.post("/api/care/escalate").status_code == 403
    with server.client("admin") as c:
        r = c.post("/api/care/escalate")
        assert r.status_code == 200
        assert late["id"] in r.json()["tasks"] and fine["id"] not in r.json()["tasks"]
        again = c.post("/api/care/escalate").json()
        assert late["id"] not in again["tasks"]
    task = server.gate.read(SYSTEM, "Task", late["id"]).content
    assert task["businessStatus"]["text"] == "overdue" and task["priority"] == "urgent"
    assert "Escalated" in task["note"][-1]["text"]
    with world.client(server, f"cons-{world.uid}") as c:
        mine = {x["id"]: x for x in c.get("/api/care/my-tasks").json()["tasks"]}
        assert mine[late["id"]]["escalated"] and mine[late["id"]]["priority"] == "urgent"


def test_escalate_command(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        t = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due=_day(10))).json()
    runner = CliRunner()
    env = {"JOINEDUP_DATABASE_URL": server.db_url}
    result = runner.invoke(cli_app, ["care", "escalate", "--now", _day(20), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert t["id"] in json.loads(result.output)["tasks"]
    bad = runner.invoke(cli_app, ["care", "escalate", "--now", "someday"], env=env)
    assert bad.exit_code == 2 and "not a date" in bad.output
    people = runner.invoke(cli_app, ["care", "worklist", f"kw-{world.uid}", "--people"], env=env)
    assert people.exit_code == 0, people.output
    assert world.patient in [p["id"] for p in json.loads(people.output)["people"]]
    assert runner.invoke(cli_app, ["care", "worklist", f"nobody-{world.uid}"], env=env).exit_code == 2


def test_my_people_shows_overdue_and_who_is_in_hospital(server, world):
    g = server.gate
    g.update(SYSTEM, "Encounter", f"adm-{world.uid}", {
        "resourceType": "Encounter", "id": f"adm-{world.uid}", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": f"Patient/{world.patient}"}, "period": {"start": "2026-06-29T10:00:00Z"},
        "location": [{"location": {"display": "Ward 7 (respiratory)"}}]})
    with world.client(server, f"kw-{world.uid}") as c:
        c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, due=_day(-4)))
        r = c.get("/api/care/my-people")
        assert r.status_code == 200
        body = r.json()
        row = next(p for p in body["people"] if p["id"] == world.patient)
        assert row["i_am_key_worker"] and row["where"] == "in hospital (Ward 7 (respiratory))"
        assert row["overdue"] and row["overdue"][0]["kind"] == "task" and row["open_tasks"] == 1
        assert body["in_hospital"] >= 1 and body["key_worker_for"] >= 1
        c.cookies.set("joinedup_token", world.tokens[f"kw-{world.uid}"])
        page = c.get("/care/people")
        assert page.status_code == 200 and "in hospital" in page.text and "Server-Timing" in page.headers
    with world.client(server, f"nurse-{world.uid}") as c:
        row = next(p for p in c.get("/api/care/my-people").json()["people"] if p["id"] == world.patient)
        assert not row["i_am_key_worker"] and row["key_worker"]["name"] == f"Kim Keyworker{world.uid}"
    with world.client(server, f"far-{world.uid}") as c:
        assert all(p["id"] != world.patient for p in c.get("/api/care/my-people").json()["people"])


def test_my_tasks_page_and_status_change(server, world):
    with world.client(server, f"kw-{world.uid}") as c:
        t = c.post(f"/api/patients/{world.patient}/tasks", json=_task(world, owner_practitioner=world.nurse,
                                                                      owner_organization=world.community)).json()
    with world.client(server, f"nurse-{world.uid}") as c:
        c.cookies.set("joinedup_token", world.tokens[f"nurse-{world.uid}"])
        page = c.get("/care/tasks")
        assert page.status_code == 200 and "Review the home care package" in page.text
        ok = c.post(f"/care/tasks/{t['id']}", data={"status": "in-progress", "version": "1"}, follow_redirects=False)
        assert ok.status_code == 303
        stale = c.post(f"/care/tasks/{t['id']}", data={"status": "completed", "version": "1"})
        assert stale.status_code == 412 and "has changed since you opened it" in stale.text
        bad = c.post(f"/care/tasks/{t['id']}", data={"status": "exploded", "version": "2"})
        assert bad.status_code == 422
