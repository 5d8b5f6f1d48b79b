"""A person's own view over real HTTP: their home is their record, without the clinicians' tools, and they can see
who has looked at it."""

from __future__ import annotations

import time

import httpx
import pytest

from joinedup.governance.identity import SYSTEM
from tests.web.test_pages import browser, csrf_of, form_token


@pytest.fixture()
def me(server, uid):
    """The test patient account's record (Patient/self-1), registered with the test GP's practice."""
    server.gate.update(SYSTEM, "Patient", "self-1", {
        "resourceType": "Patient", "id": "self-1", "meta": {"source": "Organization/practice-1"},
        "name": [{"given": ["Pat"], "family": f"Own{uid}"}],
        "birthDate": "1950-02-03", "generalPractitioner": [{"reference": "Organization/practice-1"},
                                                           {"reference": "Practitioner/gp-1"}]})
    server.gate.update(SYSTEM, "Organization", "practice-1", {"resourceType": "Organization", "id": "practice-1",
                                                              "name": "Riverside Surgery"})
    server.gate.update(SYSTEM, "Practitioner", "gp-1", {"resourceType": "Practitioner", "id": "gp-1",
                                                        "name": [{"prefix": ["Dr"], "given": ["Ann"], "family": "Owen"}]})
    return "self-1"


def test_home_is_my_record_without_clinician_tools(server, me):
    with browser(server, "pat") as c:
        r = c.get("/")
        assert r.status_code == 303 and r.headers["location"] == f"/patients/{me}"
        page = c.get(f"/patients/{me}").text
        assert "This is your record" in page and 'href="/me/access-log"' in page
        assert "Ask for advice or refer" not in page and "medicines-safety/panel" not in page
        assert "Search and my patients" not in page and "MDT reviews" not in page
        assert "In your own words: what matters to you" in page
        # someone else's record stays closed
        assert c.get("/patients/someone-else").status_code in (403, 404)


def test_who_has_looked_at_my_record(server, me):
    with browser(server, "pat") as c:
        c.get(f"/patients/{me}")  # my own visit
    with server.client("gp") as gp:
        assert gp.get(f"/fhir/Patient/{me}").status_code == 200
    server.gate.flush_audit()
    with browser(server, "pat") as c:
        page = c.get("/me/access-log").text
        assert "Who has looked at my record" in page
        assert "General practitioner" in page and "personal details" in page and "Riverside Surgery" in page
        assert "Dr Ann Owen" in page  # the directory name, not a log-in name
        assert "of your own visits are not shown" in page
        both = c.get("/me/access-log", params={"mine": 1}).text
        assert "Opened the whole record" in both and "Your own visits are included" in both
    # professionals use the privacy officer's tools, not this page
    with browser(server, "gp") as c:
        r = c.get("/me/access-log")
        assert r.status_code == 403 and "own record" in r.text


def test_the_person_adds_what_matters_in_their_own_words(server, me, uid):
    words = f"Being able to walk my dog every morning ({uid})"
    with browser(server, "pat") as c:
        page = c.get(f"/patients/{me}").text
        assert 'action="/me/what-matters"' in page
        token = csrf_of(page)
        r = c.post("/me/what-matters", data={"text": "   ", "csrf_token": token})
        assert r.status_code == 422 and "Write what matters to you" in r.text
        r = c.post("/me/what-matters", data={"text": words, "csrf_token": token})
        assert r.status_code == 303 and r.headers["location"].startswith(f"/patients/{me}")
        assert words in c.get(f"/patients/{me}").text
    # everyone caring for them sees it, marked as the person's own words (it cannot pass for the GP's entry)
    with server.client("gp") as gp:
        about = gp.get(f"/api/patients/{me}/summary").json()["what_matters"]
        mine = [w for w in about if w["text"] == words]
        assert mine and mine[0]["written_by"] == "the person"
        assert mine[0]["provenance"]["source"]["name"] == "The person themselves"
    # professionals record what matters in the care plan, not here
    with browser(server, "gp") as c:
        assert c.post("/me/what-matters", data={"text": "x", "csrf_token": form_token(c, "/")}).status_code == 403


def test_a_persons_entries_are_stamped_as_theirs(server, me):
    """A patient account cannot make its own entry look like an organisation's (meta.source is set by the gate)."""
    with server.client("pat") as c:
        r = c.post("/fhir/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": "Home blood pressure"},
            "meta": {"source": "Organization/practice-1"}, "subject": {"reference": f"Patient/{me}"},
            "valueString": "130/80"})
        assert r.status_code == 201, r.text
        assert r.json()["meta"]["source"] == f"Patient/{me}"


def test_the_person_asks_for_a_correction(server, me, uid):
    words = f"I stopped taking naproxen in March ({uid})"
    with browser(server, "pat") as c:
        page = c.get(f"/patients/{me}").text
        assert 'action="/me/correction"' in page and '<option value="practice-1">' in page
        token = csrf_of(page)
        r = c.post("/me/correction", data={"text": "", "organisation": "practice-1", "csrf_token": token})
        assert r.status_code == 422 and "Say what is wrong or missing" in r.text
        r = c.post("/me/correction", data={"text": words, "organisation": "../etc", "csrf_token": token})
        assert r.status_code == 422
        r = c.post("/me/correction", data={"text": words, "organisation": "practice-1", "csrf_token": token})
        assert r.status_code == 303 and r.headers["location"] == f"/patients/{me}?asked=1"
        assert "Your message is in your record" in c.get(r.headers["location"]).text
    with server.client("gp") as gp:
        found = gp.get("/fhir/Communication", params={
            "subject": f"Patient/{me}", "category": "https://joinedup.example/fhir/CodeSystem/person-request|correction"
        }).json()
        mine = [e["resource"] for e in found.get("entry", []) if e["resource"]["payload"][0]["contentString"] == words]
        assert mine and mine[0]["meta"]["source"] == f"Patient/{me}"
        assert mine[0]["recipient"] == [{"reference": "Organization/practice-1"}]
        # the GP hears about it in their inbox
        deadline = time.time() + 5
        while True:
            items = [i for i in gp.get("/api/inbox").json()["items"] if i["event"] == "correction-request"
                     and words[:40] in i["detail"]]
            if items or time.time() > deadline:
                break
            time.sleep(0.05)
        assert items and items[0]["patient"]["id"] == me
    with browser(server, "gp") as c:
        assert c.post("/me/correction", data={"text": "x", "csrf_token": form_token(c, "/")}).status_code == 403


def test_a_correction_request_reaches_the_organisation_named(server, me, uid):
    """Staff of the organisation the person names hear about it even when they are not the named GP."""
    from joinedup.governance.accounts import add_user, issue_token

    add_user(server.gate, name=f"gp2-{uid}", password="pw", role="gp", practitioner=f"gp2-{uid}",
             organization="practice-1", replace=True)
    token = issue_token(server.gate, f"gp2-{uid}")
    words = f"My address is wrong ({uid})"
    with browser(server, "pat") as c:
        csrf = form_token(c, f"/patients/{me}")
        assert c.post("/me/correction", data={"text": words, "organisation": "practice-1",
                                              "csrf_token": csrf}).status_code == 303
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as gp2:
        deadline = time.time() + 5
        while True:
            items = [i for i in gp2.get("/api/inbox").json()["items"] if i["event"] == "correction-request"
                     and words in i["detail"]]
            if items or time.time() > deadline:
                break
            time.sleep(0.05)
        assert items
