"""Reads by id (`GET /fhir/{type}/{id}`, the request clients make most) on their fast path (issue 14 part 3): on
SQLite they are answered on the event loop, on a connection each thread keeps open. Whatever the path, a token
revoked or a user disabled is refused from the very next read, a change committed elsewhere is seen at once, and
the response carries the headers RFC 7231 and the FHIR RESTful API ask for.

Sources: RFC 7231 section 7.1.1.1 (HTTP-date, IMF-fixdate; its example "Sun, 06 Nov 1994 08:49:37 GMT") and
section 7.2 (ETag, Last-Modified); FHIR R4 http.html#read ("the server SHOULD return an ETag header with the
versionId ... and a Last-Modified header") and http.html#mime-type (application/fhir+json).
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import httpx

from joinedup.api.fhir_routes import http_date


def _client(server, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}",
                                                      "Accept": "application/fhir+json"}, timeout=60)


def _patient(api, uid: str) -> str:
    r = api.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": f"Fast{uid}"}],
                                        "gender": "female", "birthDate": "1970-01-01"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_http_date_is_rfc_7231_imf_fixdate():
    assert http_date("1994-11-06T08:49:37") == "Sun, 06 Nov 1994 08:49:37 GMT"  # RFC 7231's own example
    assert http_date("1994-11-06T08:49:37.999999Z") == "Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date("2024-02-29T23:59:59.5") == "Thu, 29 Feb 2024 23:59:59 GMT"


def test_read_carries_etag_last_modified_and_security_headers(server, api, uid):
    pid = _patient(api, uid)
    r = api.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200
    body = r.json()
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.headers["etag"] == f'W/"{body["meta"]["versionId"]}"'
    modified = parsedate_to_datetime(r.headers["last-modified"])
    assert r.headers["last-modified"].endswith(" GMT")
    assert modified.isoformat()[:19] == body["meta"]["lastUpdated"][:19]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert int(r.headers["content-length"]) == len(r.content)


def test_a_revoked_token_is_refused_on_the_very_next_read(server, api, uid):
    from joinedup.governance.accounts import add_user, issue_token, revoke_token

    pid = _patient(api, uid)
    add_user(server.gate, name=f"reader-{uid}", role="system", replace=True)
    token = issue_token(server.gate, f"reader-{uid}")
    with _client(server, token) as c:
        for _ in range(5):  # the serving threads' connections are open and have read this token
            assert c.get(f"/fhir/Patient/{pid}").status_code == 200
        assert revoke_token(server.gate, token)
        r = c.get(f"/fhir/Patient/{pid}")
        assert r.status_code == 401
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_disabled_user_is_refused_on_their_next_read(server, api, uid):
    from joinedup.governance.accounts import add_user, disable_user, issue_token

    pid = _patient(api, uid)
    add_user(server.gate, name=f"leaver-{uid}", role="system", replace=True)
    token = issue_token(server.gate, f"leaver-{uid}")
    with _client(server, token) as c:
        assert c.get(f"/fhir/Patient/{pid}").status_code == 200
        disable_user(server.gate, f"leaver-{uid}")
        assert c.get(f"/fhir/Patient/{pid}").status_code == 401


def test_a_change_committed_elsewhere_is_read_at_once(server, api, uid):
    pid = _patient(api, uid)
    first = api.get(f"/fhir/Patient/{pid}")
    assert first.headers["etag"] == 'W/"1"'
    for version in (2, 3, 4):
        doc = {**first.json(), "birthDate": f"197{version}-01-01"}
        assert api.put(f"/fhir/Patient/{pid}", json=doc).status_code == 200
        r = api.get(f"/fhir/Patient/{pid}")
        assert r.headers["etag"] == f'W/"{version}"'
        assert r.json()["birthDate"] == f"197{version}-01-01"
    assert api.delete(f"/fhir/Patient/{pid}").status_code == 200
    assert api.get(f"/fhir/Patient/{pid}").status_code == 410


def test_each_read_is_audited_before_its_response_arrives(server, api, uid):
    import sqlalchemy as sa

    from joinedup.store import schema

    pid = _patient(api, uid)
    a = schema.audit_event
    for n in range(1, 4):
        assert api.get(f"/fhir/Patient/{pid}").status_code == 200
        with server.gate.store_for_tests.reading() as conn:  # another connection: only what is committed
            reads = conn.execute(sa.select(sa.func.count()).select_from(a).where(
                a.c.entity == f"Patient/{pid}", a.c.action == "read")).scalar()
        assert reads == n


def test_refusals_and_unknown_entries_on_the_fast_path_are_operation_outcomes(server, uid):
    with server.client("gp") as gp, server.client("admin") as admin:
        pid = _patient(admin, uid)
        r = gp.get(f"/fhir/Patient/{pid}")  # no relationship with this person
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"
        r = admin.get(f"/fhir/Patient/no-such-{uid}")
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
        r = admin.get(f"/fhir/Patient/{pid}", params={"_format": "xml"})
        assert r.status_code == 406
