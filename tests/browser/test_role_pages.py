"""In the browser, as each role that uses them: the privacy officer's reviews (break-glass decision, audit search,
subject access report, objections and opt-outs), the analyst's extracts and reports, the pharmacist's medicines
review worklist, the social care view of a person, and one status vocabulary across pages."""

from __future__ import annotations

import io
import json
import re
import zipfile
from datetime import UTC, datetime, timedelta

from tests.browser.conftest import shot
from tests.browser.test_roles_crawl import login


def _user(gate, name):
    from joinedup.governance.accounts import get_user

    return get_user(gate, name)


def _stranger_patient(demo, user: str) -> str:
    """A person the user has no relationship with (so break-glass is their only way in)."""
    from joinedup.governance.identity import SYSTEM

    who = _user(demo.gate, user)
    for s in demo.gate.search(SYSTEM, "Patient", [("_count", "200")]).matches:
        if (s.content.get("name") and not demo.gate.relationship_of(who, s.id)
                and not s.content.get("deceasedDateTime")):  # a named person (pages find them by name)
            return s.id
    raise AssertionError("everyone is known to the user")


def test_privacy_officer_reviews_emergency_access(demo, chromium):
    from joinedup.governance.identity import SYSTEM

    pid = _stranger_patient(demo, "dr.consultant")
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    # the consultant is refused, and uses emergency access from the refusal page
    login(page, demo.url, "dr.consultant")
    resp = page.goto(f"{demo.url}/patients/{pid}")
    assert resp.status == 403
    refusal = page.locator("main").inner_text()
    assert "/api/" not in refusal and "POST" not in refusal  # plain words, no API paths
    page.select_option("#bg-category", "emergency-treatment")
    page.fill("#bg-reason", "Unconscious in the emergency department, no records available")
    page.get_by_role("button", name="Use emergency access").click()
    page.wait_for_url(re.compile(f".*/patients/{pid}$"))
    assert "Emergency access (break glass):" in page.locator("main").inner_text()
    # the privacy officer's home is the review queue, with the grant waiting for a decision
    p2 = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB").new_page()
    login(p2, demo.url, "privacy.officer")
    assert p2.url.endswith("/privacy")
    name = demo.gate.read(SYSTEM, "Patient", pid).content["name"][0]["family"]
    card = p2.locator("article.review", has_text="dr.consultant").filter(has_text=name).first
    assert "Unconscious in the emergency department" in card.inner_text()
    assert pid not in card.inner_text()  # the person by name, never their record id
    shot(p2, "role-privacy-queue", full_page=True)
    # an "inappropriate" outcome without a note is refused and keeps the choice
    card.get_by_label("Inappropriate (follow up)").check()
    card.get_by_role("button", name="Record review").click()
    assert p2.get_by_role("alert").inner_text().startswith("Say what was inappropriate")
    card = p2.locator("article.review", has_text="dr.consultant").filter(has_text=name).first
    assert card.get_by_label("Inappropriate (follow up)").is_checked()
    card.get_by_label("Appropriate", exact=True).check()
    card.get_by_label("Note (required when inappropriate)").fill("Emergency department attendance confirmed")
    card.get_by_role("button", name="Record review").click()
    p2.wait_for_selector("text=Your review is recorded")
    from joinedup.governance import service

    officer = _user(demo.gate, "privacy.officer")
    # this test's grant (another test file may have put a grant of its own, already reviewed, on the same person)
    reviewed = [g for g in service.review_queue(demo.gate, officer, status="reviewed", limit=100_000)
                if g["patient"] == f"Patient/{pid}" and g["user"] == "dr.consultant"
                and g["reason"].startswith("Unconscious in the emergency department")]
    assert len(reviewed) == 1 and reviewed[0]["outcome"] == "appropriate"
    assert reviewed[0]["reviewed_by"] == "privacy.officer"
    # the audit search by user and date finds the consultant's emergency access
    today = datetime.now(UTC).date().isoformat()
    p2.goto(f"{demo.url}/privacy/audit")
    p2.get_by_label("User name").fill("dr.consultant")
    p2.get_by_label("From").fill(today)
    p2.get_by_role("button", name="Search").click()
    rows = p2.locator("table tbody tr")
    assert rows.filter(has_text="Used emergency access").count() >= 1
    text = p2.locator("main").inner_text()
    assert not re.search(r"\d{4}-\d{2}-\d{2}T", text) and "Patient/" not in text
    shot(p2, "role-privacy-audit", full_page=True)
    p2.context.close()
    ctx.close()


def test_audit_search_keeps_bad_input_and_says_why(demo, page):
    login(page, demo.url, "privacy.officer")
    page.goto(f"{demo.url}/privacy/audit?nhs=1234567890&user=dr.gp")
    assert "not a valid NHS number" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Person's NHS number").input_value() == "1234567890"
    assert page.get_by_label("User name").input_value() == "dr.gp"


def test_subject_access_report_download(demo, page):
    login(page, demo.url, "privacy.officer")
    page.goto(f"{demo.url}/privacy/subject-access")
    page.get_by_label("Person's NHS number").fill(demo.nhs)
    page.get_by_role("button", name="Find").click()
    assert demo.name.split()[-1] in page.locator("#sar-person").inner_text()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download the report").click()
    report = json.loads(open(dl.value.path(), "rb").read())
    assert report["nhs_number"] == demo.nhs
    entries = report["records"][0]["entries"]
    assert any(e["resourceType"] == "Patient" and e["id"] == demo.patient_id for e in entries)
    assert len(entries) > 5 and report["records"][0]["access_log_total"] >= 1
    # making the report is itself in the person's access log
    demo.gate.flush_audit()
    total, log = demo.gate.access_log(_user(demo.gate, "privacy.officer"), demo.patient_id, count=50)
    assert any(e["action"] == "subject-access" for e in log)
    shot(page, "role-privacy-sar")


def test_objections_and_opt_outs_page(demo, page):
    from joinedup.governance.identity import SYSTEM

    pid = _stranger_patient(demo, "dr.gp")
    demo.gate.create(SYSTEM, {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "provision": {"type": "deny"}})
    login(page, demo.url, "privacy.officer")
    page.goto(f"{demo.url}/privacy/choices")
    name = demo.gate.read(SYSTEM, "Patient", pid).content["name"][0]
    full = " ".join([*(name.get("given") or [])[:1], name["family"]])
    # the person's row, by their name as written (other tests' people may share a word of it, in another case)
    row = page.locator("table").first.locator("tr", has_text=re.compile(re.escape(full))).first
    assert "Objects to sharing with anyone outside" in row.inner_text()
    shot(page, "role-privacy-choices", full_page=True)


def test_analyst_runs_the_summary_and_downloads_an_extract(demo, page):
    login(page, demo.url, "analyst")
    assert page.url.endswith("/analytics")
    page.get_by_role("button", name="Run the summary").click()
    table = page.get_by_role("table", name="By decade of birth")
    table.locator("tbody td:nth-child(2)").first.wait_for()  # the summary's page has loaded (reading does not wait)
    cells = [c for c in table.locator("tbody td:nth-child(2)").all_inner_texts()]
    # published counts: small numbers suppressed, others rounded to 5 (governance.md)
    assert cells and all(c == "*" or int(c) % 5 == 0 for c in cells)
    shot(page, "role-analyst-summary", full_page=True)
    with page.expect_download() as dl:
        page.get_by_role("button", name="Download the extract (zip)").click()
    zf = zipfile.ZipFile(io.BytesIO(open(dl.value.path(), "rb").read()))
    assert "Patient.ndjson" in zf.namelist() and "summary.json" in zf.namelist()
    first = json.loads(zf.read("Patient.ndjson").splitlines()[0])
    assert "name" not in first and "identifier" not in first and len(first.get("birthDate", "")) <= 4
    # the analyst may not open a person's record
    resp = page.goto(f"{demo.url}/patients/{demo.patient_id}")
    assert resp.status == 403 and "de-identified" in page.locator("main").inner_text()


def test_pharmacist_medicines_review_worklist(demo, page):
    login(page, demo.url, "pharmacist")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Medicines reviews").click()
    assert page.get_by_role("heading", name="Medicines reviews", level=1).is_visible()
    hint = page.locator("main p.hint").first.inner_text()
    assert "were checked" in hint
    rows = page.locator("table tbody tr")
    shot(page, "role-pharmacist-reviews", full_page=True)
    if rows.count():
        text = page.locator("table").inner_text()
        assert not re.search(r"\b[A-Z]{2,}-\d+\b|v3_id", text)  # no rule ids
        rows.first.get_by_role("link").first.click()
        assert "/medicines-safety" in page.url and page.locator("main h1").count() == 1
    page.goto(f"{demo.url}/medicines-reviews?severity=extreme")
    assert "not one of the choices" in page.get_by_role("alert").inner_text()


def test_social_worker_people_and_person_view(demo, page):
    login(page, demo.url, "social.worker")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="My people").click()
    assert page.url.endswith("/social-care")
    assert "Hospital stays are not shown to your role" in page.locator("main").inner_text()
    shot(page, "role-social-worker-people", full_page=True)
    links = page.locator("table tbody tr td:first-child a")
    if links.count():
        links.first.click()
        main = page.locator("main").inner_text()
        for heading in ("Carers and contacts", "Care packages and placements", "Care team", "Sharing choices"):
            assert heading in main
        shot(page, "role-social-worker-person", full_page=True)


def test_mdt_booked_until_it_starts_even_with_attendance_recorded(demo, page):
    """An MDT tomorrow with attendance already recorded is 'Booked', not 'In progress' (issue 13, part 8)."""
    from tests.browser.test_advice_and_mdt import _other_professional

    _, other = _other_professional(demo)
    login(page, demo.url, demo.user)
    start = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page.goto(f"{demo.url}/mdt?patient={demo.patient_id}")
    page.fill("#title", "Tomorrow's frailty MDT")
    page.fill("#start", start)
    page.select_option("#participants", [f"Practitioner/{other}"])
    page.click("text=Schedule the review")
    page.wait_for_selector("text=Participants and attendance")
    selects = page.locator("select[id^=att-]")
    for i in range(selects.count()):
        selects.nth(i).select_option(index=1)
    page.click("text=Save attendance")
    page.wait_for_load_state()
    assert page.inner_text("#review-status") == "Booked"
    page.goto(f"{demo.url}/mdt")
    row = page.locator("tr", has_text="Tomorrow's frailty MDT")
    assert "Booked" in row.inner_text() and "In progress" not in row.inner_text()
