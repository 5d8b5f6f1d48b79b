"""The person page as each role sees it, in a real browser (Debian chromium, headless): hidden is never shown as
absent, the dead are shown as dead and left out of worklists, the whole person fits the first screen, and every
entry opens in full.

Expectations come from the issue's observed failures (a social worker told "No medicines recorded" for someone with
medicines; a pharmacist told "None named" for a person with a key worker) and from the FHIR R4 Patient resource
(deceasedBoolean / deceasedDateTime) and DocumentReference (content.attachment.data, base64)."""

from __future__ import annotations

import base64
import re
import uuid
from dataclasses import dataclass

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
LETTER = ("Discharge summary\nDiagnosis: community-acquired pneumonia.\nStopped: ramipril (acute kidney injury).\n"
          "Follow-up: GP review of renal function in 1 week.")


def login(page, url: str, user: str, password: str = "demo") -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/(\?.*)?$|.*/patients/.*|.*/care/.*"))


def open_as(chromium, demo, user: str, path: str, viewport=DESKTOP):
    context = chromium.new_context(viewport=viewport, locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(15000)
    login(page, demo.url, user)
    page.goto(demo.url + path)
    page.wait_for_load_state("networkidle")
    return context, page


@dataclass
class People:
    dead: str
    living: str
    private_text: str


@pytest.fixture(scope="module")
def people(demo) -> People:
    """Two people written as their organisations' systems would: one who died on 2 Apr 2023 (born 1 Jun 1938, so
    aged 84) with a repeat prescription, an alert and a care team; one living, with nothing but a discharge letter
    and one problem the person asked to keep private. The demo GP is their usual GP; the demo key worker, social
    worker and pharmacist are in their care teams."""
    from joinedup.governance.accounts import get_user
    from joinedup.governance.identity import SYSTEM

    gate = demo.gate
    gp, kw, sw, ph = (get_user(gate, u) for u in ("dr.gp", "key.worker", "social.worker", "pharmacist"))
    org = {"source": f"Organization/{gp.organization_id}"}
    uid = uuid.uuid4().hex[:8]
    dead, living = f"dead-{uid}", f"living-{uid}"
    for pid, family, extra in ((dead, "Ashworth", {"deceasedDateTime": "2023-04-02T08:15:00Z"}),
                               (living, "Brennan", {})):
        gate.update(SYSTEM, "Patient", pid, {
            "resourceType": "Patient", "id": pid, "meta": org, "name": [{"family": family + uid, "given": ["Edith"]}],
            "birthDate": "1938-06-01", "gender": "female",
            "generalPractitioner": [{"reference": f"Organization/{gp.organization_id}"},
                                    {"reference": f"Practitioner/{gp.practitioner_id}"}], **extra})
        gate.update(SYSTEM, "CareTeam", f"team-{pid}", {
            "resourceType": "CareTeam", "id": f"team-{pid}", "meta": org, "status": "active",
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"role": [{"text": "Key worker"}], "member": {"reference": f"Practitioner/{kw.practitioner_id}"}},
                            {"role": [{"text": "Social worker"}], "member": {"reference": f"Practitioner/{sw.practitioner_id}"}},
                            {"role": [{"text": "Pharmacist"}], "member": {"reference": f"Practitioner/{ph.practitioner_id}"}}]})
    gate.update(SYSTEM, "MedicationRequest", f"med-{dead}", {
        "resourceType": "MedicationRequest", "id": f"med-{dead}", "meta": org, "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "Amlodipine 5mg tablets"}, "subject": {"reference": f"Patient/{dead}"},
        "authoredOn": "2022-11-01", "dosageInstruction": [{"text": "One tablet once a day"}]})
    gate.update(SYSTEM, "Flag", f"flag-{dead}", {
        "resourceType": "Flag", "id": f"flag-{dead}", "meta": org, "status": "active",
        "code": {"text": "Lives alone: key safe by the front door"}, "subject": {"reference": f"Patient/{dead}"}})
    doc = f"doc-{living}"
    gate.update(SYSTEM, "DocumentReference", doc, {
        "resourceType": "DocumentReference", "id": doc, "meta": org, "status": "current",
        "type": {"text": "Discharge summary"}, "subject": {"reference": f"Patient/{living}"},
        "date": "2026-03-04T16:20:00Z", "author": [{"reference": f"Practitioner/{gp.practitioner_id}"}],
        "content": [{"attachment": {"contentType": "text/plain", "title": "Discharge summary",
                                    "data": base64.b64encode(LETTER.encode()).decode()}}]})
    gate.update(SYSTEM, "Appointment", f"appt-{living}", {
        "resourceType": "Appointment", "id": f"appt-{living}", "meta": org, "status": "booked",
        "description": "Memory clinic review", "start": "2036-01-15T10:00:00Z", "end": "2036-01-15T10:30:00Z",
        "participant": [{"actor": {"reference": f"Patient/{living}"}, "status": "accepted"}]})
    def obs(i, code, display, value, unit, when, **extra):
        gate.update(SYSTEM, "Observation", f"obs{i}-{living}", {
            "resourceType": "Observation", "id": f"obs{i}-{living}", "meta": org, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{living}"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"}, **extra})

    egfr = ("62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood "
            "by Creatinine-based formula (CKD-EPI)")
    obs(1, *egfr, 48, "mL/min/1.73m2", "2025-09-01")
    obs(2, *egfr, 55, "mL/min/1.73m2", "2026-03-01")  # rising eGFR: better, still below 60 (NICE NG203)
    hba1c = ("59261-8", "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol")
    obs(3, *hba1c, 50, "mmol/mol", "2025-09-01")
    obs(4, *hba1c, 58, "mmol/mol", "2026-03-01")  # rising HbA1c: worse
    obs(5, "2823-3", "Potassium [Moles/volume] in Serum or Plasma", 5.9, "mmol/L", "2026-03-01",
        referenceRange=[{"low": {"value": 3.6, "unit": "mmol/L"}, "high": {"value": 5.4, "unit": "mmol/L"}}],
        interpretation=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                     "code": "H"}]}])
    private_text = f"Termination of pregnancy {uid}"
    hidden = f"cond-{living}"
    gate.update(SYSTEM, "Condition", hidden, {
        "resourceType": "Condition", "id": hidden, "meta": {"source": "Organization/elsewhere-" + uid},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"text": private_text}, "subject": {"reference": f"Patient/{living}"}})
    # the person's choice (relayed by the integration account): keep that entry private (a Consent deny provision
    # naming the entry in its data, as docs/governance.md describes)
    gate.update(SYSTEM, "Consent", f"consent-{living}", {
        "resourceType": "Consent", "id": f"consent-{living}", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{living}"},
        "provision": {"type": "permit", "provision": [{"type": "deny", "data": [
            {"meaning": "instance", "reference": {"reference": f"Condition/{hidden}"}}]}]}})
    return People(dead, living, private_text)


def test_before_after_screenshots_and_first_screen(chromium, demo):
    """Problems, medicines and allergies are on the first screen at 1366x768; on a phone they come before the
    journey, results and timeline."""
    ctx, page = open_as(chromium, demo, demo.user, f"/patients/{demo.patient_id}")
    shot(page, "person-after-desktop")
    shot(page, "person-after-desktop-full", full_page=True)
    for heading in ("#problems-heading", "#medicines-heading", "#allergies-heading", "#about-heading",
                    "#next-heading"):
        box = page.locator(heading).bounding_box()
        assert box and box["y"] + box["height"] <= 768, (heading, box)
    assert page.locator("#key-worker").bounding_box()["y"] < 768
    # one line per medicine: a chip per recording organisation, a discrepancy shown on the line
    first = page.locator("#medicines .lines > li").first
    assert first.bounding_box()["y"] < 768
    assert page.locator("#medicines .lines > li").count() == len(set(
        page.locator("#medicines .lines > li .line__name").all_inner_texts()))
    assert page.locator("#medicines .chip").count() > page.locator("#medicines .lines > li").count()
    assert page.locator("#medicines .flag--warning, #medicines .flag--high").count() >= 1
    ctx.close()
    ctx, page = open_as(chromium, demo, demo.user, f"/patients/{demo.patient_id}", viewport=PHONE)
    shot(page, "person-after-phone")
    shot(page, "person-after-phone-full", full_page=True)
    y = {sel: page.locator(sel).bounding_box()["y"] for sel in
         ("#problems", "#medicines", "#allergies", "#about", "#journey-panel, #journey", "#results", "#timeline")}
    assert y["#allergies"] < y["#problems"] < y["#medicines"] < y["#about"] < y["#journey-panel, #journey"]
    assert y["#medicines"] < y["#results"] < y["#timeline"]
    assert y["#problems"] < 1500
    ctx.close()


def test_hidden_is_never_shown_as_absent(chromium, demo, people):
    """A social worker is told medicines and problems exist but are not shown to their role (never "No medicines
    recorded"); a pharmacist is told the key worker and the next steps are not shown to them (never "None
    named" / "Nothing booked or waiting")."""
    import httpx

    from joinedup.governance.accounts import issue_token

    with httpx.Client(base_url=demo.url, headers={"Authorization": f"Bearer {issue_token(demo.gate, 'social.worker')}"}) as c:
        s = c.get(f"/api/patients/{demo.patient_id}/summary").json()
    assert s["medicines"] == [] and s["access"]["medicines"]["state"] == "not shown to your role"
    assert s["access"]["medicines"]["not_shown_to_role"]  # e.g. {"prescriptions": 12}
    assert not any(k for k in s["access"]["medicines"]["not_shown_to_role"] if "Medication" in k)  # words, not types

    ctx, page = open_as(chromium, demo, "social.worker", f"/patients/{demo.patient_id}")
    meds = page.locator("#medicines").inner_text()
    assert "No medicines recorded" not in meds
    assert re.search(r"\d+ prescriptions?.* recorded but not shown to a social worker", meds), meds
    problems = page.locator("#problems").inner_text()
    assert "No active problems recorded" not in problems and "not shown to a social worker" in problems
    allergies = page.locator("#allergies").inner_text()
    if s["access"]["allergies"]["state"] == "none recorded":  # the gate says none exist: then, and only then
        assert "No allergies or adverse reactions recorded" in allergies
    else:
        assert "No allergies" not in allergies and "not shown to a social worker" in allergies
    shot(page, "person-after-social-worker", full_page=True)
    ctx.close()

    ctx, page = open_as(chromium, demo, "pharmacist", f"/patients/{people.living}")
    kw = page.locator("#key-worker").inner_text()
    assert "none named" not in kw.lower() and "not shown" in kw and "care team" in kw
    nxt = page.locator("#next-step").inner_text()
    assert "Nothing booked or waiting" not in nxt and "1 appointment is recorded but not shown to a pharmacist" in nxt
    page.locator("#journey").wait_for()
    journey = page.locator("#journey").inner_text()
    assert "Nothing booked or waiting" not in journey and "not shown to a pharmacist" in journey
    shot(page, "person-after-pharmacist", full_page=True)
    ctx.close()
    # the GP, who may see it, is shown the appointment
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.living}")
    assert "Memory clinic review" in page.locator("#next-step").inner_text()
    ctx.close()


def test_withheld_at_the_persons_request_says_only_that(chromium, demo, people):
    """An entry the person asked to keep private: the GP is told only that some information is withheld at the
    person's request (not what, not how many); nothing recorded is said plainly where nothing is."""
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.living}")
    body = page.locator("main").inner_text()
    assert people.private_text not in body
    assert "Some information in this record is withheld at the person's request." in body
    assert "1 problem" not in body
    # with something withheld, an empty section cannot promise that nothing is recorded
    meds = page.locator("#medicines").inner_text()
    assert "No medicines recorded" not in meds and "withheld at the person's request" in meds
    ctx.close()
    # where nothing is withheld and nothing recorded, it says so plainly
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.dead}")
    assert "No allergies or adverse reactions recorded" in page.locator("#allergies").inner_text()
    assert page.locator("main .withheld").count() == 0
    ctx.close()
    # the person sees their own private entry
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.living}/entries/Condition/cond-{people.living}")
    assert page.locator("h1").inner_text() != people.private_text
    assert people.private_text not in page.content()
    ctx.close()


def test_deceased_banner_age_at_death_and_worklists(chromium, demo, people):
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.dead}")
    banner = page.locator("#deceased").inner_text()
    assert "Died 2 Apr 2023" in banner and "aged 84" in banner  # born 1 Jun 1938
    assert "years)" not in page.locator("header.banner").inner_text()  # no living age
    assert "Lives alone" not in page.locator("#flags").inner_text()  # no current alerts
    assert page.locator("#medicines .lines > li").count() == 0
    assert "None current" in page.locator("#medicines").inner_text()
    assert "Amlodipine" in page.locator("#medicines-all").inner_text()  # kept as history
    shot(page, "person-after-deceased")
    for path in (f"/patients/{people.dead}/journey", f"/patients/{people.dead}/care-plan",
                 f"/patients/{people.dead}/entries/MedicationRequest/med-{people.dead}"):
        page.goto(demo.url + path)
        assert "Died 2 Apr 2023" in page.locator("#deceased").inner_text(), path
    # not in the GP's "My patients" or the MDT picker by default
    page.goto(demo.url + "/")
    assert f"/patients/{people.dead}" not in page.content() and f"/patients/{people.living}" in page.content()
    page.goto(demo.url + "/mdt")
    assert people.dead not in page.content() and people.living in page.content()
    page.get_by_role("link", name="Show them too").click()
    page.wait_for_url(re.compile(r".*/mdt\?deceased=1"))
    assert people.dead in page.content()
    ctx.close()
    # the key worker's "My people": left out, with a filter that shows them
    ctx, page = open_as(chromium, demo, "key.worker", "/care/people")
    assert people.dead not in page.content() and people.living in page.content()
    page.get_by_role("link", name="Show people who have died").click()
    page.wait_for_url(re.compile(r".*deceased=1"))
    row = page.locator(f"tr:has(a[href='/patients/{people.dead}/care-plan'])")
    assert "died 2 Apr 2023" in row.inner_text()
    ctx.close()


@pytest.mark.parametrize("user", ["dr.gp", "key.worker"])
def test_every_entry_opens(chromium, demo, people, user):
    """Timeline items, problems, medicines and results open a page with the source entry, its organisation,
    author and date in words, and its versions."""
    ctx, page = open_as(chromium, demo, user, f"/patients/{demo.patient_id}")
    links = {
        "timeline": page.locator("#timeline .timeline__title a").first,
        "problem": page.locator("#problems .line__name").first,
        "medicine": page.locator("#medicines .chip").first,
        "result": page.locator("#results .result__name a").first,
    }
    hrefs = {k: v.get_attribute("href") for k, v in links.items() if v.count()}
    assert {"timeline", "problem", "medicine"} <= set(hrefs), hrefs
    for what, href in hrefs.items():
        page.goto(demo.url + href)
        assert page.locator("h1").inner_text().strip(), what
        facts = page.locator("header.card").inner_text()
        assert "Organisation" in facts and "Recorded by" in facts
        assert not re.search(r"\d{4}-\d{2}-\d{2}T", page.locator("main").inner_text()), what  # no ISO dates
        assert page.locator("#versions li").count() >= 1, what
        assert "Version 1" in page.locator("#versions").inner_text()
    shot(page, f"entry-{user}")
    # a discharge letter's text
    page.goto(f"{demo.url}/patients/{people.living}")
    page.locator("#timeline").get_by_role("link", name="Discharge summary").click()
    page.wait_for_url(re.compile(r".*/entries/DocumentReference/"))
    text = page.locator("#entry-text").inner_text()
    assert "Stopped: ramipril (acute kidney injury)." in text
    assert "4 Mar 2026" in page.locator("header.card").inner_text()
    shot(page, f"entry-letter-{user}", full_page=True)
    ctx.close()


def test_refused_entry_is_the_styled_refusal(chromium, demo, people):
    """A social worker opening a prescription's address gets the refusal page, not the prescription."""
    ctx, page = open_as(chromium, demo, "social.worker", f"/patients/{people.dead}/entries/MedicationRequest/med-{people.dead}")
    body = page.locator("main").inner_text()
    assert "Amlodipine" not in page.content()
    assert "access" in body.lower()
    ctx.close()


def test_patient_sees_own_record_without_withheld_notes(chromium, demo):
    from joinedup.governance.accounts import get_user

    me = get_user(demo.gate, "patient")
    ctx, page = open_as(chromium, demo, "patient", f"/patients/{me.patient_id}")
    assert page.locator("#problems-heading").bounding_box()["y"] < 768
    assert page.locator("main .withheld").count() == 0
    href = page.locator("#problems .line__name, #medicines .line__name").first.get_attribute("href")
    page.goto(demo.url + href)
    assert page.locator("#versions").count() == 1
    ctx.close()


def test_results_people_can_read(chromium, demo, people):
    """Short names, units, reference ranges and abnormal flags (the result's own range and interpretation first,
    else the cited default), trend colour by clinical direction, charts with dated axes, and the values table."""
    ctx, page = open_as(chromium, demo, "dr.gp", f"/patients/{people.living}")
    results = page.locator("#results")
    text = results.inner_text()
    assert "Glomerular filtration rate/1.73" not in text and "Hemoglobin A1c/" not in text  # no LOINC long names
    egfr = results.locator("li.result", has=page.get_by_role("link", name="eGFR", exact=True))
    assert "Low" in egfr.inner_text() and "60 or more mL/min/1.73m2" in egfr.inner_text()
    assert "NICE NG203" in egfr.inner_text()
    assert egfr.locator(".trend--better").count() == 1  # a rising eGFR is good news, not red
    hba1c = results.locator("li.result", has=page.get_by_role("link", name="HbA1c", exact=True))
    assert hba1c.locator(".trend--worse").count() == 1 and "High" in hba1c.inner_text()
    k = results.locator("li.result", has=page.get_by_role("link", name="Potassium", exact=True))
    assert "High" in k.inner_text() and "3.6 to 5.4" in k.inner_text() and "as reported with the result" in k.inner_text()
    labels = egfr.locator("svg .chart__label").all_text_contents()
    assert "1 Sep 2025" in labels and "1 Mar 2026" in labels  # a dated axis
    egfr.locator("summary", has_text="Values").click()
    rows = egfr.locator("table tbody tr").all_inner_texts()
    assert rows[0].split("\t")[0].strip() == "1 Mar 2026" and "55" in rows[0]
    results.scroll_into_view_if_needed()
    shot(page, "person-after-results")
    ctx.close()
