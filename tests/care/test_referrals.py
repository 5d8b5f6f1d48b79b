"""Referrals and advice and guidance over real HTTP: the whole conversation, both sides' status, response times,
and the refusals (closed conversation, no route, unknown recipient, no relationship)."""

from __future__ import annotations

import httpx
import pytest

from joinedup.care.referrals.service import measure_response_times, percentile
from tests.care.world import build
from tests.web.test_pages import csrf_of, form_token


@pytest.fixture(scope="module")
def world(server):
    import uuid

    return build(server, uuid.uuid4().hex[:6])


def _advice(c: httpx.Client, w, **kw) -> httpx.Response:
    body = {"patient_id": w.patient, "to": f"Practitioner/{w.consultant}", "text": "Advice please: BNP rising",
            "reason": "Heart failure"} | kw
    return c.post("/api/advice", json=body)


def test_advice_conversation_end_to_end(server, world):
    w = world
    with server.client("gp") as gp, w.client(server, f"cons-{w.uid}") as cons:
        # before the request the consultant has no relationship with the person
        assert cons.get(f"/fhir/Patient/{w.patient}").status_code == 403
        r = _advice(gp, w)
        assert r.status_code == 201, r.text
        a = r.json()
        assert a["kind"] == "advice" and a["state"] == "awaiting-reply" and a["side"] == "requester"
        assert a["recipient_organization"].startswith("Dale Teaching Hospitals")
        assert [m["kind"] for m in a["messages"]] == ["question"]
        # the open advice request is a legitimate relationship for the recipient
        assert cons.get(f"/fhir/Patient/{w.patient}").status_code == 200
        inbox = cons.get("/api/referrals", params={"box": "inbox"}).json()["items"]
        mine = next(i for i in inbox if i["id"] == a["id"])
        assert mine["side"] == "recipient" and mine["waiting_on"] == "recipient"
        # the recipient asks for more; the requester answers; the recipient replies
        r = cons.post(f"/api/advice/{a['id']}/ask-more", json={"text": "What is the eGFR?"})
        assert r.status_code == 200 and r.json()["state"] == "more-information-requested"
        assert r.json()["first_response"] is not None
        r = gp.post(f"/api/advice/{a['id']}/answer", json={"text": "eGFR 38, falling"})
        assert r.json()["state"] == "awaiting-reply"
        r = cons.post(f"/api/advice/{a['id']}/reply", json={"text": "Halve the diuretic; recheck in 2 weeks"})
        view = r.json()
        assert view["state"] == "replied"
        msgs = view["messages"]
        assert [m["kind"] for m in msgs] == ["question", "ask-more", "answer", "reply"]
        # each message answers the one before (Communication.inResponseTo), all based on the ServiceRequest
        assert [m["in_response_to"] for m in msgs[1:]] == [f"Communication/{m['id']}" for m in msgs[:-1]]
        comm = gp.get(f"/fhir/Communication/{msgs[-1]['id']}").json()
        assert comm["basedOn"] == [{"reference": f"ServiceRequest/{a['id']}"}]
        # both sides see the status
        out = gp.get("/api/referrals", params={"box": "outbox"}).json()["items"]
        assert next(i for i in out if i["id"] == a["id"])["state"] == "replied"
        # convert into a referral: a new ServiceRequest that replaces the advice request
        r = gp.post(f"/api/advice/{a['id']}/convert", json={"text": "Please see in heart failure clinic"})
        assert r.status_code == 201, r.text
        ref = r.json()
        assert ref["kind"] == "referral" and ref["replaces"] == [f"ServiceRequest/{a['id']}"]
        old = gp.get(f"/api/advice/{a['id']}").json()
        assert old["state"] == "converted" and old["replaced_by"] == [ref["id"]] and old["total_hours"] is not None
        sr = gp.get(f"/fhir/ServiceRequest/{ref['id']}").json()
        assert sr["status"] == "active" and sr["category"][0]["coding"][0]["code"] == "referral"
        # replying to a closed (converted) conversation is refused, nothing written
        before = len(old["messages"])
        r = cons.post(f"/api/advice/{a['id']}/reply", json={"text": "late thought"})
        assert r.status_code == 409
        assert r.json()["resourceType"] == "OperationOutcome" and "not sent" in r.json()["issue"][0]["diagnostics"]
        assert len(gp.get(f"/api/advice/{a['id']}").json()["messages"]) == before
        # the recipient closes the referral; the relationship it gave ends with it
        r = cons.post(f"/api/referrals/{ref['id']}/close", json={"text": "Seen and discharged"})
        assert r.status_code == 200 and r.json()["state"] == "closed"
        assert gp.get(f"/api/referrals/{ref['id']}").json()["state"] == "closed"
        r = gp.post(f"/api/referrals/{ref['id']}/answer", json={"text": "one more thing"})
        assert r.status_code == 409


def test_referral_create_and_response_times(server, world):
    w = world
    with server.client("gp") as gp, w.client(server, f"cons-{w.uid}") as cons:
        r = gp.post("/api/referrals", json={"patient_id": w.patient, "to": f"PractitionerRole/role-{w.consultant}",
                                            "text": "Breathless on exertion", "priority": "urgent"})
        assert r.status_code == 201, r.text
        ref = r.json()
        assert ref["kind"] == "referral" and ref["priority"] == "urgent" and ref["can"]["convert"] is False
        assert cons.post(f"/api/referrals/{ref['id']}/reply", json={"text": "Booked for clinic"}).status_code == 200
        a = _advice(gp, w).json()
        cons.post(f"/api/advice/{a['id']}/reply", json={"text": "Fine to continue"})
        gp.post(f"/api/advice/{a['id']}/close", json={})
        r = gp.get("/api/advice/response-times", params={"since": "2020-01-01"})
        assert r.status_code == 200
        m = r.json()
        assert m["requests"] >= 1 and m["answered"] >= 1 and m["first_reply_hours"]["median"] is not None
        assert m["total_hours"]["n"] >= 1
        assert gp.get("/api/advice/response-times", params={"since": "last week"}).status_code == 400
    with server.client("analyst") as an:
        assert an.get("/api/advice/response-times").status_code == 403


@pytest.mark.parametrize("case", ["unknown", "no-role", "objection", "no-relationship", "empty", "self",
                                  "bad-recipient", "bad-priority", "unknown-patient"])
def test_bad_requests_are_refused_clearly(server, world, case):
    w = world
    kw = {"unknown": {"to": "Practitioner/nobody-here"}, "no-role": {"to": f"Practitioner/{w.orphan}"},
          "objection": {"patient_id": w.objecting}, "no-relationship": {"patient_id": w.stranger},
          "empty": {"text": "   "}, "self": {"to": "Practitioner/gp-1"}, "bad-recipient": {"to": "Patient/x"},
          "bad-priority": {"priority": "whenever"}, "unknown-patient": {"patient_id": f"nobody-{w.uid}"}}[case]
    want = {"unknown": 404, "no-role": 422, "objection": 422, "no-relationship": 403, "empty": 422, "self": 422,
            # an unknown person is refused exactly as a person one has no relationship with (no existence oracle)
            "bad-recipient": 422, "bad-priority": 422, "unknown-patient": 403}[case]
    with server.client("gp") as gp:
        before = gp.get("/api/referrals", params={"box": "outbox"}).json()["items"]
        r = _advice(gp, w, **kw)
        assert r.status_code == want, r.text
        body = r.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
        if case in ("no-role", "objection"):
            assert "route" in body["issue"][0]["diagnostics"]
        assert len(gp.get("/api/referrals", params={"box": "outbox"}).json()["items"]) == len(before)


def test_only_the_two_sides_take_part(server, world):
    w = world
    with server.client("gp") as gp, w.client(server, f"gp2-{w.uid}") as colleague, \
            w.client(server, f"sw-{w.uid}") as sw:
        a = _advice(gp, w).json()
        # a colleague at the requesting practice is on the requester's side (organisation)
        r = colleague.post(f"/api/advice/{a['id']}/answer", json={"text": "Adding the latest BP"})
        assert r.status_code == 200, r.text
        # the requester cannot reply to their own question
        assert gp.post(f"/api/advice/{a['id']}/reply", json={"text": "x"}).status_code == 422
        # someone with no relationship cannot even read it
        assert sw.get(f"/api/advice/{a['id']}").status_code == 403
        assert gp.get("/api/referrals", params={"box": "sideways"}).status_code == 400
        # a request that does not exist reads like one the GP has no relationship with (no existence oracle)
        missing = gp.get("/api/advice/not-a-request")
        hidden = sw.get(f"/api/advice/{a['id']}")
        assert missing.status_code == hidden.status_code == 403


def test_percentiles_and_measure_from_resources():
    assert percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(1, 11)), 90) == pytest.approx(9.1)
    req = {"resourceType": "Communication", "id": "q1", "category": [{"text": "Advice and guidance request"}],
           "sent": "2026-01-01T09:00:00Z"}
    rep = {"resourceType": "Communication", "id": "r1", "inResponseTo": [{"reference": "Communication/q1"}],
           "sent": "2026-01-02T09:00:00Z"}
    unanswered = {**req, "id": "q2"}
    sr = {"resourceType": "ServiceRequest", "id": "s1", "authoredOn": "2026-01-01T00:00:00Z",
          "category": [{"coding": [{"system": "https://joinedup.example/fhir/CodeSystem/request-category",
                                    "code": "advice"}]}],
          "extension": [{"url": "https://joinedup.example/fhir/StructureDefinition/first-response",
                         "valueDateTime": "2026-01-01T12:00:00Z"},
                        {"url": "https://joinedup.example/fhir/StructureDefinition/closed",
                         "valueDateTime": "2026-01-03T00:00:00Z"}]}
    m = measure_response_times(requests=[sr], messages=[req, rep, unanswered], since="2025-12-01")
    assert m["requests"] == 3 and m["answered"] == 2 and m["unanswered"] == 1
    assert m["first_reply_hours"] == {"n": 2, "median": 18.0, "p90": 22.8}
    assert m["total_hours"]["n"] == 2 and m["total_hours"]["median"] == 36.0


def _web(server, user: str, token: str | None = None) -> httpx.Client:
    c = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    c.cookies.set("joinedup_token", token or server.tokens[user])
    return c


def test_pages_inbox_thread_reply_and_refusal_keeps_the_text(server, world):
    w = world
    with _web(server, "gp") as gp, _web(server, "", w.tokens[f"cons-{w.uid}"]) as cons:
        r = gp.get(f"/referrals/new?patient={w.patient}")
        assert r.status_code == 200 and f"Heart{w.uid}" in r.text and 'name="text"' in r.text
        token = csrf_of(r.text)
        r = gp.post("/referrals/new", data={"patient_id": w.patient, "kind": "advice", "csrf_token": token,
                                            "to": f"Practitioner/{w.consultant}", "text": "Is this angina?"})
        assert r.status_code == 303
        rid = r.headers["location"].rsplit("/", 1)[1]
        # bad input on the form: re-shown with the text kept and the reason
        r = gp.post("/referrals/new", data={"patient_id": w.patient, "kind": "advice", "to": "Practitioner/nope",
                                            "text": "keep me", "csrf_token": token})
        assert r.status_code == 404 and "keep me" in r.text and "not known" in r.text
        r = cons.get("/referrals")
        assert r.status_code == 200 and rid in r.text and "Awaiting reply" in r.text
        # HTMX reply swaps the thread in place (htmx sends the page's token in X-CSRF-Token)
        cons_token = form_token(cons, f"/referrals/{rid}")
        r = cons.post(f"/referrals/{rid}/reply", data={"text": "Sounds like it: start a GTN spray"},
                      headers={"HX-Request": "true", "X-CSRF-Token": cons_token})
        assert r.status_code == 200 and 'id="thread-body"' in r.text and "GTN spray" in r.text
        assert "<html" not in r.text
        r = gp.get(f"/referrals/{rid}")
        assert "Replied" in r.text and "Convert into a referral" in r.text
        assert gp.post(f"/referrals/{rid}/close", data={"text": "", "csrf_token": csrf_of(r.text)}).status_code == 303
        # a reply to the closed conversation (a stale page): refused, and the typed text is shown back
        r = gp.post(f"/referrals/{rid}/answer", data={"text": "my unsent words", "csrf_token": token})
        assert r.status_code == 409 and "my unsent words" in r.text and "not sent" in r.text
        r = cons.post(f"/referrals/{rid}/reply", data={"text": "late"},
                      headers={"HX-Request": "true", "X-CSRF-Token": cons_token})
        assert r.status_code in (200, 403)  # 200 partial with the refusal, or 403 once the relationship ended
        assert gp.get("/referrals?box=outbox&state=done").status_code == 200
        assert gp.get("/referrals?box=nonsense").status_code == 400
    with httpx.Client(base_url=server.url, follow_redirects=False) as anon:
        assert anon.get("/referrals").status_code == 303
