"""The person's portal in a browser (issue 13.10), as the demo patient, a carer they give access to, and their GP:
plan and appointments, a message and its reply, sharing choices shown back at once, a carer's scoped access ended
at once, and "who looked" in plain words. Screenshots (desktop 1366 and phone 390 wide) in docs/screenshots/portal/."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "portal"  # git-ignored: docs/screenshots keeps the reviewed copies


def _login(page, url: str, user: str, password: str = "demo") -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def _shots(chromium, url: str, user: str, password: str, paths: list[tuple[str, str]]) -> None:
    """Desktop and phone screenshots of each page, signed in as `user`."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height, tag in ((1366, 900, "desktop"), (390, 844, "phone")):
        context = chromium.new_context(viewport={"width": width, "height": height}, locale="en-GB")
        pg = context.new_page()
        pg.set_default_timeout(15000)
        _login(pg, url, user, password)
        for path, name in paths:
            pg.goto(f"{url}{path}")
            pg.screenshot(path=str(SHOTS / f"{name}-{tag}.png"), full_page=True)
        context.close()


def test_portal_as_the_person_their_carer_and_their_gp(page, chromium, demo):
    from joinedup.governance.accounts import get_user

    url = demo.url
    me = get_user(demo.gate, "patient")
    pid = me.patient_id
    _login(page, url, "patient")
    assert re.search(rf"/patients/{pid}$", page.url)
    nav = page.get_by_role("navigation", name="Main")
    for item in ("My record", "My plan and appointments", "Messages", "Sharing and carers",
                 "Who has looked at my record"):
        assert nav.get_by_role("link", name=item, exact=True).count() == 1

    # plan, what matters, goals, appointments and next steps
    page.goto(f"{url}/me/plan")
    for heading in ("What matters to me", "Goals", "Next steps", "Appointments"):
        assert page.get_by_role("heading", name=heading, exact=True).count() == 1

    # a message to the care team; an empty one keeps the page and says why
    page.goto(f"{url}/me/messages")
    page.get_by_label("Your message").fill("Could my blood test be done at the surgery instead of the hospital?")
    page.get_by_role("button", name="Send").click()
    page.wait_for_url(re.compile(r"/me/messages\?sent=1"))
    thread = page.locator(".thread").filter(has_text="blood test be done at the surgery").first
    assert "Awaiting reply" in thread.inner_text()

    # sharing choices: each shown back at once
    page.goto(f"{url}/me/sharing")
    org = page.locator("#object-org option").first
    org_name = org.inner_text()
    page.locator("#object-org").select_option(org.get_attribute("value"))
    page.get_by_role("button", name="Stop sharing with them").click()
    page.wait_for_url(re.compile(r"/me/sharing\?done=object-organisation"))
    choices = page.locator("#choices")
    assert f"You object to sharing your record with {org_name}" in choices.inner_text()
    page.get_by_role("button", name="Opt out of research and planning").click()
    page.wait_for_url(re.compile(r"done=opt-out"))
    assert "opted out of your information being used for research and planning" in page.locator("#choices").inner_text()
    entry = page.locator("#private-entry option").first
    page.locator("#private-entry").select_option(entry.get_attribute("value"))
    page.get_by_role("button", name="Keep it private").click()
    page.wait_for_url(re.compile(r"done=private"))
    assert "Kept private:" in page.locator("#choices").inner_text()

    # give a carer access to appointments and the plan, until a month from now
    account = f"ava.{uuid.uuid4().hex[:6]}"
    page.get_by_label("Their name").fill("Ava Okafor")
    page.get_by_label("They are my").select_option("Daughter")
    page.get_by_label("A user name for them to sign in with").fill(account)
    page.get_by_label("Appointments, next steps and my care plan only").check()
    page.get_by_label("Until (at most a year)").fill((datetime.now(UTC).date() + timedelta(days=30)).isoformat())
    page.get_by_role("button", name="Give access").click()
    password = page.locator("#new-password").inner_text().strip()
    assert password and account in page.locator("#new-account").inner_text()
    assert "In force" in page.locator("#carers").inner_text()
    _shots(chromium, url, "patient", "demo", [(f"/patients/{pid}", "patient-record"), ("/me/plan", "patient-plan"),
                                              ("/me/messages", "patient-messages"), ("/me/sharing", "patient-sharing")])

    # the carer: home is what the person shared; nothing outside it
    carer = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB").new_page()
    _login(carer, url, account, password)
    assert carer.url.endswith("/carer")
    assert "appointments, next steps and my care plan only" in carer.locator("#grant").inner_text()
    carer.goto(f"{url}/me/messages")
    assert carer.get_by_role("heading", name="You do not have access to this page").count() == 1
    _shots(chromium, url, account, password, [("/carer", "carer-home"), ("/me/plan", "carer-plan")])

    # the GP replies from the person's messages page; the person sees the reply
    gp = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB").new_page()
    _login(gp, url, demo.user)
    gp.goto(f"{url}/patients/{pid}/messages")
    box = gp.locator(".thread").filter(has_text="blood test be done at the surgery").first
    box.get_by_role("textbox").fill("Yes: book with the practice nurse, any weekday morning.")
    box.get_by_role("button", name="Send reply").click()
    gp.wait_for_url(re.compile(r"/messages\?sent=1"))
    gp.context.close()
    page.goto(f"{url}/me/messages")
    thread = page.locator(".thread").filter(has_text="blood test be done at the surgery").first
    assert "Replied" in thread.inner_text() and "book with the practice nurse" in thread.inner_text()

    # the person ends the carer's access: at once
    page.goto(f"{url}/me/sharing")
    page.locator("#carers tr", has_text="Ava Okafor").get_by_role("button", name=re.compile("End access now")).click()
    page.wait_for_url(re.compile(r"done=revoked"))
    assert "Withdrawn" in page.locator("#carers").inner_text()
    carer.goto(f"{url}/carer")
    assert carer.locator("#no-access").count() == 1
    carer.context.close()

    # who looked: the carer by name (not their account), the grant and the withdrawal, professionals by role
    page.goto(f"{url}/me/access-log")
    log = page.locator("table").inner_text()
    assert "Ava Okafor (your carer)" in log and account not in log
    assert "Gave a carer access" in log and "Withdrew a carer's access" in log
    assert "dr.gp" not in log
    _shots(chromium, url, "patient", "demo", [("/me/access-log", "patient-who-looked")])

    # undo the choices (the demo patient is shared by other browser tests)
    page.goto(f"{url}/me/sharing")
    while page.get_by_role("button", name=re.compile(r"^Undo")).count():
        page.get_by_role("button", name=re.compile(r"^Undo")).first.click()
        page.wait_for_url(re.compile(r"done=withdrawn"))
    assert page.locator("#no-choices").count() == 1
