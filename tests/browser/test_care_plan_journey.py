"""Care plans, key workers and tasks in a real browser: a clinician names a key worker; the key worker finds the
person in My people, records what matters, goals and owned actions (HTMX), meets a stale edit without losing
their words, is refused when giving a task to someone with no route to the person, and sees My tasks."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser


def login(page, url: str, user: str, password: str = "demo") -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


def _far_practitioner(gate) -> tuple[str, str]:
    """A practitioner in an organisation with no route to anyone in the demo population."""
    from joinedup.governance.identity import SYSTEM

    gate.update(SYSTEM, "Organization", "far-away-practice", {"resourceType": "Organization",
                                                              "id": "far-away-practice", "name": "Far Away Practice"})
    gate.update(SYSTEM, "Practitioner", "far-away-gp", {"resourceType": "Practitioner", "id": "far-away-gp",
                                                        "name": [{"given": ["Fay"], "family": "Faraway"}]})
    return "far-away-gp", "far-away-practice"


def _person_for_handover(demo, kw) -> tuple[str, str]:
    """Someone on the demo clinician's list whose key worker is not (yet) key.worker."""
    from joinedup.care.plans import team
    from joinedup.governance.accounts import get_user
    from joinedup.record import service

    who = get_user(demo.gate, demo.user)
    for p in service.my_patients(gate=demo.gate, who=who):
        current = team.key_worker(gate=demo.gate, who=who, patient_id=p["id"])
        if not current or current["practitioner_id"] != kw.practitioner_id:
            return p["id"], p["name"]
    raise AssertionError("no one on the demo clinician's list to hand over")


def test_care_plan_journey(chromium, demo):
    from joinedup.governance.accounts import get_user

    kw = get_user(demo.gate, "key.worker")
    assert kw and kw.practitioner_id, "the demo has a key worker linked to a practitioner"
    pid, name = _person_for_handover(demo, kw)
    due = (datetime.now(UTC).date() + timedelta(days=21)).isoformat()
    far_prac, far_org = _far_practitioner(demo.gate)

    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(15000)
    # 1. a clinician in the person's care names key.worker as key worker (explicit handover with a reason)
    login(page, demo.url, demo.user)
    page.goto(f"{demo.url}/patients/{pid}/key-worker/handover")
    page.get_by_role("heading", level=1).wait_for()
    page.get_by_text("Someone not yet in the care team").click()
    page.get_by_label("Practitioner id").fill(kw.practitioner_id)
    page.get_by_label("Organisation id").fill(kw.organization_id)
    page.get_by_label("Reason for the handover").fill("Complex needs across three services: care coordination hub")
    shot(page, "care-01-handover-form")
    page.get_by_role("button", name=re.compile("Hand over|Name key worker")).click()
    page.wait_for_url(re.compile(rf".*/patients/{pid}/care-plan.*"))
    assert "Complex needs across three services" in page.locator("#team").inner_text()
    ctx.close()

    # 2. the key worker finds the person in My people
    ctx = chromium.new_context(viewport={"width": 1366, "height": 900}, locale="en-GB")
    page = ctx.new_page()
    page.set_default_timeout(15000)
    login(page, demo.url, "key.worker")
    page.goto(f"{demo.url}/care/people")
    page.get_by_role("heading", level=1, name="My people").wait_for()
    link = page.locator("#people").get_by_role("link", name=name)
    assert link.count() == 1
    row = page.locator("#people tbody tr").filter(has=page.get_by_role("link", name=name))
    assert "You" in row.inner_text()
    shot(page, "care-02-my-people")
    link.click()
    page.wait_for_url(re.compile(rf".*/patients/{pid}/care-plan$"))
    assert "Key worker:" in page.locator("#key-worker").inner_text()

    # 3. what matters, a goal and an owned action (each saved in place with HTMX)
    page.get_by_text(re.compile("(Record|Change) what matters")).click()
    page.get_by_label(f"What matters to {name}").fill("Getting to my granddaughter's wedding in September")
    page.get_by_label("Written by").select_option("the person")
    page.get_by_role("button", name="Save what matters").click()
    page.locator("#what-matters .wm", has_text="granddaughter's wedding").wait_for()
    page.get_by_label("New goal, in the person's words").fill("Walk to the end of the garden without stopping")
    page.get_by_role("button", name="Add goal").click()
    page.locator("#goals td", has_text="end of the garden").first.wait_for()
    page.get_by_label("What will be done").fill("Arrange pulmonary rehabilitation referral")
    page.get_by_label("Owner (person and organisation)").select_option(f"{kw.practitioner_id}|{kw.organization_id}")
    page.locator("#action-due").fill(due)
    page.get_by_role("button", name="Add action").click()
    action_row = page.locator("#actions tr", has_text="pulmonary rehabilitation")
    action_row.wait_for()
    shot(page, "care-03-plan", full_page=True)
    action_row.get_by_role("combobox").select_option("in-progress")
    action_row.get_by_role("button", name="Update").click()
    page.locator("#history li", has_text="status in-progress").wait_for()

    # 4. a stale edit: a second tab saves first; the first tab's words are kept and the reason is shown
    other = ctx.new_page()
    other.goto(f"{demo.url}/patients/{pid}/care-plan")
    other.get_by_label("New goal, in the person's words").fill("Sleep through the night")
    page.get_by_label("New goal, in the person's words").fill("Be able to shower alone")
    page.get_by_role("button", name="Add goal").click()
    page.locator("#goals td", has_text="shower alone").first.wait_for()
    other.get_by_role("button", name="Add goal").click()
    other.locator("#plan-error").wait_for()
    assert "has changed since you opened it" in other.locator("#plan-error").inner_text()
    assert other.get_by_label("New goal, in the person's words").input_value() == "Sleep through the night"
    shot(other, "care-04-stale-edit")
    other.get_by_role("button", name="Add goal").click()  # resubmitted on top of the latest version
    other.locator("#goals td", has_text="Sleep through the night").first.wait_for()
    assert other.locator("#goals tbody tr", has_text="shower alone").count() == 1  # nothing lost
    other.close()

    # 5. a task for someone with no route to the person is refused, saying why; what was typed stays
    page.reload()
    page.get_by_label("Task", exact=True).fill("Please review the inhaler technique")
    page.get_by_text("Someone outside the care team").click()
    page.locator("#task-prac").fill(far_prac)
    page.locator("#task-org").fill(far_org)
    page.locator("#task-due").fill(due)
    page.get_by_role("button", name="Assign task").click()
    page.locator("#plan-error").wait_for()
    assert "no route to this person" in page.locator("#plan-error").inner_text()
    assert page.get_by_label("Task", exact=True).input_value() == "Please review the inhaler technique"
    shot(page, "care-05-task-refused")
    # ... and to the key worker themself it is given
    page.locator("#task-prac").fill(kw.practitioner_id)
    page.locator("#task-org").fill(kw.organization_id)
    page.get_by_role("button", name="Assign task").click()
    page.locator("#task td", has_text="inhaler technique").wait_for()

    # 6. My tasks lists the action and the task
    page.goto(f"{demo.url}/care/tasks")
    page.get_by_role("heading", level=1, name="My tasks").wait_for()
    assert page.get_by_text("inhaler technique").count() >= 1
    assert page.get_by_text("pulmonary rehabilitation").count() >= 1
    shot(page, "care-06-my-tasks")

    # tablet width
    page.set_viewport_size({"width": 820, "height": 1180})
    page.goto(f"{demo.url}/patients/{pid}/care-plan")
    page.get_by_role("heading", level=1, name="Personalised care and support plan").wait_for()
    shot(page, "care-07-plan-tablet")
    ctx.close()
