"""In the browser: the workforce view on the generated ICS, as a partnership board member (from the menu, the figures
as at the generator's reference date, a bad date kept on the page with a clear message) and as the integration
account, and refused to a GP; screenshots in docs/screenshots/workforce/."""

from __future__ import annotations

import re
from pathlib import Path

from tests.browser.axe import assert_accessible
from tests.browser.test_roles_crawl import login

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "workforce"  # git-ignored: docs/screenshots keeps the reviewed copies
TITLES = ("Caseload", "Key worker caseload", "Open tasks", "Overdue tasks", "Share of open tasks overdue", "Handovers")


def _page(chromium, width: int = 1366):
    ctx = chromium.new_context(viewport={"width": width, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(120_000)  # the first view computes the figures over the whole population
    return ctx, page


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _check_view(page) -> None:
    assert page.get_by_role("heading", level=1).inner_text() == "Workforce across teams: where is integration straining?"
    charts = page.locator("#trends-heading + .trends svg[role=img]")
    assert charts.count() == 3
    assert "Open and overdue tasks at each month end" in charts.nth(1).get_attribute("aria-label")
    rows = page.locator("#teams tbody tr")
    assert rows.first.locator("th").inner_text() == "Whole system"
    assert page.locator("#teams tbody tr[data-team]").count() >= 3  # teams under their organisations
    # every published cell is a rounded count, '*' (too small to publish) or '–'
    for text in page.locator("#teams tbody td.num").all_inner_texts()[:60]:
        assert re.fullmatch(r"[\d,]+|\*|–|[\d.]+%", text), text
    defs = page.locator("#definitions dt").all_inner_texts()
    assert [d.split(" (")[0] for d in defs] == list(TITLES)
    assert "Period:" in page.locator("#definitions dd").first.inner_text()
    assert page.locator("#suppression").inner_text().startswith("counts from JOINEDUP_SUPPRESS_LOW")


def test_board_sees_teams_trends_and_definitions(demo, chromium):
    ctx, page = _page(chromium)
    login(page, demo.url, "board")
    page.get_by_role("link", name="Workforce across teams").first.click()
    page.wait_for_url(re.compile(r".*/workforce$"))
    _check_view(page)
    # the generated ICS ends on 30 June 2026: the 12 months to then
    page.get_by_label("Figures as at").fill("2026-06-30")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r".*/workforce\?as_at=2026-06-30$"))
    assert page.locator("#period-line").inner_text().startswith("Period: 1 Jul 2025 to 30 Jun 2026")
    _check_view(page)
    system = page.locator("#system-row td.num").all_inner_texts()
    assert re.fullmatch(r"[\d,]+", system[0]), system  # people with a care team: enough to publish
    assert page.locator("#feeds tbody tr").count() >= 3  # every organisation's time since its last write
    _shot(page, "workforce-board-desktop")
    assert_accessible(page, "/workforce?as_at=2026-06-30 (board)")
    page.locator("#teams").scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS / "workforce-board-teams.png"))
    # a date that is not one: a clear message, what was typed kept, status 400
    resp = page.goto(f"{demo.url}/workforce?as_at=31%2F06%2F2026")
    assert resp.status == 400
    assert page.get_by_role("alert").inner_text() == "as_at '31/06/2026' is not a date (use YYYY-MM-DD)"
    assert page.get_by_label("Figures as at").input_value() == "31/06/2026"
    _shot(page, "workforce-bad-date")
    assert_accessible(page, "/workforce with a bad date")
    ctx.close()
    ctx, page = _page(chromium, width=390)
    login(page, demo.url, "board")
    page.goto(f"{demo.url}/workforce?as_at=2026-06-30")
    _shot(page, "workforce-board-phone")
    ctx.close()


def test_integration_account_sees_it_and_a_gp_is_refused(demo, chromium):
    ctx, page = _page(chromium)
    page.goto(f"{demo.url}/login")  # the test server made this account (tests/conftest.py) before the demo users
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("admin-pw")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    page.goto(f"{demo.url}/workforce?as_at=2026-06-30")
    _check_view(page)
    ctx.close()
    ctx, page = _page(chromium)
    login(page, demo.url, "dr.gp")
    assert page.get_by_role("link", name="Workforce across teams").count() == 0
    resp = page.goto(f"{demo.url}/workforce")
    assert resp.status == 403
    assert "Access refused" in page.locator("main").inner_text()
    assert page.locator("#teams").count() == 0
    _shot(page, "workforce-refused-gp")
    ctx.close()
