"""A carer or proxy the person gives access to their record: what they may see (a scope) and until when.

The person records their carer as a RelatedPerson and the grant as a Consent (scope patient-privacy, a `permit`
provision whose actor - role `delegatee` - is that RelatedPerson, carrying the carer's JoinedUp account as the
reference's identifier; `provision.period.end` the expiry; `provision.class` the resource types it covers, none for
the whole record). The gate reads it (governance/facts.py `proxy_grant_of`) only when the person wrote it, and lets
the carer's account (role `carer`, linked to the person's record) read exactly that, read-only, until the end date;
revoking sets the Consent inactive, which ends the access at once. Nobody else may write or change a grant.
Every grant, use and revoke is audited, and the person sees them under "Who has looked at my record".
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.governance import accounts
from joinedup.governance.facts import proxy_grant_of
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.portal.service import _ID, CATEGORY, SCOPE, overview, person_of, threads

# What a person can share with a carer: (words, FHIR resource types; None = the whole record)
SCOPES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "appointments-plan": ("Appointments, next steps and my care plan only",
                          ("Appointment", "Encounter", "EpisodeOfCare", "ServiceRequest", "Task", "CarePlan", "Goal",
                           "CareTeam")),
    "whole": ("My whole record (except entries I keep private, and sealed entries)", None),
}
MAX_DAYS = 366
_ACCOUNT = re.compile(r"[a-z0-9][a-z0-9._-]{2,39}")
RELATIONSHIPS = ("Daughter", "Son", "Wife", "Husband", "Partner", "Mother", "Father", "Sister", "Brother", "Friend",
                 "Neighbour", "Paid carer", "Other")


def _today() -> date:
    return datetime.now(UTC).date()


def _until(value: str | None) -> str:
    try:
        day = date.fromisoformat((value or "").strip())
    except ValueError:
        raise FhirError(422, "Give the date the access ends (for example 2027-03-31).", code="required") from None
    if day < _today():
        raise FhirError(422, "The end date has already passed: choose a date from today.", code="value")
    if day > _today() + timedelta(days=MAX_DAYS):
        raise FhirError(422, "Access can be given for at most a year at a time; you can renew it.", code="value")
    return f"{day.isoformat()}T23:59:59Z"


def grant(*, gate: Gate, who: Principal, name: str | None, relationship: str | None, account: str | None,
          scope: str | None, until: str | None) -> dict[str, Any]:
    """Give a carer access: their RelatedPerson, their account (created with a one-time password when new; an
    account of that name must otherwise be this person's carer already) and the grant. Audited."""
    pid = person_of(gate, who, action="create", writes=True)
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise FhirError(422, "Give your carer's name (up to 100 characters).", code="required")
    if relationship not in RELATIONSHIPS:
        raise FhirError(422, "Choose how they are related to you.", code="value")
    account = (account or "").strip().lower()
    if not _ACCOUNT.fullmatch(account):
        raise FhirError(422, "Choose a user name for them: 3 to 40 lower-case letters, digits, dots or dashes.",
                        code="value")
    if scope not in SCOPES:
        raise FhirError(422, "Choose what they can see.", code="value")
    ends = _until(until)
    existing = accounts.get_user(gate, account)
    password = None
    if existing is not None and (existing.role != "carer" or existing.patient_id != pid):
        raise FhirError(409, f"The user name '{account}' is already taken: choose another.", code="conflict")
    if existing is None:
        password = secrets.token_urlsafe(9)
        try:
            accounts.add_user(gate, name=account, role="carer", display=f"{name} (carer)", patient=pid,
                              password=password)
        except accounts.IdentityError:
            raise FhirError(409, f"The user name '{account}' is already taken: choose another.",
                            code="conflict") from None
        gate.record(who, "user-admin", allowed=True, reason="carer account created by the person they care for",
                    entity=f"user:{account}", patient_id=pid)
    carer = gate.create(who, {"resourceType": "RelatedPerson", "active": True, "patient": {"reference": f"Patient/{pid}"},
                              "relationship": [{"text": relationship}], "name": [{"text": name}]})
    words, types = SCOPES[scope]
    provision: dict[str, Any] = {
        "type": "permit", "period": {"start": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "end": ends},
        "actor": [{"role": {"coding": [codes.PROXY_ROLE]},
                   "reference": {"reference": f"RelatedPerson/{carer.id}", "display": name,
                                 "identifier": {"system": codes.USER_ACCOUNT, "value": account}}}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}]}
    if types:
        provision["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": t} for t in types]
    consent = gate.create(who, {"resourceType": "Consent", "status": "active", "scope": SCOPE, "category": CATEGORY,
                                "patient": {"reference": f"Patient/{pid}"}, "dateTime": provision["period"]["start"],
                                "performer": [{"reference": f"Patient/{pid}"}], "provision": provision})
    gate.record(who, "carer-grant", allowed=True, reason=f"the person gave {name} ({relationship.lower()}) access: "
                f"{words.lower()}, until {ends[:10]}", entity=f"Consent/{consent.id}", patient_id=pid)
    return {"consent": consent.id, "account": account, "password": password, "name": name, "until": ends,
            "scope": words}


def grants(*, gate: Gate, who: Principal) -> list[dict[str, Any]]:
    """The person's carers: every grant they made, in force, ended or withdrawn, newest first."""
    pid = person_of(gate, who)
    found = gate.search(who, "Consent", [("patient", f"Patient/{pid}"), ("_count", "500")])
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    out = []
    for c in found.matches:
        g = proxy_grant_of({**c.content, "status": "active"}, pid)
        if g is None or c.source != f"Patient/{pid}":
            continue
        actor = next(iter((c.content.get("provision") or {}).get("actor") or ()), {})
        name = (actor.get("reference") or {}).get("display") or "Your carer"
        scope = next((words for words, types in SCOPES.values() if (frozenset(types) if types else None) == g.scope),
                     "Part of my record")
        active = c.content.get("status") == "active"
        state = "Withdrawn" if not active else ("Ended" if g.ends <= now else "In force")
        out.append({"id": c.id, "name": name, "account": g.account, "scope": scope, "until": g.ends,
                    "since": g.starts, "state": state, "live": active and g.ends > now})
    out.sort(key=lambda x: (not x["live"], x["since"]), reverse=False)
    return out


def revoke(*, gate: Gate, who: Principal, consent_id: str) -> str:
    """End a carer's access now (the grant becomes inactive). Audited."""
    pid = person_of(gate, who, action="update", writes=True)
    if not _ID.fullmatch(consent_id or ""):
        raise FhirError(404, "No such carer access.", code="not-found")
    current = gate.read(who, "Consent", consent_id)
    grant_ = proxy_grant_of(current.content, pid)
    if current.patient_id != pid or grant_ is None:
        if current.content.get("status") == "inactive":
            return consent_id
        raise FhirError(404, "No such carer access.", code="not-found")
    gate.update(who, "Consent", consent_id, {**current.content, "status": "inactive"})
    actor = next(iter((current.content.get("provision") or {}).get("actor") or ()), {})
    name = (actor.get("reference") or {}).get("display") or "your carer"
    gate.record(who, "carer-revoke", allowed=True, reason=f"the person withdrew {name}'s access",
                entity=f"Consent/{consent_id}", patient_id=pid)
    return consent_id


def carer_home(*, gate: Gate, who: Principal) -> dict[str, Any]:
    """What a carer sees first: whose record, what the person shared and until when (or that it has ended)."""
    pid = person_of(gate, who)
    try:
        person = gate.read(who, "Patient", pid).content
    except FhirError as exc:
        if exc.status != 403:
            raise
        return {"ended": True, "reason": exc.diagnostics}
    view = overview(gate=gate, who=who)
    access = gate.proxy_access_of(who)
    scope = next((words for words, types in SCOPES.values()
                  if (frozenset(types) if types else None) == (access[1] if access else None)), "Part of their record")
    try:
        messages = threads(gate=gate, who=who, patient_id=pid)
    except FhirError:
        messages = None
    return {"ended": False, "name": human_name(person), "until": access[0] if access else None, "scope": scope,
            "whole": bool(access and access[1] is None), "messages": messages, **view}
