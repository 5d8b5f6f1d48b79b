"""Request limits (issue 11 part 7): one request cannot stall or break the server.

- a body over `max_body_bytes` is refused with 413 and an OperationOutcome, whether its size is declared
  (Content-Length) or streamed (chunked), on /fhir and on the JSON APIs;
- a batch or transaction Bundle over `max_bundle_entries` is refused (413) before any entry is processed, and the
  message names the limit;
- a NUL character in the URL or a body, or half a UTF-16 surrogate pair in a JSON body, is a 400, not a store error;
- every integer parameter (`_count`, `_offset`, `count`, `offset`, `limit`, version and item ids) that is not a
  whole number in range is a 400 OperationOutcome that names the parameter, never a 500;
- a large transaction runs off the event loop: /healthz keeps answering while it is processed.
"""

from __future__ import annotations

import threading
import time

import httpx
import orjson
import pytest

HUGE = "99999999999999999999999"
BAD_VALUES = [HUGE, "-1", "abc", "1.5", "²", "1e3", "0x10", ""]


def _outcome(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/fhir+json"), r.headers["content-type"]
    doc = r.json()
    assert doc["resourceType"] == "OperationOutcome", doc
    return " ".join(i.get("diagnostics", "") for i in doc["issue"])


def _limit() -> int:
    from joinedup.config import Settings

    return Settings().max_body_bytes


# -- body size ---------------------------------------------------------------------------------------------------
def _chunks(total: int, size: int = 1024 * 1024):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield b" " * n
        sent += n


@pytest.mark.parametrize("path", ["/fhir", "/fhir/Patient", "/fhir/Subscription", "/api/break-glass",
                                  "/api/patients/x/care-plan/goals", "/cds-services/conflicts-patient-view"])
def test_body_over_the_limit_declared_up_front_is_413(server, path):
    limit = _limit()
    with server.client("admin") as c:
        r = c.post(path, content=b" " * (limit + 1), headers={"Content-Type": "application/fhir+json"})
        text = _outcome(r, 413)
        assert f"{limit:,} bytes" in text and "JOINEDUP_MAX_BODY_BYTES" in text
        assert c.get("/fhir/metadata").status_code == 200  # the connection is still good


@pytest.mark.parametrize("path", ["/fhir", "/fhir/Subscription", "/api/break-glass", "/api/me/alert-settings"])
def test_streamed_body_over_the_limit_is_413(server, path):
    """A chunked body declares no size: it is counted as it arrives and refused once past the limit."""
    limit = _limit()
    method = "PUT" if path.endswith("alert-settings") else "POST"
    with server.client("admin") as c:
        r = c.request(method, path, content=_chunks(limit + 1024 * 1024),
                      headers={"Content-Type": "application/json"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        text = _outcome(r, 413)
        assert f"{limit:,} bytes" in text


def test_body_just_under_the_limit_is_read(server):
    """Padding whitespace to just under the limit is still an ordinary (here: refused as not a Bundle) request."""
    limit = _limit()
    body = b'{"resourceType": "Patient"}' + b" " * (limit - 40)
    with server.client("admin") as c:
        text = _outcome(c.post("/fhir", content=body, headers={"Content-Type": "application/fhir+json"}), 400)
        assert "Bundle" in text


# -- bundle entries ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_too_many_bundle_entries_are_refused_before_any_is_processed(server, uid, btype):
    from joinedup.config import Settings

    limit = Settings().max_bundle_entries
    entry = {"request": {"method": "PUT", "url": f"Patient/lim-{uid}"},
             "resource": {"resourceType": "Patient", "id": f"lim-{uid}"}}
    bundle = {"resourceType": "Bundle", "type": btype, "entry": [entry] * (limit + 1)}
    with server.client("admin") as c:
        text = _outcome(c.post("/fhir", content=orjson.dumps(bundle),
                               headers={"Content-Type": "application/fhir+json"}), 413)
        assert f"{limit:,}" in text and "JOINEDUP_MAX_BUNDLE_ENTRIES" in text and f"{limit + 1:,}" in text
        assert c.get(f"/fhir/Patient/lim-{uid}").status_code == 404  # nothing was written


# -- text no store can keep ---------------------------------------------------------------------------------------
NUL_URLS = ["/fhir/Patient/a%00b", "/fhir/Patient?name=a%00", "/fhir/Observation?subject=Patient/%00",
            "/api/patients/a%00/summary", "/api/tasks/a%00", "/fhir/AuditEvent?patient=a%00"]


@pytest.mark.parametrize("url", NUL_URLS)
def test_nul_in_the_url_is_400(server, url):
    with server.client("admin") as c:
        assert "NUL" in _outcome(c.get(url), 400)


@pytest.mark.parametrize(("path", "body"), [
    ("/fhir/Patient", b'{"resourceType": "Patient", "gender": "a\\u0000"}'),
    ("/fhir/Patient", b'{"resourceType": "Patient", "name": [{"text": "\\ud800"}]}'),
    ("/api/referrals", b'{"patient_id": "p", "to": "x", "text": "\\udc00"}'),
    ("/api/virtual-wards", b'{"name": "a\\u0000", "kind": "acute", "capacity": 5, "organization": "o"}'),
    ("/api/patients/p/care-plan/goals", b'{"description": "\\ud83d"}'),
])
def test_nul_or_half_a_character_in_a_body_is_400(server, path, body):
    """Text FHIR forbids and the store cannot keep (PostgreSQL refuses NUL; half a UTF-16 pair is no character) is
    refused at the edge, whichever route and parser would have read it."""
    with server.client("admin") as c:
        text = _outcome(c.post(path, content=body, headers={"Content-Type": "application/json"}), 400)
        assert "NUL" in text or "surrogate" in text


def test_characters_outside_the_basic_plane_are_kept_however_the_body_is_cut(server, uid):
    """Surrogate pairs (\\ud83d\\ude00 is an emoji) are whole characters, even when the stream cuts between them."""
    name = "\\ud83d\\ude00" * 200
    body = (b'{"resourceType": "Patient", "id": "emoji-' + uid.encode() + b'", "name": [{"text": "' + name.encode()
            + b'"}]}')

    def pieces():
        for i in range(0, len(body), 5):
            yield body[i:i + 5]

    with server.client("admin") as c:
        r = c.put(f"/fhir/Patient/emoji-{uid}", content=pieces(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text[:300]
        assert c.get(f"/fhir/Patient/emoji-{uid}").json()["name"][0]["text"] == "\U0001F600" * 200


# -- integer parameters ------------------------------------------------------------------------------------------
# (method, path, parameter, user): every endpoint that takes an integer parameter
INTEGER_PARAMS = [
    ("GET", "/fhir/Patient", "_count", "admin"),
    ("GET", "/fhir/Patient", "_offset", "admin"),
    ("GET", "/fhir/Observation", "_offset", "gp"),
    ("POST", "/fhir/Patient/_search", "_count", "admin"),
    ("POST", "/fhir/Patient/_search", "_offset", "admin"),
    ("GET", "/fhir/AuditEvent", "_count", "admin"),
    ("GET", "/fhir/AuditEvent", "_offset", "admin"),
    ("GET", "/fhir/_history", "_count", "admin"),
    ("GET", "/fhir/_history", "_offset", "admin"),
    ("GET", "/fhir/Patient/_history", "_count", "admin"),
    ("GET", "/fhir/Patient/_history", "_offset", "admin"),
    ("GET", "/fhir/Patient/{pid}/_history", "_count", "admin"),
    ("GET", "/fhir/Patient/{pid}/_history", "_offset", "admin"),
    ("GET", "/fhir/Patient/{pid}/$everything", "_count", "admin"),
    ("GET", "/fhir/Patient/{pid}/$everything", "_offset", "admin"),
    ("GET", "/api/me/access-log", "count", "pat"),
    ("GET", "/api/me/access-log", "offset", "pat"),
    ("GET", "/api/conflicts/screen", "_count", "admin"),
    ("GET", "/api/conflicts/screen", "_offset", "admin"),
    ("GET", "/api/inbox", "limit", "gp"),
    ("GET", "/api/virtual-wards/case-finding", "limit", "admin"),
]
PATH_INTEGERS = [
    ("GET", "/fhir/Patient/{pid}/_history/{value}", "version id", "admin"),
    ("POST", "/api/inbox/{value}/read", "item_id", "gp"),
]


@pytest.fixture(scope="module")
def limits_patient(server) -> str:
    with server.client("admin") as c:
        r = c.put("/fhir/Patient/limits-1", json={"resourceType": "Patient", "id": "limits-1", "gender": "female"})
        assert r.status_code in (200, 201), r.text
    return "limits-1"


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize(("method", "path", "param", "user"), INTEGER_PARAMS,
                         ids=[f"{m} {p} {q}" for m, p, q, _ in INTEGER_PARAMS])
def test_bad_integer_query_parameters_are_400(server, limits_patient, method, path, param, user, value):
    url = path.format(pid=limits_patient)
    with server.client(user) as c:
        if method == "POST":
            r = c.post(url, data={param: value})
        else:
            r = c.get(url, params={param: value})
        text = _outcome(r, 400)
        assert param in text, text


@pytest.mark.parametrize("value", [HUGE, "-1", "abc", "²"])
@pytest.mark.parametrize(("method", "path", "param", "user"), PATH_INTEGERS,
                         ids=[f"{m} {p}" for m, p, _, _ in PATH_INTEGERS])
def test_bad_integer_path_parameters_are_400(server, limits_patient, method, path, param, user, value):
    with server.client(user) as c:
        r = c.request(method, path.format(pid=limits_patient, value=value))
        text = _outcome(r, 400)
        assert param in text, text


def test_offset_bound_is_explained_and_sane_values_still_work(server, limits_patient):
    with server.client("admin") as c:
        text = _outcome(c.get("/fhir/Patient", params={"_offset": "10000001"}), 400)
        assert "10,000,000" in text and "_lastUpdated" in text
        ok = c.get("/fhir/Patient", params={"_offset": "10000000", "_count": "5"})
        assert ok.status_code == 200 and ok.json()["entry"] == []
        assert c.get("/fhir/Patient", params={"_count": "5000"}).status_code == 200  # capped, not refused
        assert c.get(f"/fhir/Patient/{limits_patient}/_history/1").status_code == 200
        page = c.get(f"/fhir/Patient/{limits_patient}/$everything", params={"_count": "0"}).json()
        assert page["total"] >= 1 and page["entry"] == []


# -- responsiveness ----------------------------------------------------------------------------------------------
def test_a_large_transaction_does_not_stall_healthz(server, uid):
    """While a 5,000-entry transaction is processed (in the thread pool), /healthz answers within a second."""
    n_patients = 50
    entries = [{"request": {"method": "PUT", "url": f"Patient/st-{uid}-{p}"},
                "resource": {"resourceType": "Patient", "id": f"st-{uid}-{p}", "gender": "male",
                             "name": [{"family": f"Stall{p}"}]}} for p in range(n_patients)]
    for i in range(5000 - n_patients):
        entries.append({"request": {"method": "PUT", "url": f"Observation/st-{uid}-{i}"},
                        "resource": {"resourceType": "Observation", "id": f"st-{uid}-{i}", "status": "final",
                                     "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                                     "subject": {"reference": f"Patient/st-{uid}-{i % n_patients}"},
                                     "effectiveDateTime": "2026-01-02T10:00:00Z",
                                     "valueQuantity": {"value": 60 + i % 40, "unit": "/min",
                                                       "system": "http://unitsofmeasure.org", "code": "/min"}}})
    body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    done = threading.Event()
    outcome: dict = {}

    def post() -> None:
        try:
            with server.client("admin") as c:
                r = c.post("/fhir", content=body, headers={"Content-Type": "application/fhir+json"}, timeout=600)
            outcome["status"] = r.status_code
        finally:
            done.set()

    latencies = []
    poster = threading.Thread(target=post)
    with httpx.Client(base_url=server.url, timeout=30) as probe:
        probe.get("/healthz")
        poster.start()
        while not done.is_set():
            t0 = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.05)
    poster.join()
    assert outcome.get("status") == 200, outcome
    assert len(latencies) >= 3, f"the transaction finished too quickly to observe ({len(latencies)} polls)"
    assert max(latencies) < 1.0, f"/healthz took {max(latencies):.2f}s while the transaction ran"
