"""Shared world builders for the issue-11 attack tests (reach by registration, deleted ids and history, a person's
choices, provenance on edit, existence oracles).

Everything here goes over real HTTP against the session `server` fixture (tests/conftest.py): the world is
written by the integration account, and each test makes its own users (retired afterwards) and its own data
(unique ids from the `uid` fixture), so the tests do not see each other's data.
"""

from __future__ import annotations

import json
import re
import secrets
import uuid
from typing import Any

import httpx
import pytest

NHS = "https://fhir.nhs.uk/Id/nhs-number"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DATA_SHARING = "https://joinedup.example/fhir/CodeSystem/data-sharing"
PRIVATE_CODE = "private"
OPT_OUT_CODE = "national-data-opt-out"
LAST_EDITED_BY = "https://joinedup.example/fhir/StructureDefinition/last-edited-by"
SCOPE_PRIVACY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                             "code": "patient-privacy"}]}
SCOPE_RESEARCH = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research"}]}
SCOPE_TREATMENT = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "treatment"}]}
CATEGORY = [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}]
ACTOR_ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]}
REASON_HEADER = "X-JoinedUp-Reason"


# -- identifiers ---------------------------------------------------------------------------------------------
def nhs_number() -> str:
    """A fresh valid NHS number (modulus 11), outside the 999 range the other test modules derive from seeds, so
    no record written elsewhere in the session shares it by accident (a shared number would link records)."""
    from joinedup.fhir.nhs_number import check_digit

    while True:
        nine = f"{900_000_000 + secrets.randbelow(89_999_999):09d}"
        check = check_digit(nine)
        if check is not None:
            return nine + str(check)


def missing_id() -> str:
    """An id no resource has (a random UUID)."""
    return str(uuid.uuid4())


# -- users ---------------------------------------------------------------------------------------------------
class People:
    """Users made for one test (unique names), with clients; retired when the test ends."""

    def __init__(self, server, uid: str) -> None:
        self.server = server
        self.uid = uid
        self.names: dict[str, str] = {}

    def add(self, key: str, role: str, *, org: str | None = None, practitioner: str | None = None,
            patient: str | None = None) -> str:
        from joinedup.governance.accounts import add_user, issue_token

        name = f"sec-{key}-{self.uid}"
        if practitioner is None and org is not None:
            practitioner = f"pr-{key}-{self.uid}"
        add_user(self.server.gate, name=name, role=role, practitioner=practitioner, organization=org,
                 patient=patient, replace=True)
        self.server.tokens[name] = issue_token(self.server.gate, name)
        self.names[key] = name
        return name

    def client(self, key: str) -> httpx.Client:
        return self.server.client(self.names[key])

    def retire(self) -> None:
        from joinedup.store import schema

        if not self.names:
            return
        u = schema.app_user
        with self.server.gate.store_for_tests.writing() as conn:
            conn.execute(u.update().where(u.c.name.in_(list(self.names.values()))).values(active=False))


@pytest.fixture()
def people(server, uid):
    p = People(server, uid)
    yield p
    p.retire()


# -- resources -----------------------------------------------------------------------------------------------
def put(api: httpx.Client, resource: dict, ok=(200, 201)) -> dict:
    """PUT a resource at its own id and insist it was stored."""
    r = api.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert r.status_code in ok, f"PUT {resource['resourceType']}/{resource['id']}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else {}


def organization(oid: str, name: str | None = None) -> dict:
    return {"resourceType": "Organization", "id": oid, "name": name or f"Organisation {oid}"}


def patient(pid: str, *, source: str | None = None, gp_org: str | None = None, nhs: str | None = None,
            family: str = "Testperson", link_to: str | None = None) -> dict:
    """A Patient record: held by `source` (meta.source), registered at `gp_org`, with an NHS number if given."""
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": ["Alex"]}],
                           "gender": "unknown", "birthDate": "1950-02-03"}
    if source:
        res["meta"] = {"source": f"Organization/{source}"}
    if nhs:
        res["identifier"] = [{"system": NHS, "value": nhs}]
    if gp_org:
        res["generalPractitioner"] = [{"reference": f"Organization/{gp_org}"}]
    if link_to:
        res["link"] = [{"other": {"reference": f"Patient/{link_to}"}, "type": "seealso"}]
    return res


def observation(oid: str, pid: str, *, source: str | None = None, value: float = 120, security: list | None = None,
                tag: list | None = None) -> dict:
    meta: dict[str, Any] = {}
    if source:
        meta["source"] = f"Organization/{source}"
    if security:
        meta["security"] = security
    if tag:
        meta["tag"] = tag
    res: dict[str, Any] = {"resourceType": "Observation", "id": oid, "status": "final",
                           "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6",
                                                "display": "Systolic blood pressure"}]},
                           "subject": {"reference": f"Patient/{pid}"},
                           "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                                             "code": "mm[Hg]"}}
    if meta:
        res["meta"] = meta
    return res


def sealed(code: str = "R") -> list[dict]:
    return [{"system": CONF, "code": code}]


def private_tag() -> list[dict]:
    return [{"system": DATA_SHARING, "code": PRIVATE_CODE}]


def referral(srid: str, pid: str, performer_org: str) -> dict:
    """An open referral to an organisation: a legitimate relationship for it."""
    return {"resourceType": "ServiceRequest", "id": srid, "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": f"Organization/{performer_org}"}]}


def objection(cid: str, pid: str, *, org: str | None = None) -> dict:
    """An active objection to sharing: with everyone (no actor) or with one organisation."""
    prov: dict[str, Any] = {"type": "deny"}
    if org:
        prov["actor"] = [{"role": ACTOR_ROLE, "reference": {"reference": f"Organization/{org}"}}]
    return {"resourceType": "Consent", "id": cid, "status": "active", "scope": SCOPE_PRIVACY, "category": CATEGORY,
            "patient": {"reference": f"Patient/{pid}"}, "policyRule": {"text": "objects to sharing"},
            "provision": prov}


def private_entries(cid: str, pid: str, refs: list[str]) -> dict:
    """A private-entry choice: a deny provision naming entries."""
    return {"resourceType": "Consent", "id": cid, "status": "active", "scope": SCOPE_PRIVACY, "category": CATEGORY,
            "patient": {"reference": f"Patient/{pid}"},
            "provision": {"type": "permit", "provision": [
                {"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": r}} for r in refs]}]}}


def opt_out(cid: str, pid: str) -> dict:
    """A National Data Opt-out."""
    return {"resourceType": "Consent", "id": cid, "status": "active", "scope": SCOPE_RESEARCH, "category": CATEGORY,
            "patient": {"reference": f"Patient/{pid}"},
            "policyRule": {"coding": [{"system": DATA_SHARING, "code": OPT_OUT_CODE}]},
            "provision": {"type": "deny"}}


# -- reading responses ---------------------------------------------------------------------------------------
def diagnostics(r: httpx.Response) -> str:
    """The OperationOutcome's diagnostics (all issues joined), insisting the body is an OperationOutcome."""
    body = r.json()
    assert body.get("resourceType") == "OperationOutcome", f"{r.status_code}: {r.text[:500]}"
    return " ".join(str(i.get("diagnostics") or "") for i in body.get("issue") or [])


def entry_ids(bundle: dict, rtype: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry") or []
            if "resource" in e and (rtype is None or e["resource"].get("resourceType") == rtype)}


def subjects_in(bundle: dict) -> set[str]:
    """Every Patient reference a search result's entries are about (subject / patient, or the Patient itself)."""
    out = set()
    for e in bundle.get("entry") or []:
        res = e.get("resource") or {}
        if res.get("resourceType") == "Patient":
            out.add(f"Patient/{res.get('id')}")
        for key in ("subject", "patient"):
            ref = (res.get(key) or {}).get("reference") if isinstance(res.get(key), dict) else None
            if ref:
                out.add(ref)
    return out


def mentions(doc: Any, *words: str) -> bool:
    text = json.dumps(doc)
    return all(w in text for w in words)


ISO_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


def audit_events(server, api: httpx.Client, patient_id: str) -> list[dict]:
    """The AuditEvents about one person, as the integration account sees them (the buffer flushed first)."""
    server.gate.flush_audit()
    r = api.get("/fhir/AuditEvent", params={"patient": patient_id, "_count": "1000"})
    assert r.status_code == 200, r.text[:500]
    return [e["resource"] for e in r.json().get("entry") or [] if "resource" in e]


def agent_name(ev: dict) -> str | None:
    return ((ev.get("agent") or [{}])[0].get("who") or {}).get("display")


def subtype(ev: dict) -> str:
    return " ".join(str(s.get("code")) for s in ev.get("subtype") or [])
