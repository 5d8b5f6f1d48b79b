"""Notifications over HTTP: events from committed writes reach the people who care, once, collapsed; choices per
user; the inbox reads people's details through the gate; FHIR Subscription rest-hooks for external systems."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from joinedup.governance.accounts import add_user, issue_token
from joinedup.governance.identity import SYSTEM


def iso(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class World:
    uid: str
    patient: str
    practice: str
    hospital: str
    ward: str
    tokens: dict
    practitioners: dict
    care_team: str


def make_world(gate, uid: str) -> World:
    """A person with a registered GP and a care team (consultant, key worker, community nurse), plus an outsider."""
    hospital, practice, ward = f"hosp-{uid}", f"prac-{uid}", f"ward-{uid}"
    for oid, name in ((hospital, f"Test Hospital {uid}"), (practice, f"Test Surgery {uid}")):
        gate.update(SYSTEM, "Organization", oid, {"resourceType": "Organization", "id": oid, "name": name})
    gate.update(SYSTEM, "Location", ward, {"resourceType": "Location", "id": ward, "name": f"Ward 7 ({uid})",
                                           "managingOrganization": {"reference": f"Organization/{hospital}"}})
    prs = {k: f"{k}-{uid}" for k in ("gp", "cons", "kw", "nurse", "out")}
    for pr in prs.values():
        gate.update(SYSTEM, "Practitioner", pr, {"resourceType": "Practitioner", "id": pr,
                                                  "name": [{"family": pr}]})
    pid = f"pat-{uid}"
    gate.update(SYSTEM, "Patient", pid, {
        "resourceType": "Patient", "id": pid, "name": [{"given": ["Ada"], "family": f"Lovelace{uid}"}],
        "birthDate": "1940-02-03", "managingOrganization": {"reference": f"Organization/{practice}"},
        "generalPractitioner": [{"reference": f"Organization/{practice}"},
                                {"reference": f"Practitioner/{prs['gp']}"}]})
    ct = f"ct-{uid}"
    gate.update(SYSTEM, "CareTeam", ct, {
        "resourceType": "CareTeam", "id": ct, "status": "active", "subject": {"reference": f"Patient/{pid}"},
        "participant": [
            {"role": [{"text": "Consultant"}], "member": {"reference": f"Practitioner/{prs['cons']}"},
             "onBehalfOf": {"reference": f"Organization/{hospital}"}},
            {"role": [{"text": "care coordinator"}], "member": {"reference": f"Practitioner/{prs['kw']}"}},
            {"role": [{"text": "Community nurse"}], "member": {"reference": f"Practitioner/{prs['nurse']}"}}]})
    roles = {"gp": ("gp", practice), "cons": ("consultant", hospital), "kw": ("care-coordinator", f"comm-{uid}"),
             "nurse": ("community-nurse", f"comm-{uid}"), "out": ("gp", f"other-{uid}")}
    tokens = {}
    for key, (role, org) in roles.items():
        name = f"{key}.{uid}"
        add_user(gate, name=name, role=role, practitioner=prs[key], organization=org, replace=True,
                 display=f"{key} {uid}")
        tokens[key] = issue_token(gate, name)
    return World(uid, pid, practice, hospital, ward, tokens, prs, ct)


def drop_users(gate, uid: str) -> None:
    """Remove a world's user accounts again (the session database is shared with tests that list users)."""
    import sqlalchemy as sa

    from joinedup.store import schema

    names = [f"{k}.{uid}" for k in ("gp", "cons", "kw", "nurse", "out")]
    with gate.store_for_tests.writing() as conn:
        conn.execute(sa.delete(schema.api_token).where(schema.api_token.c.user_name.in_(names)))
        conn.execute(sa.delete(schema.app_user).where(schema.app_user.c.name.in_(names)))


def client(server, token):
    import httpx

    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def wait_for(fn, timeout: float = 5.0):
    deadline = time.time() + timeout
    while True:
        value = fn()
        if value or time.time() > deadline:
            return value
        time.sleep(0.05)


def items(server, world, who, event=None, source=None):
    with client(server, world.tokens[who]) as c:
        r = c.get("/api/inbox")
        assert r.status_code == 200, r.text
        return [i for i in r.json()["items"] if (event is None or i["event"] == event)
                and (source is None or i["source"] == source)]


def admission(world, *, status="in-progress", cls="IMP", end=None) -> dict:
    enc = {"resourceType": "Encounter", "status": status,
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": cls},
           "type": [{"text": "Emergency admission"}], "serviceType": {"text": "Acute medicine"},
           "subject": {"reference": f"Patient/{world.patient}"},
           "period": {"start": iso(timedelta(hours=-2)), **({"end": end} if end else {})},
           "location": [{"location": {"reference": f"Location/{world.ward}"}}]}
    return enc


@pytest.fixture()
def world(server, uid) -> World:
    yield make_world(server.gate, uid)
    drop_users(server.gate, uid)


def test_admission_reaches_gp_care_team_and_key_worker_not_outsiders(server, world, api):
    r = api.post("/fhir/Encounter", json=admission(world))
    assert r.status_code == 201, r.text
    ref = f"Encounter/{r.json()['id']}"
    for who in ("gp", "cons", "kw", "nurse"):
        got = wait_for(lambda w=who: items(server, world, w, "admission", ref))
        assert got, f"{who} got no admission notification"
        item = got[0]
        assert item["patient"]["id"] == world.patient
        assert item["patient"]["name"] == f"Ada Lovelace{world.uid}"
        assert f"Ward 7 ({world.uid})" in item["detail"]
        assert item["count"] == 1 and item["read"] is False
    assert items(server, world, "out") == []


def test_repeats_collapse_into_one_item_with_a_count_and_discharge_follows(server, world, api):
    enc = api.post("/fhir/Encounter", json=admission(world)).json()
    ref = f"Encounter/{enc['id']}"
    assert wait_for(lambda: items(server, world, "gp", "admission", ref))
    for _ in range(2):  # the same admission re-sent by the hospital system
        assert api.put(f"/fhir/Encounter/{enc['id']}", json=enc).status_code == 200
    got = wait_for(lambda: [i for i in items(server, world, "gp", "admission", ref) if i["count"] == 3])
    assert len(items(server, world, "gp", "admission", ref)) == 1 and got[0]["count"] == 3
    done = {**{k: v for k, v in enc.items() if k != "meta"}, "status": "finished",
            "period": {"start": enc["period"]["start"], "end": iso()},
            "hospitalization": {"dischargeDisposition": {"text": "Usual place of residence"}}}
    assert api.put(f"/fhir/Encounter/{enc['id']}", json=done).status_code == 200
    got = wait_for(lambda: items(server, world, "kw", "discharge", ref))
    assert got and "Usual place of residence" in got[0]["detail"]


def test_other_event_types(server, world, api):
    pr = world.practitioners
    ae = api.post("/fhir/Encounter", json=admission(world, cls="EMER")).json()
    req = api.post("/fhir/Communication", json={
        "resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{world.patient}"},
        "category": [{"text": "Advice and guidance request"}], "sent": iso(timedelta(days=-1)),
        "sender": {"reference": f"Practitioner/{pr['gp']}"}, "recipient": [{"reference": f"Practitioner/{pr['cons']}"}],
        "payload": [{"contentString": "Advice please"}]}).json()
    api.post("/fhir/Communication", json={
        "resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{world.patient}"},
        "category": [{"text": "Advice and guidance response"}], "sent": iso(),
        "inResponseTo": [{"reference": f"Communication/{req['id']}"}],
        "sender": {"reference": f"Practitioner/{pr['cons']}"}, "recipient": [{"reference": f"Practitioner/{pr['gp']}"}],
        "payload": [{"contentString": "Reduce the diuretic"}]})
    api.post("/fhir/Task", json={
        "resourceType": "Task", "status": "requested", "intent": "order", "description": "Review medicines",
        "for": {"reference": f"Patient/{world.patient}"}, "owner": {"reference": f"Practitioner/{pr['nurse']}"},
        "restriction": {"period": {"end": iso(timedelta(days=-2))}}})
    api.post("/fhir/CarePlan", json={"resourceType": "CarePlan", "status": "active", "intent": "plan",
                                     "title": "Shared plan", "subject": {"reference": f"Patient/{world.patient}"}})
    want = {"ae-attendance": f"Encounter/{ae['id']}", "advice-reply": f"Communication/{req['id']}",
            "overdue-task": None, "care-plan-change": None}
    for event, source in want.items():
        got = wait_for(lambda e=event, s=source: items(server, world, "gp", e, s))
        assert got, f"no {event}"
    assert "Reduce the diuretic" in items(server, world, "gp", "advice-reply")[0]["detail"]


def test_choices_per_user_and_bad_choices(server, world, api):
    with client(server, world.tokens["nurse"]) as c:
        r = c.get("/api/subscriptions")
        assert r.status_code == 200 and all(r.json()["events"].values())
        r = c.put("/api/subscriptions", json={"admission": False})
        assert r.status_code == 200 and r.json()["events"]["admission"] is False
        assert c.put("/api/subscriptions", json={"bogus": True}).status_code == 400
        bad = c.put("/api/subscriptions", json={"admission": "yes"})
        assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    ref = f"Encounter/{api.post('/fhir/Encounter', json=admission(world)).json()['id']}"
    assert wait_for(lambda: items(server, world, "gp", "admission", ref))
    server.gate and time.sleep(0.2)
    assert items(server, world, "nurse", "admission", ref) == []


def test_delivery_and_reading_follow_the_care_relationship(server, world, api):
    ref = f"Encounter/{api.post('/fhir/Encounter', json=admission(world)).json()['id']}"
    assert wait_for(lambda: items(server, world, "kw", "admission", ref))
    # the key worker leaves the care team: no new notifications, and earlier ones no longer show who it was
    team = api.get(f"/fhir/CareTeam/{world.care_team}").json()
    team["participant"] = [p for p in team["participant"] if world.practitioners["kw"] not in p["member"]["reference"]]
    team.pop("meta")
    assert api.put(f"/fhir/CareTeam/{world.care_team}", json=team).status_code == 200
    pat = api.get(f"/fhir/Patient/{world.patient}").json()
    pat.pop("meta")
    pat["deceasedDateTime"] = iso()
    assert api.put(f"/fhir/Patient/{world.patient}", json=pat).status_code == 200
    assert wait_for(lambda: items(server, world, "gp", "death"))
    assert items(server, world, "kw", "death") == []
    old = items(server, world, "kw", "admission")
    assert old and old[0]["patient"]["id"] is None and old[0]["patient"]["name"] is None and old[0]["detail"] is None


def test_mark_read_and_refusals(server, world, api):
    ref = f"Encounter/{api.post('/fhir/Encounter', json=admission(world)).json()['id']}"
    got = wait_for(lambda: items(server, world, "cons", "admission", ref))
    with client(server, world.tokens["cons"]) as c:
        before = c.get("/api/inbox").json()["unread"]
        assert c.post(f"/api/inbox/{got[0]['id']}/read").json() == {"marked": 1}
        assert c.get("/api/inbox").json()["unread"] == before - 1
        assert c.post("/api/inbox/999999999/read").status_code == 404
    with client(server, world.tokens["gp"]) as c:  # someone else's item
        assert c.post(f"/api/inbox/{got[0]['id']}/read").status_code == 404
    with server.client("pat") as c:
        assert c.get("/api/inbox").status_code == 403
    with server.client(None) as c:
        assert c.get("/api/inbox").status_code == 401


class _Receiver:
    """A tiny rest-hook receiver on loopback."""

    def __init__(self, status: int = 200) -> None:
        self.calls: list[tuple[dict, bytes, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls.append((dict(self.headers), body, time.time()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def subscription(endpoint: str, criteria: str = "Encounter?class=IMP", **channel) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "reason": "Bed management", "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "header": ["Authorization: Bearer hook-secret"], **channel}}


def test_rest_hook_subscription_delivers_matching_resources(server, world, api):
    rx = _Receiver()
    try:
        sub = api.post("/fhir/Subscription", json=subscription(rx.url, f"Encounter?class=IMP&subject=Patient/{world.patient}"))
        assert sub.status_code == 201, sub.text
        enc = api.post("/fhir/Encounter", json=admission(world)).json()
        api.post("/fhir/Encounter", json=admission(world, cls="AMB", status="finished", end=iso()))
        assert wait_for(lambda: rx.calls)
        time.sleep(0.3)
        assert len(rx.calls) == 1
        headers, body, _ = rx.calls[0]
        assert headers.get("Authorization") == "Bearer hook-secret"
        bundle = json.loads(body)
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
        assert bundle["entry"][0]["resource"]["id"] == enc["id"]
        assert wait_for(lambda: api.get(f"/fhir/Subscription/{sub.json()['id']}").json()["status"] == "active")
    finally:
        rx.close()


def test_rest_hook_failures_are_retried_then_recorded(server, world, api, monkeypatch):
    from joinedup.care.notifications import subscriptions

    monkeypatch.setattr(subscriptions, "BACKOFF", (0.05, 0.1))
    rx = _Receiver(status=503)
    try:
        sub = api.post("/fhir/Subscription", json=subscription(rx.url, f"Encounter?subject=Patient/{world.patient}"))
        api.post("/fhir/Encounter", json=admission(world))
        got = wait_for(lambda: api.get(f"/fhir/Subscription/{sub.json()['id']}").json().get("status") == "error")
        assert got
        s = api.get(f"/fhir/Subscription/{sub.json()['id']}").json()
        assert "503" in s["error"] and len(rx.calls) == 3
        s.pop("meta")
        s["status"] = "off"
        api.put(f"/fhir/Subscription/{s['id']}", json=s)
    finally:
        rx.close()


@pytest.mark.parametrize("channel, where", [
    ({"endpoint": "ftp://127.0.0.1/hook"}, "Subscription.channel.endpoint"),
    ({"endpoint": "javascript:alert(1)"}, "Subscription.channel.endpoint"),
    ({"type": "email", "endpoint": "mailto:a@example.org"}, "Subscription.channel.type"),
])
def test_undeliverable_subscriptions_are_refused(api, channel, where):
    sub = subscription("http://127.0.0.1:9/x")
    sub["channel"].update(channel)
    r = api.post("/fhir/Subscription", json=sub)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == [where]
