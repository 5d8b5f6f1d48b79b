"""Medicines safety in the web app over real HTTP: the panel on the person page, the full page with the least-harm
proposal, and recording a clinician's review of an alert (kept in the person's record)."""

from __future__ import annotations

import re

import pytest

from joinedup.governance.accounts import add_user
from joinedup.governance.identity import SYSTEM
from tests.web.test_pages import browser, csrf_of, form_token, login


def _med(pid: str, i: int, text: str, dose: str = "As directed") -> dict:
    return {"resourceType": "MedicationRequest", "id": f"{pid}-m{i}", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"}, "authoredOn": "2026-01-10",
            "meta": {"source": "Organization/practice-1"},
            "medicationCodeableConcept": {"text": text}, "dosageInstruction": [{"text": dose}]}


@pytest.fixture()
def person(server, uid):
    """Registered with the test GP's practice; heart failure on naproxen (high), alendronic acid with calcium
    (administration timing); a council social worker on the care team."""
    g = server.gate
    pid = f"safe-{uid}"
    sw = f"sw-{uid}"
    g.update(SYSTEM, "Practitioner", sw, {"resourceType": "Practitioner", "id": sw,
                                          "name": [{"given": ["Sam"], "family": f"Social{uid}"}]})
    g.update(SYSTEM, "Patient", pid, {"resourceType": "Patient", "id": pid, "birthDate": "1944-05-06",
                                      "name": [{"given": ["Ada"], "family": f"Safety{uid}"}],
                                      "generalPractitioner": [{"reference": "Organization/practice-1"}]})
    for i, text in enumerate(("Heart failure", "Osteoporosis")):
        g.update(SYSTEM, "Condition", f"{pid}-c{i}", {
            "resourceType": "Condition", "id": f"{pid}-c{i}", "subject": {"reference": f"Patient/{pid}"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]}, "code": {"text": text}})
    for i, (text, dose) in enumerate((("Naproxen 500mg tablets", "One tablet twice a day"),
                                      ("Alendronic acid 70mg tablets", "One tablet once a week"),
                                      ("Colecalciferol 400unit / Calcium carbonate 1.5g chewable tablets",
                                       "Chew one tablet twice a day"))):
        g.update(SYSTEM, "MedicationRequest", f"{pid}-m{i}", _med(pid, i, text, dose))
    g.update(SYSTEM, "CareTeam", f"{pid}-ct", {
        "resourceType": "CareTeam", "id": f"{pid}-ct", "status": "active", "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"member": {"reference": f"Practitioner/{sw}"}}]})
    add_user(g, name=sw, password=f"{sw}-pw", role="social-worker", practitioner=sw,
             organization=f"council-{uid}", replace=True)
    return {"id": pid, "sw": sw}


def _fingerprints(page: str) -> list[str]:
    return re.findall(r'name="fingerprint" value="([0-9a-f]+)"', page)


def test_panel_on_the_person_page(server, person):
    with browser(server) as c:
        r = c.get(f"/patients/{person['id']}")
        assert r.status_code == 200 and f'hx-get="/patients/{person["id"]}/medicines-safety/panel"' in r.text
        r = c.get(f"/patients/{person['id']}/medicines-safety/panel", headers={"HX-Request": "true"})
        assert r.status_code == 200
        assert "Medicines safety" in r.text and "to review" in r.text
        assert "Anti-inflammatory" in r.text or "NSAID" in r.text
        assert "Naproxen 500mg tablets" in r.text and "Heart failure" in r.text
        # without HTMX the panel address leads to the full page
        r = c.get(f"/patients/{person['id']}/medicines-safety/panel")
        assert r.status_code == 303 and r.headers["location"].endswith("/medicines-safety")


def test_full_page_orders_by_severity_and_proposes_changes(server, person):
    with browser(server) as c:
        r = c.get(f"/patients/{person['id']}/medicines-safety")
        assert r.status_code == 200
        text = r.text
        assert "do not replace, clinical judgement" in text
        high, moderate = text.find("<span class=\"safety__severity\">High"), text.find(
            "<span class=\"safety__severity\">Moderate")
        assert 0 < high < moderate
        assert "Separate the times" in text and "Suggested changes with the least harm" in text
        assert "Alendronic acid 70mg tablets" in text and "Calcium carbonate 1.5g" in text
        assert len(_fingerprints(text)) >= 2


def test_recording_a_review(server, person):
    pid = person["id"]
    with browser(server) as c:
        page = c.get(f"/patients/{pid}/medicines-safety").text
        fps, token = _fingerprints(page), csrf_of(page)
        # keeping it as it is needs a reason: refused, the page says why, nothing recorded
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": fps[0], "outcome": "overridden", "comment": "", "csrf_token": token})
        assert r.status_code == 422 and "say why it stays as it is" in r.text and "Nothing was recorded" in r.text
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": fps[0], "outcome": "maybe", "csrf_token": token})
        assert r.status_code == 422
        with server.client("gp") as api:
            assert not any(f["acknowledged"] for f in api.get(f"/api/patients/{pid}/conflicts").json()["findings"])
        # an alert that is not (or no longer) on the record cannot be acknowledged
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": "0" * 32, "outcome": "accepted", "csrf_token": token})
        assert r.status_code == 409 and "changed or gone" in r.text
        # a real review
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": fps[0], "outcome": "overridden", "comment": "Specialist advice: short course",
                         "csrf_token": token})
        assert r.status_code == 303 and r.headers["location"].endswith("/medicines-safety?reviewed=1")
        page = c.get(r.headers["location"]).text
        assert "Your review is recorded" in page and "Already reviewed (1)" in page
        assert "Specialist advice: short course" in page and fps[0] not in _fingerprints(page)
    with server.client("gp") as api:
        findings = api.get(f"/api/patients/{pid}/conflicts").json()["findings"]
        assert [f["fingerprint"] for f in findings if f["acknowledged"]] == [fps[0]]
        bundle = api.get("/fhir/ClinicalImpression", params={"patient": pid}).json()
        assert bundle["total"] == 1
        ci = bundle["entry"][0]["resource"]
        assert ci["code"]["coding"][0]["code"] == "overridden" and ci["note"][0]["text"].startswith("Specialist")
        assert "medicines safety page" in ci["code"]["text"]


def test_a_changed_medicine_brings_the_alert_back(server, person):
    pid = person["id"]
    with browser(server) as c:
        page = c.get(f"/patients/{pid}/medicines-safety").text
        nsaid_fp = re.search(r'id="f-([0-9a-f]+)">\s*<p class="flag flag--high', page).group(1)
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": nsaid_fp, "outcome": "accepted", "csrf_token": csrf_of(page)})
        assert r.status_code == 303
        assert nsaid_fp not in _fingerprints(c.get(f"/patients/{pid}/medicines-safety").text)
        server.gate.update(SYSTEM, "MedicationRequest", f"{pid}-m0",
                           _med(pid, 0, "Naproxen 500mg tablets", "Two tablets twice a day"))
        page = c.get(f"/patients/{pid}/medicines-safety").text
        assert re.search(r'id="f-[0-9a-f]+">\s*<p class="flag flag--high', page)  # back, with a new fingerprint


def test_roles_and_login(server, person):
    pid, sw = person["id"], person["sw"]
    with browser(server, None) as c:
        r = c.get(f"/patients/{pid}/medicines-safety")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    # a social worker on the care team sees the record but not the clinical checks, and cannot record reviews
    with browser(server, None) as c:
        r = login(c, sw, f"{sw}-pw")
        assert r.status_code == 303
        r = c.get(f"/patients/{pid}/medicines-safety/panel", headers={"HX-Request": "true"})
        assert r.status_code == 200 and "your role does not see" in r.text and "Naproxen" not in r.text
        # (no review form is shown to this role: a forged post with the session's own token is still refused)
        token = form_token(c, f"/patients/{pid}")
        r = c.post(f"/patients/{pid}/medicines-safety/review",
                   data={"fingerprint": "0" * 32, "outcome": "accepted", "csrf_token": token})
        assert r.status_code == 403 and "clinical role" in r.text
    # the refusal is audited like any other
    from joinedup.governance.audit import search_events

    server.gate.flush_audit()
    _, events = search_events(server.gate.store_for_tests, patient_id=pid, count=50, offset=0)
    assert any(e["outcome"] != "0" and e["agent"][0]["who"]["display"] == sw and
               "clinical role" in e.get("outcomeDesc", "") for e in events)
    # no relationship at all: the refusal page, which offers break-glass
    with browser(server, "analyst") as c:
        r = c.get(f"/patients/{pid}/medicines-safety")
        assert r.status_code == 403


def test_each_clinician_tunes_their_alerts(server, person, uid):
    """A GP hides moderate and low alerts: the page and the panel say how many are hidden, high alerts stay, CDS
    cards for that GP follow the same setting, and other clinicians are unaffected."""
    import uuid

    import httpx

    from joinedup.governance.accounts import issue_token

    pid, name = person["id"], f"tuned-{uid}"
    add_user(server.gate, name=name, password=f"{name}-pw", role="gp", practitioner="gp-1",
             organization="practice-1", replace=True)
    token = issue_token(server.gate, name)
    hook = {"hook": "patient-view", "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/gp-1", "patientId": pid}}
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as api:
        assert api.get("/api/me/alert-settings").json()["min_severity"] == "low"
        before = api.post("/cds-services/joinedup-conflicts-patient-view", json=hook).json()["cards"]
        assert any("separate administration times" in c["summary"] for c in before)  # moderate
        assert api.put("/api/me/alert-settings", json={"min_severity": "critical"}).status_code == 422
        assert api.put("/api/me/alert-settings", content=b"{nope").status_code == 400
        assert api.put("/api/me/alert-settings", json={"min_severity": "high"}).json() == {"min_severity": "high"}
        after = api.post("/cds-services/joinedup-conflicts-patient-view", json=dict(hook, hookInstance=str(uuid.uuid4()))).json()["cards"]
        assert after and not any("separate administration times" in c["summary"] for c in after)
        assert any("heart failure" in c["summary"].lower() for c in after)  # the high NSAID alert stays
    with browser(server, None) as c:
        assert login(c, name, f"{name}-pw").status_code == 303
        page = c.get(f"/patients/{pid}/medicines-safety").text
        assert "lower-severity" in page and "hidden" in page and "Naproxen 500mg tablets" in page
        assert "need separate administration times" not in page.split("Suggested changes")[0]
        panel = c.get(f"/patients/{pid}/medicines-safety/panel", headers={"HX-Request": "true"}).text
        assert "hidden by your settings" in panel
        # back to every alert through the page's own form
        r = c.post(f"/patients/{pid}/medicines-safety/settings",
                   data={"min_severity": "low", "csrf_token": csrf_of(page)})
        assert r.status_code == 303
        assert "need separate administration times" in c.get(f"/patients/{pid}/medicines-safety").text
    # the test GP's own setting was never touched
    with server.client("gp") as api:
        assert api.get("/api/me/alert-settings").json()["min_severity"] == "low"
    with server.client("pat") as api:
        assert api.put("/api/me/alert-settings", json={"min_severity": "high"}).status_code == 403
