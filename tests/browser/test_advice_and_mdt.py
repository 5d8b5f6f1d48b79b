"""In the browser: an advice conversation between two organisations and an MDT review with its pack and a decision."""

from __future__ import annotations

from tests.browser.conftest import shot


def _login(page, url: str, user: str) -> None:
    page.goto(f"{url}/login")
    page.fill("#username", user)
    page.fill("#password", "demo")
    page.click("button[type=submit]")


def _other_professional(demo) -> tuple[str, str]:
    from joinedup.governance.accounts import get_user

    for user in ("dr.consultant", "nurse.community", "key.worker", "dr.gp"):
        if user != demo.user:
            p = get_user(demo.gate, user)
            if p and p.practitioner_id:
                return user, p.practitioner_id
    raise AssertionError("no second professional")


def test_advice_conversation_in_the_browser(demo, chromium):
    other, other_prac = _other_professional(demo)
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(15000)
    _login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/referrals/new?patient={demo.patient_id}")
    page.select_option("#to", f"Practitioner/{other_prac}")
    page.fill("#reason", "Medicines review")
    page.fill("#text", "Advice please: two prescribers disagree about the dose.")
    page.click("form.card button[type=submit]")
    try:
        page.wait_for_selector("#state")
    except Exception:  # noqa: BLE001 - show the page's message instead of a bare timeout
        shot(page, "advice-new-failed", full_page=True)
        raise AssertionError(page.inner_text("main")[:1500]) from None
    assert page.inner_text("#state") == "Awaiting reply"
    thread_url = page.url
    shot(page, "advice-thread-requester", full_page=True)
    # the recipient, in their own session, replies without a page reload (HTMX)
    ctx2 = chromium.new_context(viewport={"width": 1024, "height": 1366}, locale="en-GB")  # tablet, portrait
    p2 = ctx2.new_page()
    p2.set_default_timeout(15000)
    _login(p2, demo.url, other)
    p2.goto(f"{demo.url}/referrals")
    p2.click(f"#requests a[href='{thread_url.replace(demo.url, '')}']")
    p2.fill("#text", "Use the hospital dose; I will write to the practice.")
    p2.click("text=Send reply")
    p2.wait_for_selector("text=reply sent")
    assert p2.inner_text("#state") == "Replied"
    shot(p2, "advice-thread-recipient-tablet", full_page=True)
    # the requester sees the new status in the outbox
    page.goto(f"{demo.url}/referrals?box=outbox")
    assert "Replied" in page.inner_text("#requests")
    shot(page, "referrals-outbox")
    ctx.close()
    ctx2.close()


def test_mdt_review_in_the_browser(demo, chromium):
    _, other_prac = _other_professional(demo)
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(30000)
    _login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/mdt?patient={demo.patient_id}")
    page.fill("#title", "Multimorbidity joint clinic")
    page.fill("#start", "2031-06-01T14:00")
    page.select_option("#participants", [f"Practitioner/{other_prac}"])
    page.click("text=Schedule the review")
    page.wait_for_selector("text=Participants and attendance")
    shot(page, "mdt-review", full_page=True)
    section = page.locator(f"#person-{demo.patient_id}")
    section.locator("input[name=text]").fill("Stop the duplicate prescription")
    section.locator("select[name=owner]").select_option(f"Practitioner/{other_prac}")
    section.locator("button[type=submit]").click()
    page.wait_for_selector("text=Stop the duplicate prescription")
    assert "/pack/" not in page.url  # swapped in place
    page.click("text=Open the prepared pack")
    page.wait_for_selector("text=What matters to the person")
    assert "Stop the duplicate prescription" in page.inner_text("body")
    shot(page, "mdt-pack", full_page=True)
    page.emulate_media(media="print")
    shot(page, "mdt-pack-print", full_page=True)
    ctx.close()
