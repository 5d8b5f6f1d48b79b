"""Every demo role has a home and only sees links it can use: a real browser signs in as each role, follows every
link of the pages it reaches (and submits the harmless GET forms it finds) and finds no refusal (403), no fault
(500) and no raw JSON page. Patients are refused the professional pages however they are reached."""

from __future__ import annotations

import re
from collections import deque
from urllib.parse import urljoin, urlsplit

import pytest

from tests.browser.axe import describe, violations
from tests.browser.conftest import shot

ROLES = ["dr.gp", "dr.consultant", "key.worker", "nurse.community", "social.worker", "pharmacist", "analyst",
         "privacy.officer", "patient"]
PAGE_BUDGET = 45          # pages visited per role
SAME_SHAPE = 2            # addresses of one shape (e.g. /patients/{id}/care-plan) visited per role
API = ("/fhir", "/api", "/cds-services", "/auth", "/docs", "/redoc", "/openapi.json", "/static", "/healthz")
_ID_SEGMENT = re.compile(r"^(?=.*\d)[A-Za-z0-9._-]{6,}$")
# what a page must never show (part 9 of issue 13): API paths, internal role or activity ids, raw FHIR codes
NEVER_SHOWN = [re.compile(p) for p in (r"\b(?:GET|POST|PUT|DELETE) /(?:api|fhir)\b", r"\(needs '",
                                       r"role '[a-z-]+'", r"v3_id", r"\bwaiting \((?:active|draft|on-hold)\)")]


PASSWORDS = {"analyst": "analyst-pw"}  # the test server made this account before the demo users (tests/conftest.py)


def login(page, url: str, user: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORDS.get(user, "demo"))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def _shape(path: str) -> str:
    return "/".join("{id}" if _ID_SEGMENT.match(seg) else seg for seg in path.split("/"))


def _targets(page, base: str) -> list[str]:
    """Same-site page addresses of the links and GET forms on the page (forms with the values they hold)."""
    found = page.evaluate("""() => {
        const out = [];
        for (const a of document.querySelectorAll('a[href]')) out.push(a.href);
        for (const f of document.querySelectorAll('form')) {
            if ((f.getAttribute('method') || 'get').toLowerCase() !== 'get') continue;
            const data = new FormData(f);
            const q = new URLSearchParams();
            for (const [k, v] of data.entries()) if (typeof v === 'string') q.append(k, v);
            out.push(f.action + (f.action.includes('?') ? '&' : '?') + q.toString());
        }
        return out;
    }""")
    out = []
    for href in found:
        u = urlsplit(urljoin(page.url, href))
        if f"{u.scheme}://{u.netloc}" != base or u.path.startswith(API) or u.path in ("/login", "/logout"):
            continue
        out.append(u.path + (f"?{u.query}" if u.query else ""))
    return out


def crawl(page, base: str, start: str = "/") -> dict[str, int]:
    """Also runs axe-core (WCAG 2.1 A/AA) once on each shape of page the role reaches (part 11 of issue 13)."""
    seen: dict[str, int] = {}
    shapes: dict[str, int] = {}
    queue = deque([start])
    problems = []
    while queue and len(seen) < PAGE_BUDGET:
        target = queue.popleft()
        path = target.split("?")[0]
        if target in seen or shapes.get(_shape(path) + ("?" if "?" in target else ""), 0) >= SAME_SHAPE:
            continue
        shapes[_shape(path) + ("?" if "?" in target else "")] = shapes.get(_shape(path) + ("?" if "?" in target
                                                                                            else ""), 0) + 1
        resp = page.goto(base + target)
        status = resp.status if resp else 0
        seen[target] = status
        kind = (resp.headers.get("content-type") or "") if resp else ""
        if status in (403, 500) or status >= 500:
            problems.append(f"{target}: {status} {page.locator('main').inner_text()[:200]!r}")
            continue
        if "json" in kind or "html" not in kind:
            problems.append(f"{target}: not a page ({kind})")
            continue
        text = page.locator("body").inner_text()
        for pattern in NEVER_SHOWN:
            if pattern.search(text):
                problems.append(f"{target}: shows {pattern.pattern!r}")
        if shapes[_shape(path) + ("?" if "?" in target else "")] == 1 and (found := violations(page)):
            problems.append(describe(found, target))
        queue.extend(t for t in _targets(page, base) if t not in seen)
    assert not problems, "\n".join(problems)
    return seen


@pytest.mark.parametrize("user", ROLES)
def test_every_link_a_role_is_shown_works(demo, page, user):
    login(page, demo.url, user)
    page.goto(demo.url + "/")
    home = urlsplit(page.url).path
    shot(page, f"role-{user}")
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link").count() >= 1, "every role has at least its home in the menu"
    seen = crawl(page, demo.url, home)
    assert len(seen) >= 2 or user == "patient", f"{user} reached only {list(seen)}"


def test_each_role_has_its_own_home(demo, page):
    homes = {"patient": r"^/patients/[^/]+$", "privacy.officer": r"^/privacy$", "analyst": r"^/analytics$",
             "dr.gp": r"^/$", "pharmacist": r"^/$", "social.worker": r"^/$"}
    for user, pattern in homes.items():
        page.context.clear_cookies()
        login(page, demo.url, user)
        page.goto(demo.url + "/")
        assert re.match(pattern, urlsplit(page.url).path), (user, page.url)
        assert page.get_by_role("heading", level=1).count() == 1


@pytest.mark.parametrize("path", ["/mdt", "/referrals", "/care/people", "/care/tasks", "/wards", "/inbox",
                                  "/patients/search?q=smith", "/privacy", "/analytics", "/medicines-reviews",
                                  "/social-care"])
def test_patient_is_refused_every_professional_page(demo, page, path):
    login(page, demo.url, "patient")
    resp = page.goto(demo.url + path)
    assert resp.status == 403
    assert "text/html" in resp.headers["content-type"]
    assert page.get_by_role("heading", name="You do not have access to this page").is_visible()
    if path == "/mdt":
        shot(page, "role-patient-refused-mdt")
    body = page.locator("main").inner_text()
    assert "Schedule" not in body and "Staff" not in body  # not the staff directory or the scheduling form
    assert not re.search(r"role '|needs '|POST /|GET /", body)
    # the menu offers only the person's own pages
    links = [a.get_attribute("href") for a in page.get_by_role("navigation", name="Main").get_by_role("link").all()]
    assert links and all(h.startswith(("/patients/", "/me/")) for h in links), links


def test_refusals_between_roles_are_styled_and_audited(demo, page):
    from joinedup.governance.accounts import get_user

    login(page, demo.url, "analyst")
    resp = page.goto(demo.url + "/privacy/audit")
    assert resp.status == 403
    text = page.locator("main").inner_text()
    assert "Privacy reviews pages are for roles that may review access logs and break-glass use" in text
    assert "menu at the top lists the pages your role can use" in text
    gate = demo.gate
    gate.flush_audit()
    officer = get_user(gate, "privacy.officer")
    found = gate.search(officer, "AuditEvent", [("agent-name", "analyst"), ("outcome", "8"), ("_count", "50")])
    refused = [e.content for e in found.matches
               if any("page:/privacy/audit" in (x.get("what") or {}).get("reference", "")
                      for x in e.content.get("entity") or [])]
    assert refused, "the refused page is in the audit trail"


@pytest.mark.parametrize("path", ["/no-such-page", "/patients/x/not-a-view", "/care/nothing-here"])
def test_unknown_page_is_a_styled_404(demo, page, path):
    login(page, demo.url, "dr.gp")
    resp = page.goto(demo.url + path)
    assert resp.status == 404
    assert "text/html" in resp.headers["content-type"]
    assert page.get_by_role("heading", name="Page not found").is_visible()
    shot(page, "role-gp-not-found")
    assert page.get_by_role("navigation", name="Main").is_visible()


def test_unknown_api_paths_keep_operation_outcome(demo):
    import httpx

    for path in ("/fhir/NoSuchType/1", "/api/no-such-thing"):
        r = httpx.get(demo.url + path)
        assert r.status_code in (401, 404)
        assert r.json()["resourceType"] == "OperationOutcome"
    from joinedup.governance.accounts import issue_token

    token = issue_token(demo.gate, "dr.gp")
    r = httpx.get(demo.url + "/api/no-such-thing", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


def test_menu_is_built_from_the_roles_activities(demo, page):
    """The menu follows governance/roles.yaml: a role sees an area exactly when it has the area's activities."""
    from joinedup.governance.policy import activities_of

    expected = {  # from roles.yaml: what each role may do
        "pharmacist": {"Medicines reviews": True, "MDT reviews": False, "Referrals and advice": False},
        "social.worker": {"Virtual wards": False, "Medicines reviews": False, "Referrals and advice": True},
        "dr.gp": {"Virtual wards": True, "Medicines reviews": True, "Privacy reviews": False},
        "privacy.officer": {"Privacy reviews": True, "Find a person": False},
        "analyst": {"Extracts and reports": True, "Find a person": False},
    }
    assert "prescribe" in activities_of("pharmacist") and "view-social-care-record" not in activities_of("pharmacist")
    for user, want in expected.items():
        page.context.clear_cookies()
        login(page, demo.url, user)
        page.goto(demo.url + "/")
        nav = page.get_by_role("navigation", name="Main")
        for label, shown in want.items():
            assert (nav.get_by_role("link", name=re.compile(f"^{label}")).count() > 0) == shown, (user, label)
