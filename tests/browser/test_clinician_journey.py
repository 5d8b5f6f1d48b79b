"""A clinician's journey in a real browser (Debian chromium, headless): log in, search, open a person, see
sources from several organisations and a medicines discrepancy, filter the timeline, open in context."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser


def login(page, url: str, user: str, password: str = "demo") -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


def test_clinician_journey(page, demo):
    page.goto(demo.url + "/")
    assert "/login" in page.url  # not logged in yet
    shot(page, "01-login")
    login(page, demo.url, demo.user)
    page.get_by_role("heading", name="My patients").wait_for()
    shot(page, "02-home-my-patients")

    # search by name: HTMX swaps the results in place
    page.get_by_label("NHS number, name or date of birth").fill(demo.family)
    page.get_by_role("button", name="Search").click()
    page.locator("#results-heading").wait_for()
    link = page.locator("#results").get_by_role("link", name=demo.name)
    assert link.count() >= 1
    shot(page, "03-search-results")
    link.first.click()
    page.wait_for_url(re.compile(rf".*/patients/{demo.patient_id}$"))
    page.get_by_role("heading", level=1, name=demo.name).wait_for()

    # items from at least four organisations, each with a source badge
    sources = page.locator("#sources li")
    orgs = {t.strip() for t in sources.all_inner_texts()}
    assert len(orgs) >= 4, orgs
    assert page.locator("#medicines .badge").count() >= 2
    settings = set(page.locator("main .badge").all_inner_texts())
    assert len(settings) >= 3, settings

    # a medicines discrepancy is flagged
    flag = page.locator("#medicines .flag--warning, #medicines .flag--high").first
    flag.wait_for()
    assert re.search(r"Different doses|still on the GP repeat list", flag.inner_text())
    shot(page, "04-patient-desktop")
    shot(page, "04-patient-desktop-full", full_page=True)

    # the medicines safety panel arrives by HTMX and leads to the full page with the least-harm proposal
    panel = page.locator("#medicines-safety")
    panel.get_by_role("heading", name="Medicines safety").wait_for()
    assert "multimorbidity rules" in panel.inner_text()
    panel.get_by_role("link", name=re.compile("suggested changes and review", re.I)).click()
    page.wait_for_url(re.compile(rf".*/patients/{demo.patient_id}/medicines-safety$"))
    page.get_by_role("heading", level=1, name=re.compile("^Medicines safety")).wait_for()
    page.get_by_role("heading", name="Suggested changes with the least harm").wait_for()
    shot(page, "04b-medicines-safety", full_page=True)
    page.go_back()
    page.get_by_role("heading", level=1, name=demo.name).wait_for()

    # filter the timeline by setting (HTMX) and by type
    before = page.locator("#timeline .timeline__item").count()
    page.get_by_label("Setting").select_option("Hospital")
    page.wait_for_function("() => [...document.querySelectorAll('#timeline .timeline__item')]"
                           ".every(e => e.dataset.setting === 'Hospital')")
    items = page.locator("#timeline .timeline__item")
    assert 0 < items.count() <= before
    assert set(items.evaluate_all("els => els.map(e => e.dataset.setting)")) == {"Hospital"}
    assert "setting=Hospital" in page.url  # the filter is in the address, so it can be shared or reloaded
    page.locator("#timeline").scroll_into_view_if_needed()
    shot(page, "05-timeline-hospital")
    # then narrow by type as well (the swapped-in form keeps the setting)
    assert page.get_by_label("Setting").input_value() == "Hospital"
    page.get_by_label("Type").select_option("document")
    page.wait_for_function("() => [...document.querySelectorAll('#timeline .timeline__item')]"
                           ".every(e => e.dataset.type === 'document' && e.dataset.setting === 'Hospital')")
    assert "type=document" in page.url


def test_tablet_width_and_keyboard(page, demo):
    page.set_viewport_size({"width": 820, "height": 1180})
    login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/patients/{demo.patient_id}")
    page.get_by_role("heading", level=1, name=demo.name).wait_for()
    # nothing wider than the screen at tablet width
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"page is {overflow}px wider than a tablet screen"
    shot(page, "06-patient-tablet")
    # keyboard: the first Tab reaches the skip link, which moves focus to the main content
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("() => location.hash") == "#main"
    # every form control has a label
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).length""")
    assert unlabelled == 0


def test_open_in_context_after_login(page, demo):
    page.goto(f"{demo.url}/launch?nhs={demo.nhs}")
    assert "/login" in page.url
    page.get_by_label("User name").fill(demo.user)
    page.get_by_label("Password").fill("demo")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(rf".*/patients/{demo.patient_id}$"))
    page.get_by_role("heading", level=1, name=demo.name).wait_for()
    page.goto(f"{demo.url}/launch?nhs=12345")
    page.get_by_role("heading", name="That request was not understood").wait_for()
    shot(page, "07-launch-bad-nhs-number")


def test_refusal_page_for_someone_without_a_care_relationship(page, demo):
    login(page, demo.url, "social.worker")
    page.goto(f"{demo.url}/patients/{demo.patient_id}")
    heading = page.get_by_role("heading", level=1)
    text = heading.inner_text()
    if "do not have access" in text:
        page.get_by_role("heading", name="How to get access").wait_for()
        shot(page, "08-refused")
    else:  # the social worker has a relationship with this person: the page renders
        assert text == demo.name
