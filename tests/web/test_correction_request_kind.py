"""A person's request to correct their record shows as a correction request in the holistic summary and on the
person page, not as an advice request (issue 13): what it is comes from fhir.words.message_kind, the same
vocabulary the inbox and the referrals pages use."""

from __future__ import annotations

from joinedup.governance.identity import SYSTEM
from tests.web.test_pages import browser, csrf_of
from tests.web.test_patient_view import me  # noqa: F401 - the patient account's record (a fixture)


def test_correction_request_is_not_an_advice_request(server, me, uid):  # noqa: F811
    words = f"My allergy to penicillin is missing ({uid})"
    with browser(server, "pat") as c:
        token = csrf_of(c.get(f"/patients/{me}").text)
        r = c.post("/me/correction", data={"text": words, "organisation": "practice-1", "csrf_token": token})
        assert r.status_code == 303
    # an advice request between professionals about the same person, as a GP system sends it
    server.gate.update(SYSTEM, "Communication", f"advice-{uid}", {
        "resourceType": "Communication", "id": f"advice-{uid}", "status": "in-progress",
        "meta": {"source": "Organization/practice-1"}, "category": [{"text": "Advice and guidance request"}],
        "subject": {"reference": f"Patient/{me}"}, "sent": "2026-10-01T09:00:00Z",
        "payload": [{"contentString": f"Please advise on the dose ({uid})"}]})
    with server.client("gp") as gp:
        referrals = gp.get(f"/api/patients/{me}/summary").json()["referrals"]
    mine = [r for r in referrals if r.get("detail") == words]
    assert [r["kind"] for r in mine] == ["correction request"]
    assert mine[0]["title"] == "Correction request"
    advice = [r for r in referrals if r.get("detail") == f"Please advise on the dose ({uid})"]
    assert [r["kind"] for r in advice] == ["advice request"]
    with browser(server, "gp") as c:
        page = c.get(f"/patients/{me}").text
    section = page[page.index('id="referrals"'):]
    assert "Correction request" in section and words in section
