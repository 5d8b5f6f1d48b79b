"""Web attacks over real HTTP (issue 11 part 6): cross-site request forgery, the session cookie replayed against
the APIs, missing security headers, and a forged Host header. Each attack is made and shown refused; the
legitimate request next to it is shown to work."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.security.test_signin import extra_server, make_user
from tests.web.test_pages import csrf_of, login

TEMPLATES = Path(__file__).resolve().parents[2] / "src" / "joinedup" / "web" / "templates"


def web_client(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)


def prefs(server, token: str) -> dict:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        r = c.get("/api/subscriptions")
        assert r.status_code == 200, r.text
        return r.json()["events"]


def _user_with_token(server, name: str, password: str) -> str:
    from joinedup.governance.accounts import issue_token

    make_user(server, name, password)
    return issue_token(server.gate, name)


def _refused_by_csrf(r: httpx.Response) -> bool:
    return r.status_code == 403 and "This form could not be accepted" in r.text and "security token" in r.text


# -- CSRF -----------------------------------------------------------------------------------------------------
def test_a_forged_form_post_is_refused_and_the_real_one_accepted(server, api, uid):
    name = f"csrf-{uid}"
    token = _user_with_token(server, name, "csrf-pw")
    before = prefs(server, token)
    assert all(before.values())  # every notification on
    forged = {"event": ["admission"]}  # what a hostile page would post: turn off everything else
    with web_client(server) as c:
        assert login(c, name, "csrf-pw").status_code == 303
        page = c.get("/inbox/settings")
        real_token = csrf_of(page.text)
        # 1. no token (a hostile site cannot read it): refused with a clear page, nothing changed
        r = c.post("/inbox/settings", data=forged)
        assert _refused_by_csrf(r), r.text
        # 2. a made-up token, or one taken from another person's session
        r = c.post("/inbox/settings", data={**forged, "csrf_token": "A" * 43})
        assert _refused_by_csrf(r)
        with web_client(server) as other:
            assert login(other, "gp", "gp-pw").status_code == 303
            someone_elses = csrf_of(other.get("/inbox/settings").text)
        assert someone_elses != real_token
        r = c.post("/inbox/settings", data={**forged, "csrf_token": someone_elses})
        assert _refused_by_csrf(r)
        r = c.post("/inbox/settings", data=forged, headers={"X-CSRF-Token": "wrong"})  # nor in the header
        assert _refused_by_csrf(r)
        assert prefs(server, token) == before
        # 3. the page's own form, as the person's browser sends it: accepted
        r = c.post("/inbox/settings", data={**forged, "csrf_token": real_token})
        assert r.status_code == 303 and r.headers["location"] == "/inbox/settings?saved=1"
        assert prefs(server, token) == {k: k == "admission" for k in before}
        # 4. HTMX sends the token from <body hx-headers> in X-CSRF-Token; a multipart form carries it as a field
        body_token = re.search(r'hx-headers=\'\{"X-CSRF-Token": "([^"]+)"\}\'', page.text).group(1)
        assert body_token == real_token
        r = c.post("/inbox/settings", data={"event": ["admission", "discharge"]},
                   headers={"X-CSRF-Token": body_token, "HX-Request": "true"})
        assert r.status_code == 303
        r = c.post("/inbox/settings", data={"event": list(before), "csrf_token": real_token},
                   files={"unused": ("x.txt", b"x")})
        assert r.status_code == 303 and prefs(server, token) == before
    # the refusals are in the audit trail
    server.gate.flush_audit()
    events = api.get("/fhir/AuditEvent", params={"subtype": "csrf", "_count": 50}).json().get("entry", [])
    assert sum("POST /inbox/settings refused" in e["resource"]["outcomeDesc"] for e in events) >= 4


def test_the_token_dies_with_the_session(server, uid):
    name = f"csrf-old-{uid}"
    _user_with_token(server, name, "pw-old")
    with web_client(server) as c:
        assert login(c, name, "pw-old").status_code == 303
        old = csrf_of(c.get("/inbox/settings").text)
        assert login(c, name, "pw-old").status_code == 303  # a new session
        r = c.post("/inbox/settings", data={"event": ["admission"], "csrf_token": old})
        assert _refused_by_csrf(r)


def test_log_out_and_other_actions_need_the_token_too(server, uid):
    name = f"csrf-out-{uid}"
    _user_with_token(server, name, "pw-out")
    with web_client(server) as c:
        assert login(c, name, "pw-out").status_code == 303
        assert _refused_by_csrf(c.post("/logout"))  # a hostile page cannot log you out either
        assert _refused_by_csrf(c.post("/inbox/read-all"))
        assert _refused_by_csrf(c.post("/patients/anyone/break-glass", data={"reason_category": "other",
                                                                             "reason": "forged by a web page"}))
        assert c.get("/").status_code == 200  # still logged in
        # a browser with cached Basic credentials still sends its cookie: not an exemption
        assert _refused_by_csrf(c.post("/inbox/read-all", headers={"Authorization": "Basic Zm9vOmJhcg=="}))


def test_the_log_in_form_is_protected_before_there_is_a_session(server):
    """Log-in CSRF (a hostile page logging you in as its own account) is refused: the form carries a token
    matching a cookie set with the log-in page (double submit)."""
    creds = {"username": "gp", "password": "gp-pw", "next": "/"}
    with web_client(server) as c:
        r = c.post("/login", data=creds)  # no log-in page visited: no cookie, no token
        assert _refused_by_csrf(r) and "joinedup_token" not in r.headers.get("set-cookie", "")
        page = c.get("/login")
        assert "joinedup_csrf=" in page.headers["set-cookie"] and "httponly" in page.headers["set-cookie"].lower()
        assert _refused_by_csrf(c.post("/login", data=creds))  # cookie but no token
        assert _refused_by_csrf(c.post("/login", data={**creds, "csrf_token": "B" * 43}))
        r = c.post("/login", data={**creds, "csrf_token": csrf_of(page.text)})
        assert r.status_code == 303 and "joinedup_token=" in r.headers["set-cookie"]
    with web_client(server) as attacker_browser:  # a token is bound to its own cookie
        token = csrf_of(attacker_browser.get("/login").text)
    with web_client(server) as victim:
        victim.get("/login")
        assert _refused_by_csrf(victim.post("/login", data={**creds, "csrf_token": token}))


def test_bearer_requests_need_no_csrf_token(server, uid):
    token = _user_with_token(server, f"csrf-bearer-{uid}", "pw")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                      follow_redirects=False) as c:
        r = c.post("/inbox/settings", data={"event": ["admission"]})
        assert r.status_code == 303
        assert c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "x"}]}).status_code \
            in (201, 403)  # (whatever the role may do: never a CSRF refusal)


# -- the session cookie is not an API credential ----------------------------------------------------------------
def test_the_session_cookie_is_refused_on_the_apis(server, api, uid):
    with web_client(server) as c:
        assert login(c, "admin", "admin-pw").status_code == 303
        assert c.get("/").status_code == 200  # the cookie works on pages
        for path in ("/fhir/Patient", "/fhir/AuditEvent", "/api/me/alert-settings", "/api/inbox"):
            r = c.get(path)
            assert r.status_code == 401, (path, r.status_code)
            assert r.json()["resourceType"] == "OperationOutcome"
        r = c.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Cookie{uid}"}]})
        assert r.status_code == 401
        r = c.post("/cds-services/joinedup-conflicts-patient-view", json={"hook": "patient-view"})
        assert r.status_code == 401
    assert api.get("/fhir/Patient", params={"family": f"Cookie{uid}"}).json()["total"] == 0


def test_every_post_form_in_the_templates_carries_the_token():
    forms = re.compile(r'<form\b[^>]*method="post"', re.IGNORECASE)
    missing = []
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for found in forms.finditer(text):
            if "{{ csrf_input() }}" not in text[found.start():found.start() + 400]:
                missing.append(f"{path.relative_to(TEMPLATES)}:{text[:found.start()].count(chr(10)) + 1}")
    assert missing == []
    assert "hx-headers='{\"X-CSRF-Token\": \"{{ csrf_token() }}\"}'" in (TEMPLATES / "base.html").read_text()


def test_no_page_calls_the_apis_with_the_cookie():
    calls = re.compile(r'(?:hx-(?:get|post|put|patch|delete)|action|src|href)="/(?:api|fhir)\b')
    offenders = [str(p.relative_to(TEMPLATES)) for p in TEMPLATES.rglob("*.html") if calls.search(p.read_text())]
    assert offenders == []


# -- security headers -----------------------------------------------------------------------------------------
def _has_security_headers(r: httpx.Response, *, no_store: bool = True) -> None:
    csp = r.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["script-src"] == ["'self'"]  # no inline script, no eval
    assert directives["frame-ancestors"] == ["'none'"] and directives["object-src"] == ["'none'"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    if no_store:
        assert r.headers["cache-control"] == "no-store"


def test_security_headers_on_pages_records_and_errors(server, api, uid):
    pid = f"hdr-{uid}"
    assert api.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).status_code in (200, 201)
    with web_client(server) as c:
        _has_security_headers(c.get("/login"))
        assert login(c, "admin", "admin-pw").status_code == 303
        _has_security_headers(c.get("/"))  # a page
        _has_security_headers(c.get(f"/patients/{pid}"))  # a record
        _has_security_headers(c.get("/patients/nobody-at-all"))  # an error page
    _has_security_headers(api.get(f"/fhir/Patient/{pid}"))  # a FHIR read
    _has_security_headers(api.get("/fhir/Patient/nobody-at-all"))  # a FHIR error
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        _has_security_headers(anon.get("/fhir/Patient"))  # 401
        _has_security_headers(anon.get("/api/no-such-thing"))
        static = anon.get("/static/app.css")  # no record: may be cached
        _has_security_headers(static, no_store=False)
        assert "no-store" not in static.headers.get("cache-control", "")
        assert "cdn.jsdelivr.net" in anon.get("/docs").headers["content-security-policy"]  # Swagger UI still loads


def test_cookies_are_secure_when_configured(server, tmp_path):
    with extra_server(server, tmp_path, secure_cookies=True) as url, \
            httpx.Client(base_url=url, timeout=60, follow_redirects=False) as c:
        page = c.get("/login")
        assert re.search(r"joinedup_csrf=[^;]+;.*Secure", page.headers["set-cookie"])
        assert page.headers["strict-transport-security"].startswith("max-age=")
        # (httpx keeps Secure cookies for https only: send it back as a browser on https would)
        seed = page.headers["set-cookie"].split(";")[0]
        r = c.post("/login", data={"username": "gp", "password": "gp-pw", "next": "/",
                                   "csrf_token": csrf_of(page.text)}, headers={"Cookie": seed})
        assert r.status_code == 303
        session = r.headers["set-cookie"]
        assert "joinedup_token=" in session and "Secure" in session and "HttpOnly" in session


# -- trusted hosts --------------------------------------------------------------------------------------------
def test_a_foreign_host_is_refused_and_never_reflected(server, api):
    port = server.url.rsplit(":", 1)[1]
    evil = "evil.example"
    for host in (evil, f"{evil}:{port}", f"127.0.0.1.{evil}", f"localhost.{evil}:{port}", ""):
        r = api.get("/fhir/Patient", params={"_count": 1}, headers={"Host": host})
        assert r.status_code == 400, (host, r.status_code)
        assert r.json()["resourceType"] == "OperationOutcome"
        assert evil not in r.text and "location" not in r.headers
        _has_security_headers(r)
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as anon:
        r = anon.get("/patients/somebody", headers={"Host": evil})  # would redirect to /login
        assert r.status_code == 400 and "location" not in r.headers
        assert r.headers["content-type"].startswith("text/html") and evil not in r.text
        assert anon.post("/login", data={"username": "gp"}, headers={"Host": evil}).status_code == 400
    # the trusted names, with or without a port, in any case: links name the host that was asked for
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", "testserver"):
        r = api.get("/fhir/Patient", params={"_count": 1}, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
        assert all(evil not in link["url"] for link in r.json().get("link", []))
        assert any(link["url"].startswith(f"http://{host}/fhir/Patient") for link in r.json()["link"]), r.json()


def _wait_for(url: str, host: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "serve exited"
        try:
            httpx.get(url, headers={"Host": host}, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("joinedup serve did not start")


def test_serve_trusts_the_address_it_binds(server, tmp_path):
    """`joinedup serve --host 127.0.0.2` answers for 127.0.0.2 as well as the default names; others are refused."""
    script = Path(sys.executable).with_name("joinedup")
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    # the shared test database: the server signs its audit events with this session's key and checkpoints (else
    # the chain of the shared database would carry entries under another key)
    env = {"PATH": "/usr/bin:/bin", "JOINEDUP_DATABASE_URL": server.db_url, "JOINEDUP_SECRET_KEY": "test-secret",
           **{k: os.environ[k] for k in ("JOINEDUP_AUDIT_KEY_FILE", "JOINEDUP_AUDIT_CHECKPOINT_FILE",
                                         "JOINEDUP_AUDIT_KEYS") if k in os.environ}}
    proc = subprocess.Popen([str(script), "serve", "--host", "127.0.0.2", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.2:{port}/healthz"
        _wait_for(url, f"127.0.0.2:{port}", proc)
        assert httpx.get(url, timeout=10).status_code == 200  # Host: 127.0.0.2:port
        assert httpx.get(url, headers={"Host": f"localhost:{port}"}, timeout=10).status_code == 200
        assert httpx.get(url, headers={"Host": "evil.example"}, timeout=10).status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- the pages still work under the policy, in a real browser ------------------------------------------------------
@pytest.mark.browser
def test_pages_work_under_the_content_security_policy(server, uid):
    """Log in, search with HTMX and save a form in chromium with no CSP violation; an injected inline script
    is blocked."""
    from tests.browser.conftest import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (make system-deps installs it)")
    name = f"csp-{uid}"
    make_user(server, name, "csp-pw")
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            _drive_chromium(server.url, name, uid)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    # (a thread of its own: the browser tests' session-wide Playwright may be running in this one)
    runner = threading.Thread(target=drive)
    runner.start()
    runner.join(timeout=300)
    assert not runner.is_alive(), "the browser did not finish"
    if failures:
        raise failures[0]


def _drive_chromium(url: str, name: str, uid: str) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

    violations: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(locale="en-GB").new_page()
            page.set_default_timeout(15000)
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(f"{url}/login")
            page.get_by_label("User name").fill(name)
            page.get_by_label("Password").fill("csp-pw")
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("heading", name="Find a person").wait_for()
            assert page.evaluate("() => typeof htmx") == "object"  # the vendored htmx ran
            page.get_by_label("NHS number, name or date of birth").fill(f"Nobody{uid}")
            page.get_by_role("button", name="Search").click()
            page.locator("#results-heading").wait_for()  # swapped in by HTMX
            assert "/patients/search?q=" in page.url  # hx-push-url
            page.goto(f"{url}/inbox/settings")
            page.locator("input[name=event]").first.uncheck()
            page.get_by_role("button", name="Save choices").click()
            page.get_by_text("Your choices have been saved.").wait_for()
            assert violations == []
            page.evaluate("""() => { const s = document.createElement('script');
                                     s.textContent = 'window.injected = 1'; document.body.appendChild(s); }""")
            page.wait_for_timeout(200)
            assert page.evaluate("() => window.injected") is None
            assert violations, "the injected inline script was reported as blocked"
            page.get_by_role("button", name="Log out").click()
            page.get_by_role("heading", name="Log in to JoinedUp").wait_for()
        finally:
            browser.close()
