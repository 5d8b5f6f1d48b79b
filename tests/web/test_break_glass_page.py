"""Emergency access from the web: the refusal page offers break-glass; the patient page then says so."""

from __future__ import annotations

from tests.web.test_pages import browser, csrf_of


def test_refused_professional_can_break_glass_and_sees_the_banner(server, api, uid):
    pid = f"bg-web-{uid}"
    r = api.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                               "name": [{"family": f"Glass{uid}", "given": ["Bea"]}],
                                               "birthDate": "1950-02-03"})
    assert r.status_code in (200, 201)
    with browser(server, "gp") as c:
        refused = c.get(f"/patients/{pid}")
        assert refused.status_code == 403
        assert "Emergency access (break glass)" in refused.text and 'name="reason_category"' in refused.text
        # a reason is required: a short one is refused with a clear page, nothing granted
        token = csrf_of(refused.text)  # the form on the refusal page carries it
        short = c.post(f"/patients/{pid}/break-glass", data={"reason_category": "emergency-treatment",
                                                            "reason": "now", "csrf_token": token})
        assert short.status_code == 400 and "at least 10 characters" in short.text
        assert c.get(f"/patients/{pid}").status_code == 403
        granted = c.post(f"/patients/{pid}/break-glass",
                         data={"reason_category": "emergency-treatment", "csrf_token": csrf_of(short.text),
                               "reason": "Brought to A&E unconscious; needs medicines list"})
        assert granted.status_code == 303 and granted.headers["location"] == f"/patients/{pid}"
        page = c.get(f"/patients/{pid}")
        assert page.status_code == 200
        assert "Emergency access (break glass):" in page.text and "reviewed by the privacy officer" in page.text
        assert f"Glass{uid}" in page.text
    # the grant is in the privacy officer's queue (read through the API as the integration account)
    queue = api.get("/api/privacy/reviews")
    assert queue.status_code == 200
    assert any(item.get("patient_id") == pid or item.get("patient") in (pid, f"Patient/{pid}")
               for item in (queue.json() if isinstance(queue.json(), list) else queue.json().get("reviews", [])))
