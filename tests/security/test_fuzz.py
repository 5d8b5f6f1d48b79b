"""A bounded API fuzz run: every operation in the app's own /openapi.json, with valid bearer tokens, never gets a
5xx. FHIR and governance operations must also answer only the status codes and content types the OpenAPI
document states for them.

Schemathesis (its Hypothesis strategies, driven here) generates the requests: schema-valid ones for an
integration account (role system) and a GP, schema-invalid ones for the integration account. Generation is
derandomized, so every run sends the same requests. The fuzz users are made for the run (their own alert settings,
inbox and notification choices) and retired afterwards; log-in, log-out and escalation are left out because their
effects are not the run's own (a sign-in throttle per address, a revoked token, every overdue task escalated).
Budget: at most EXAMPLES requests per operation and mode, about one to two minutes in all on two cores. The run on
the second backend sends the cases the first run generated (the same ones, as generation is derandomized).
"""

from __future__ import annotations

import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402 - after importorskip
from hypothesis import strategies as st  # noqa: E402 - after importorskip
from schemathesis import GenerationMode  # noqa: E402 - after importorskip
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance  # noqa: E402 - after importorskip

EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}
FEW = 2  # operations that start heavy background work (bulk export jobs)
LEFT_OUT = {("POST", "/auth/token"), ("POST", "/auth/logout"), ("POST", "/api/care/escalate")}
HEAVY = {"/fhir/$export", "/fhir/Patient/$export"}
TYPES = ["Patient", "Observation", "Subscription", "AuditEvent"]  # besides random ones, for /fhir/{rtype}...
DOCUMENTED = ("/fhir", "/api/break-glass", "/api/privacy/reviews", "/api/me/access-log")
BUDGET_S = 150  # a safety net on a slow machine: the run normally ends well before


def _strategy(op, mode: GenerationMode):
    base = op.as_strategy(generation_mode=mode)
    if "{rtype}" not in op.path:
        return base
    return st.one_of(base, *[op.as_strategy(generation_mode=mode, path_parameters={"rtype": t}) for t in TYPES])


def _check(server, session, op, mode: GenerationMode, found: list[str], counter: list[int], deadline: float):
    """The Hypothesis test body for one operation: send the case, record any 5xx or undocumented answer."""
    documented = op.path.startswith(DOCUMENTED) and mode is GenerationMode.POSITIVE
    name = f"{op.method.upper()} {op.path}"

    def check(case) -> None:
        if time.monotonic() > deadline:
            return
        counter[0] += 1
        try:
            response = case.call(base_url=server.url, session=session, timeout=60)
        except Exception as exc:  # noqa: BLE001 - a dropped connection is as bad as a 500
            found.append(f"{name}: no response ({type(exc).__name__}: {exc})")
            return
        if response.status_code >= 500:
            found.append(f"{name} -> {response.status_code}: {response.text[:300]} | {case.as_curl_command()}")
        elif documented:
            try:
                case.validate_response(response, checks=[status_code_conformance, content_type_conformance])
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis raises a FailureGroup
                found.append(f"{name} -> {response.status_code}: not as documented: {str(exc)[:300]}")

    return check


def _keeping(cases: list, check):
    def send(case) -> None:
        cases.append(case)
        check(case)

    return send


# The cases generated for each (user, mode, operation), kept for the run on the other backend: generation is
# derandomized, so that run would generate exactly these again, and generating costs more than sending.
_GENERATED: dict[tuple[str, str, str], list] = {}


def _fuzz(server, schema, token: str, user: str, mode: GenerationMode, found: list[str], deadline: float) -> int:
    import requests
    from hypothesis.errors import Unsatisfiable

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    counter = [0]
    for result in schema.get_all_operations():
        if time.monotonic() > deadline:  # past the budget nothing is sent: generating cases for nothing only costs time
            break
        op = result.ok()
        if (op.method.upper(), op.path) in LEFT_OUT:
            continue
        check = _check(server, session, op, mode, found, counter, deadline)
        key = (user, mode.name, f"{op.method.upper()} {op.path}")
        if key in _GENERATED:
            for case in _GENERATED[key]:
                check(case)
            continue
        cases: list = []
        n = FEW if op.path in HEAVY else EXAMPLES[mode]
        run = settings(max_examples=n, derandomize=True, deadline=None, database=None, phases=[Phase.generate],
                       suppress_health_check=list(HealthCheck))(given(case=_strategy(op, mode))(_keeping(cases, check)))
        try:
            run()
        except Unsatisfiable:  # nothing schema-invalid to send (e.g. no parameters): nothing to do
            pass
        if time.monotonic() <= deadline:  # every case of the operation was sent: the other backend may replay them
            _GENERATED[key] = cases
    return counter[0]


@pytest.fixture()
def fuzz_tokens(server, uid):
    """Tokens of two users made for the run: an integration account and a GP (retired afterwards)."""
    import sqlalchemy as sa

    from joinedup.governance.identity import add_user, issue_token
    from joinedup.store import schema as tables

    store = server.gate.store_for_tests
    names = {"system": f"fuzz-sys-{uid}", "gp": f"fuzz-gp-{uid}"}
    add_user(store, name=names["system"], role="system", replace=True)
    add_user(store, name=names["gp"], role="gp", practitioner="gp-1", organization="practice-1", replace=True)
    yield {role: issue_token(store, name) for role, name in names.items()}
    with store.writing() as conn:
        conn.execute(sa.update(tables.app_user).where(tables.app_user.c.name.in_(list(names.values())))
                     .values(active=False))


def test_fuzzing_every_operation_finds_no_server_error(server, fuzz_tokens):
    """Hundreds of generated requests across every operation: no 5xx, no dropped connection; FHIR and governance
    operations answer as their OpenAPI document says."""
    import httpx

    doc = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(doc)
    sys_token, gp_token = fuzz_tokens["system"], fuzz_tokens["gp"]
    found: list[str] = []
    started = time.monotonic()
    deadline = started + BUDGET_S
    sent = _fuzz(server, schema, sys_token, "system", GenerationMode.POSITIVE, found, deadline)
    sent += _fuzz(server, schema, gp_token, "gp", GenerationMode.POSITIVE, found, deadline)
    sent += _fuzz(server, schema, sys_token, "system", GenerationMode.NEGATIVE, found, deadline)
    took = time.monotonic() - started
    print(f"fuzz: {sent} requests over {len(doc['paths'])} paths in {took:.0f}s; {len(found)} problem(s)")
    assert sent > 500, f"the fuzz run sent only {sent} requests in {took:.0f}s"
    assert not found, "\n".join(dict.fromkeys(found))
