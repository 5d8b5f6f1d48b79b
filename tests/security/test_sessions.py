"""Sessions over real HTTP (issue 11 part 6): log-out revokes the token on the server (web and API), and
disabling a user, removing them or changing their role counts from their very next request (no token cache).
User administration is the `joinedup users` command (disable, remove, list)."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from joinedup.cli import app
from tests.security.test_signin import from_address, grant, make_user
from tests.web.test_pages import csrf_of, login


@pytest.fixture()
def run(server):
    """The `joinedup` command against the test server's database."""
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, list(args), env={"JOINEDUP_DATABASE_URL": server.db_url})

    return invoke


def bearer(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}",
                                                      "Accept": "application/fhir+json"}, timeout=60)


def _token_of(server, name: str) -> str:
    from joinedup.governance.accounts import issue_token

    return issue_token(server.gate, name)


# -- log-out ------------------------------------------------------------------------------------------------
def test_web_log_out_revokes_the_session_on_the_server(server, uid):
    name = make_user(server, f"leaver-{uid}", "leaver-pw")
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as c:
        assert login(c, name, "leaver-pw").status_code == 303
        stolen = c.cookies["joinedup_token"]  # as if copied from the browser before log-out
        home = c.get("/")
        assert home.status_code == 200
        r = c.post("/logout", data={"csrf_token": csrf_of(home.text)})
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert 'joinedup_token=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    # the copied session is dead on the server: as a cookie on a page, and as a bearer token on the API
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as replay:
        replay.cookies.set("joinedup_token", stolen)
        r = replay.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    with bearer(server, stolen) as api:
        assert api.get("/fhir/Patient", params={"_count": 1}).status_code == 401


def test_api_log_out_revokes_the_bearer_token(server, uid):
    name = make_user(server, f"apiout-{uid}", "apiout-pw")
    with from_address(server.url) as c:
        token = grant(c, name, "apiout-pw").json()["access_token"]
    with bearer(server, token) as api:
        assert api.get("/api/me/alert-settings").status_code == 200
        r = api.post("/auth/logout")
        assert r.status_code == 200 and r.json() == {"revoked": True}
        assert api.get("/api/me/alert-settings").status_code == 401  # the very next request
        assert api.post("/auth/logout").status_code == 401
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        assert anon.post("/auth/logout").status_code == 401


# -- disable, remove, change role -----------------------------------------------------------------------------
def test_a_disabled_user_is_refused_on_their_next_request(server, run, uid):
    name = make_user(server, f"disabled-{uid}", "disabled-pw")
    token = _token_of(server, name)
    with bearer(server, token) as api, httpx.Client(base_url=server.url, timeout=60,
                                                    follow_redirects=False) as web:
        assert login(web, name, "disabled-pw").status_code == 303
        assert api.get("/api/me/alert-settings").status_code == 200
        assert web.get("/").status_code == 200
        result = run("users", "disable", name)
        assert result.exit_code == 0, result.output
        assert f"user {name} disabled" in result.output
        assert api.get("/api/me/alert-settings").status_code == 401
        r = web.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    with from_address(server.url) as c:  # and cannot sign in again (told nothing more than a wrong password)
        r = grant(c, name, "disabled-pw")
        assert r.status_code == 400 and r.json()["error_description"] == "wrong user name or password"
    listed = run("users", "list")
    assert listed.exit_code == 0
    assert f"{name}\tgp\tpractice-1\tdisabled" in listed.stdout.splitlines()


def test_a_removed_user_is_refused_and_their_history_stays(server, run, api, uid):
    name = make_user(server, f"removed-{uid}", "removed-pw")
    token = _token_of(server, name)
    with bearer(server, token) as them:
        assert them.get("/api/me/alert-settings").status_code == 200
        assert them.get("/fhir/Patient", params={"family": f"Nobody{uid}"}).status_code == 200
        result = run("users", "remove", name)
        assert result.exit_code == 0, result.output
        assert them.get("/api/me/alert-settings").status_code == 401
    assert all(not line.startswith(f"{name}\t") for line in run("users", "list").stdout.splitlines())
    server.gate.flush_audit()
    r = api.get("/fhir/AuditEvent", params={"agent": name, "_count": 50})
    assert r.status_code == 200 and r.json()["entry"], "the removed user's audit history is kept"
    # the name can be given to someone new, who does not inherit the old tokens
    make_user(server, name, "new-person-pw")
    with bearer(server, token) as old:
        assert old.get("/api/me/alert-settings").status_code == 401


def test_a_role_change_counts_from_the_next_request(server, run, uid, api):
    name = make_user(server, f"officer-{uid}", "officer-pw", role="privacy-officer")
    token = _token_of(server, name)
    with bearer(server, token) as c:
        assert c.get("/fhir/AuditEvent", params={"_count": 1}).status_code == 200
        api.put(f"/fhir/Practitioner/pr-{uid}", json={"resourceType": "Practitioner", "id": f"pr-{uid}"})
        api.put(f"/fhir/Organization/org-{uid}", json={"resourceType": "Organization", "id": f"org-{uid}",
                                                      "name": f"Org {uid}"})
        demoted = run("users", "add", name, "--role", "gp", "--practitioner", f"pr-{uid}", "--organization",
                      f"org-{uid}", "--replace")
        assert demoted.exit_code == 0, demoted.output
        assert c.get("/fhir/AuditEvent", params={"_count": 1}).status_code == 403
        promoted = run("users", "add", name, "--role", "privacy-officer", "--replace")
        assert promoted.exit_code == 0, promoted.output
        assert c.get("/fhir/AuditEvent", params={"_count": 1}).status_code == 200


# -- the users command ------------------------------------------------------------------------------------------
def test_users_list_shows_role_organisation_and_whether_active(server, run, uid):
    name = make_user(server, f"listed-{uid}", "x", role="consultant", practitioner=f"pr-{uid}",
                     organization=f"trust-{uid}")
    lines = run("users", "list").stdout.splitlines()
    assert f"{name}\tconsultant\ttrust-{uid}\tactive" in lines
    assert "admin\tsystem\t\tactive" in lines


@pytest.mark.parametrize("command", ["disable", "remove"])
def test_unknown_user_is_exit_2_with_one_line(run, uid, command):
    result = run("users", command, f"nobody-{uid}")
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and f"no such user 'nobody-{uid}'" in result.output
