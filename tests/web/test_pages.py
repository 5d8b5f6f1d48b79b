"""The web pages over real HTTP: log-in, search, the patient page, open-in-context and error pages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlencode

import httpx
import pytest

from tests.record.helpers import load, nhs_number, organisations, rich_record, src


@pytest.fixture()
def person(server, api, uid):
    pid = f"web-{uid}"
    seed = int(uid[:6], 16) + 7
    load(api, organisations(uid) + rich_record(uid, pid, gp_practitioner="gp-1", seed=seed))
    return {"id": pid, "nhs": nhs_number(seed), "family": f"Young{uid}"}


CSRF_INPUT = re.compile(r'<input type="hidden" name="csrf_token" value="([^"]+)">')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF_INPUT.search(html)
    assert found, "the page has no form carrying a csrf_token"
    return found.group(1)


def form_token(c: httpx.Client, url: str) -> str:
    """What a browser does before posting a form: load the page the form is on and take its csrf_token."""
    r = c.get(url, follow_redirects=False)
    return csrf_of(r.text)


def login(c: httpx.Client, user: str, password: str, next: str = "/") -> httpx.Response:
    """Log in through the form: open the log-in page (which sets its pre-session cookie), then post it."""
    token = form_token(c, f"/login?{urlencode({'next': next})}")
    return c.post("/login", data={"username": user, "password": password, "next": next, "csrf_token": token})


@contextmanager
def browser(server, user: str | None = "gp") -> Iterator[httpx.Client]:
    """A cookie-keeping client, logged in through the form like a person would be."""
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as c:
        if user:
            r = login(c, user, f"{user}-pw")
            assert r.status_code == 303 and r.headers["location"] == "/"
        yield c


def test_login_sets_http_only_cookie_and_logout_clears_it(server):
    with browser(server, None) as c:
        r = login(c, "gp", "gp-pw", next="/patients/x")
        assert r.status_code == 303 and r.headers["location"] == "/patients/x"
        cookie = r.headers["set-cookie"].lower()
        assert "joinedup_token=" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        home = c.get("/")
        assert home.status_code == 200
        r = c.post("/logout", data={"csrf_token": csrf_of(home.text)})
        assert r.status_code == 303
        assert c.get("/").status_code == 303


def test_wrong_password_is_a_clear_page(server):
    with browser(server, None) as c:
        r = login(c, "gp", "nope")
        assert r.status_code == 401
        assert "do not match" in r.text and 'role="alert"' in r.text


def test_next_cannot_leave_the_site(server):
    with browser(server, None) as c:
        r = login(c, "gp", "gp-pw", next="//evil.example/x")
        assert r.headers["location"] == "/"


def test_pages_need_login_and_come_back_after_it(server, person):
    with browser(server, None) as c:
        r = c.get(f"/patients/{person['id']}")
        assert r.status_code == 303 and r.headers["location"] == f"/login?next=%2Fpatients%2F{person['id']}"
        r = c.get("/login", params={"next": f"/patients/{person['id']}"})
        assert f'value="/patients/{person["id"]}"' in r.text


def test_home_lists_my_patients(server, person):
    with browser(server) as c:
        r = c.get("/")
        assert r.status_code == 200
        assert "My patients" in r.text and person["family"] in r.text
        assert 'class="skip-link"' in r.text and '<main id="main"' in r.text


@pytest.mark.parametrize("how", ["nhs", "spaced", "name", "name+dob", "dob"])
def test_search(server, person, how):
    q = {"nhs": person["nhs"], "spaced": f"{person['nhs'][:3]} {person['nhs'][3:6]} {person['nhs'][6:]}",
         "name": person["family"], "name+dob": f"David {person['family']} 01/12/1954", "dob": "1954-12-01"}[how]
    with browser(server) as c:
        r = c.get("/patients/search", params={"q": q})
        assert r.status_code == 200
        assert f'href="/patients/{person["id"]}"' in r.text
        # HTMX asks for the results fragment only
        r = c.get("/patients/search", params={"q": q}, headers={"HX-Request": "true"})
        assert r.text.lstrip().startswith('<section id="results"') and person["family"] in r.text


def test_search_bad_nhs_number_and_empty(server):
    with browser(server) as c:
        r = c.get("/patients/search", params={"q": "9990000001"})
        assert r.status_code == 400 and "not a valid NHS number" in r.text
        r = c.get("/patients/search", params={"q": ""})
        assert r.status_code == 200 and "Type an NHS number" in r.text


def test_patient_page_shows_sources_and_discrepancies(server, person):
    with browser(server) as c:
        r = c.get(f"/patients/{person['id']}")
        assert r.status_code == 200, r.text
        html = r.text
        assert "Server-Timing" in r.headers
        for heading in ("Medications and medical devices", "Problems and issues", "Allergies and adverse reactions",
                        "Investigation results", "Encounters and events", "Professional contacts",
                        "Personal contacts", "Social care and support", "Alerts"):
            assert heading in html, heading
        for badge in ("badge--gp", "badge--hospital", "badge--community", "badge--mental", "badge--social"):
            assert badge in html, badge
        assert "Different doses" in html and "still on the GP repeat list" in html
        assert "<svg" in html and 'role="img"' in html  # results chart with a text alternative


def test_timeline_partial_and_filters(server, person):
    with browser(server) as c:
        url = f"/patients/{person['id']}/timeline"
        r = c.get(url, params={"setting": "Hospital"}, headers={"HX-Request": "true"})
        assert r.status_code == 200
        assert r.text.lstrip().startswith('<section id="timeline"')
        assert 'data-setting="GP practice"' not in r.text and 'data-setting="Hospital"' in r.text
        assert r.headers["HX-Push-Url"].endswith("setting=Hospital")
        # without HTMX the filter is a normal page
        r = c.get(url, params={"type": "referral"})
        assert r.status_code == 303 and r.headers["location"].endswith("?type=referral#timeline")
        r = c.get(f"/patients/{person['id']}", params={"type": "referral"})
        assert r.text.count('class="timeline__item') == 1
        r = c.get(f"/patients/{person['id']}", params={"setting": "Moon base"})
        assert r.status_code == 400 and "Unknown setting" in r.text


def test_unknown_patient_page_is_404(server):
    # (for a professional the gate answers 403 before saying whether a record exists)
    with browser(server, "admin") as c:
        r = c.get("/patients/nobody-here")
        assert r.status_code == 404 and "Not found" in r.text and "<h1>" in r.text


def test_refusal_page_explains_how_to_get_access(server, api, uid):
    pid = f"nogp-{uid}"
    load(api, [{"resourceType": "Patient", "id": pid, "meta": src("elsewhere"),
                "name": [{"family": "Stranger"}]}])
    with browser(server) as c:
        r = c.get(f"/patients/{pid}")
        assert r.status_code == 403
        assert "You do not have access to this record" in r.text
        assert "How to get access" in r.text and "care team" in r.text and "break glass" in r.text.lower()


def test_launch_opens_the_person_directly(server, person):
    with browser(server) as c:
        r = c.get("/launch", params={"nhs": person["nhs"]})
        assert r.status_code == 303 and r.headers["location"] == f"/patients/{person['id']}"


def test_launch_before_login_comes_back(server, person):
    with browser(server, None) as c:
        r = c.get("/launch", params={"nhs": person["nhs"]})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2Flaunch%3Fnhs%3D")
        r = login(c, "gp", "gp-pw", next=f"/launch?nhs={person['nhs']}")
        assert r.headers["location"] == f"/launch?nhs={person['nhs']}"
        r = c.get(r.headers["location"])
        assert r.headers["location"] == f"/patients/{person['id']}"


@pytest.mark.parametrize("nhs,status,text", [("12345", 400, "not a valid NHS number"),
                                             ("9990000001", 400, "not a valid NHS number"),
                                             ("abc", 400, "not a valid NHS number"),
                                             ("", 400, "No NHS number was given"),
                                             ("9434765870", 404, "No one with NHS number")])
def test_launch_bad_or_unknown_nhs_number(server, nhs, status, text):
    with browser(server) as c:
        r = c.get("/launch", params={"nhs": nhs})
        assert r.status_code == status and text in r.text


def test_docs_and_static_still_served(server):
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/docs").status_code == 200
        r = c.get("/static/htmx.min.js")
        assert r.status_code == 200 and "htmx" in r.text[:200]
        assert c.get("/static/app.css").status_code == 200
