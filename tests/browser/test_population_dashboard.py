"""The population dashboard in a real browser: as an analyst and a partnership board member (charts drawn by the
vendored Vega-Lite, every chart with its table, no drill-down), as a GP (drill-down links to the case-finding
worklist, which opens), and refused to a patient. Screenshots go to docs/screenshots/population-dashboard/."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from joinedup.governance.identity import SYSTEM
from joinedup.population.dashboard import precompute
from tests.browser.test_roles_crawl import login

SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "population-dashboard"  # git-ignored: docs/screenshots keeps the reviewed copies


@pytest.fixture(scope="module")
def figures(demo, tmp_root):
    manifest = json.loads((tmp_root / "demo-ics" / "manifest.json").read_text())
    return precompute.run(demo.gate, SYSTEM, today=date.fromisoformat(manifest["today"]))


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _open(page, demo, query: str = ""):
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    response = page.goto(f"{demo.url}/population/dashboard{query}")
    return response, errors


@pytest.mark.parametrize("user", ["analyst", "board"])
def test_analyst_and_board_see_charts_without_drill_down(demo, page, figures, user):
    login(page, demo.url, user)
    response, errors = _open(page, demo)
    assert response.status == 200
    assert page.get_by_role("heading", name="Population dashboard", exact=True).is_visible()
    page.wait_for_selector("[data-rendered=true]", timeout=30000)
    charts = page.locator("[data-vl-spec]")
    assert charts.count() >= 10
    page.wait_for_function("document.querySelectorAll('[data-rendered=true]').length >= 10", timeout=30000)
    assert page.locator("#fig-registers-size svg").count() >= 1  # Vega renders SVG
    # every chart has its table, and the register table carries the published numbers
    sizes = page.locator("table[data-figure=registers-size] tbody tr")
    assert sizes.count() == len(figures["register_catalogue"])
    first = sizes.first.locator("td").nth(1).text_content().strip()
    assert first == "*" or first.isdigit()
    assert page.locator("#freshness").inner_text().startswith("Figures computed")
    assert page.locator("#unit-costs tbody tr").count() == 15
    assert "assumption, not from a source" in page.locator("#assumptions").inner_text()
    assert page.locator("a.drill-link").count() == 0 and page.locator("#drill-note").count() == 0
    assert errors == []
    _shot(page, f"dashboard-{user}")
    page.locator("#cost").scroll_into_view_if_needed()
    _shot(page, f"dashboard-cost-{user}")


def test_filters_keep_their_values(demo, page, figures):
    login(page, demo.url, "analyst")
    _open(page, demo)
    practice = next(iter(figures["organisations"]["practice"]))
    page.get_by_label("Area").select_option(f"practice:{practice}")
    page.get_by_label("Break measures down by").select_option("age")
    page.get_by_role("button", name="Show").click()
    page.wait_for_load_state()
    assert f"area=practice%3A{practice}" in page.url and "by=age" in page.url
    assert page.get_by_label("Area").input_value() == f"practice:{practice}"
    assert page.get_by_label("Break measures down by").input_value() == "age"
    assert page.locator("#fig-acsc-admissions-by-age").count() == 1
    page.wait_for_selector("[data-rendered=true]", timeout=30000)
    _shot(page, "dashboard-analyst-practice-by-age")


def test_gp_sees_drill_down_to_the_worklist(demo, page, figures):
    login(page, demo.url, "dr.gp")
    response, errors = _open(page, demo)
    assert response.status == 200
    assert page.locator("#drill-note").is_visible()
    links = page.locator("#fig-registers-size a.drill-link")
    assert links.count() > 0
    page.locator("#fig-registers-size summary", has_text="Find the people").click()
    page.wait_for_selector("[data-rendered=true]", timeout=30000)
    page.locator("#fig-registers-size").scroll_into_view_if_needed()
    _shot(page, "dashboard-gp-drill-down")
    href = links.first.get_attribute("href")
    assert href.startswith("/population/worklist?") and "status=overdue" in href
    links.first.click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Care processes due").is_visible()
    assert errors == []


def test_refused_to_a_patient(demo, page, figures):
    login(page, demo.url, "patient")
    response, _ = _open(page, demo)
    assert response.status == 403
    assert page.locator("[data-vl-spec]").count() == 0
    _shot(page, "dashboard-refused-patient")


def test_download_a_figure_as_csv(demo, page, figures):
    login(page, demo.url, "board")
    _open(page, demo)
    with page.expect_download() as info:
        page.locator("#fig-registers-size form.downloads button[value=csv]").click()
    text = Path(info.value.path()).read_text()
    assert text.splitlines()[0] == "Register,People,Prevalence %"
    assert len(text.splitlines()) == 1 + len(figures["register_catalogue"])
