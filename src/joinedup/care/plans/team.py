"""Care team and key worker: one named key worker per person, handed over explicitly and audited.

Also the shared helpers of the care package: who a professional is (as a FHIR reference), the directory
look-ups, and whether a professional has a route (a legitimate relationship) to a person.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

from joinedup.fhir import codes
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal

EXT = codes.EXTENSION
EXT_HANDOVER = EXT + "key-worker-handover"
KEY_WORKER_ROLE = "Key worker (care coordinator)"
PREVIOUS_ROLE = "Previous coordinator"
KEY_WORKER_RE = re.compile(r"key worker|care co-?ordinator|care navigator", re.IGNORECASE)
MAX_REASON = 500
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


# -- small shared helpers ------------------------------------------------------------------------------------
def now_iso() -> str:
    """The current instant, FHIR dateTime in UTC to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return uuid.uuid4().hex


def ref_id(value: str | None, rtype: str) -> str | None:
    """'Practitioner/x' or 'x' → 'x' (None when empty); a reference to another type is refused."""
    if not value:
        return None
    value = str(value).strip()
    if "/" in value:
        t, _, i = value.rpartition("/")
        if t.split("/")[-1] != rtype:
            raise FhirError(422, f"'{value}' is not a {rtype} reference", code="value")
        value = i
    if not _ID.match(value):
        raise FhirError(422, f"'{value[:70]}' is not a valid {rtype} id", code="value")
    return value


_NAMES: dict[str, str] = {}


def practitioner_name(gate: Gate, who: Principal) -> str:
    """The principal's own name from the directory (cached), else their account's display name."""
    pid = who.practitioner_id
    if not pid:
        return who.display or who.name
    if pid not in _NAMES:
        try:
            _NAMES[pid] = human_name(gate.read(who, "Practitioner", pid).content)
        except FhirError:
            return who.display or who.name
    return _NAMES[pid]


def who_ref(gate: Gate, who: Principal) -> dict[str, str] | None:
    """The principal as a FHIR reference (their practitioner, else their organisation)."""
    if who.practitioner_id:
        return {"reference": f"Practitioner/{who.practitioner_id}", "display": practitioner_name(gate, who)}
    if who.organization_id:
        return {"reference": f"Organization/{who.organization_id}", "display": who.display or who.name}
    return None


def who_text(gate: Gate, who: Principal) -> str:
    """'Name (account display)' for history lines."""
    name = practitioner_name(gate, who)
    account = who.display or who.name
    if name in account:  # the account's display already names them ("Dr X (GP)"): never "Dr X (Dr X (GP))"
        return account
    return f"{name} ({account})"


def require_person(*, gate: Gate, who: Principal, patient_id: str) -> dict[str, Any]:
    """The person's Patient resource, read through the gate (refuses without a relationship; 404 unknown)."""
    return gate.read(who, "Patient", patient_id).content


def directory_entry(*, gate: Gate, who: Principal, rtype: str, rid: str, what: str) -> dict[str, Any]:
    """A Practitioner or Organization from the directory, or a 422 naming what is unknown."""
    try:
        return gate.read(who, rtype, rid).content
    except FhirError as exc:
        if exc.status in (404, 410):
            raise FhirError(422, f"{what} {rtype}/{rid} is not in the directory: choose a known "
                                 f"{'practitioner' if rtype == 'Practitioner' else 'organisation'}",
                            code="value") from None
        raise


def professional(*, gate: Gate, who: Principal, practitioner: str | None, organization: str | None,
                 what: str = "The owner") -> dict[str, Any]:
    """Resolve and check a practitioner and their organisation: ids, names and that they work there."""
    pid = ref_id(practitioner, "Practitioner")
    oid = ref_id(organization, "Organization")
    if not pid:
        raise FhirError(422, f"{what} needs a named person (a practitioner)", code="required")
    if not oid:
        raise FhirError(422, f"{what} needs an organisation", code="required")
    prac = directory_entry(gate=gate, who=who, rtype="Practitioner", rid=pid, what=what)
    org = directory_entry(gate=gate, who=who, rtype="Organization", rid=oid, what=what)
    roles = gate.search(who, "PractitionerRole", [("practitioner", f"Practitioner/{pid}"), ("_count", "50")])
    orgs = {(r.content.get("organization") or {}).get("reference", "").split("/")[-1] for r in roles.matches}
    orgs.discard("")
    if orgs and oid not in orgs:
        raise FhirError(422, f"{human_name(prac)} does not work for {org.get('name') or oid} according to the "
                             "directory: choose the organisation they work for", code="business-rule")
    return {"practitioner_id": pid, "name": human_name(prac), "organization_id": oid,
            "organization": org.get("name") or oid}


def route_to_person(*, gate: Gate, patient_id: str, practitioner_id: str | None,
                    organization_id: str | None) -> str | None:
    """The kind of legitimate relationship the practitioner (or their organisation) has with the person."""
    probe = Principal(name=f"route-check:{practitioner_id or organization_id}", role="care-coordinator",
                      practitioner_id=practitioner_id, organization_id=organization_id)
    return gate.relationship_of(probe, patient_id)


def require_route(*, gate: Gate, patient_id: str, owner: dict[str, Any], doing: str) -> str:
    """Refuse (422) to give work about a person to someone with no route to them; the refusal says why."""
    kind = route_to_person(gate=gate, patient_id=patient_id, practitioner_id=owner["practitioner_id"],
                           organization_id=owner["organization_id"])
    if not kind:
        raise FhirError(422, f"Cannot {doing} {owner['name']} ({owner['organization']}): they have no route to "
                             "this person (not in their care team, not their registered or holding organisation, "
                             "no open referral or episode of care). Add them to the care team or send a referral "
                             "first.", code="business-rule")
    return kind


# -- care team and key worker --------------------------------------------------------------------------------
def _active(part: dict[str, Any], now: str) -> bool:
    end = (part.get("period") or {}).get("end")
    return not end or end > now


def _role(part: dict[str, Any]) -> str | None:
    for r in part.get("role") or []:
        text = r.get("text") or next((c.get("display") for c in r.get("coding") or []), None)
        if text:
            return text
    return None


def _member(part: dict[str, Any], now: str) -> dict[str, Any]:
    m, org = part.get("member") or {}, part.get("onBehalfOf") or {}
    ref = m.get("reference") or ""
    return {"practitioner_id": ref.split("/", 1)[1] if ref.startswith("Practitioner/") else None,
            "reference": ref or None, "name": m.get("display"), "role": _role(part),
            "organization_id": (org.get("reference") or "").split("/")[-1] or None,
            "organization": org.get("display"), "since": (part.get("period") or {}).get("start"),
            "until": (part.get("period") or {}).get("end"), "active": _active(part, now),
            "key_worker": bool(KEY_WORKER_RE.search(_role(part) or "")) and _active(part, now)}


def _teams(gate: Gate, who: Principal, patient_id: str):
    found = gate.search(who, "CareTeam", [("patient", f"Patient/{patient_id}"), ("_count", "50")])
    return [s for s in found.matches if s.content.get("status") in (None, "active", "proposed")]


def _names(gate: Gate, who: Principal, members: list[dict[str, Any]]) -> None:
    """Fill in missing practitioner and organisation names from the directory (one search each)."""
    want_p = sorted({m["practitioner_id"] for m in members if m["practitioner_id"] and not m["name"]})
    want_o = sorted({m["organization_id"] for m in members if m["organization_id"] and not m["organization"]})
    pn: dict[str, str] = {}
    on: dict[str, str] = {}
    if want_p:
        for s in gate.search(who, "Practitioner", [("_id", ",".join(want_p)), ("_count", "200")]).matches:
            pn[s.id] = human_name(s.content)
    if want_o:
        for s in gate.search(who, "Organization", [("_id", ",".join(want_o)), ("_count", "200")]).matches:
            on[s.id] = s.content.get("name") or s.id
    for m in members:
        if not m["name"]:
            m["name"] = pn.get(m["practitioner_id"] or "", m["reference"])
        if not m["organization"] and m["organization_id"]:
            m["organization"] = on.get(m["organization_id"], m["organization_id"])


def key_worker_of(teams: list[dict[str, Any]], now: str | None = None) -> dict[str, Any] | None:
    """The active key worker named in CareTeam resources (no look-ups; names as recorded)."""
    now = now or now_iso()
    for team in teams:
        if team.get("status") not in (None, "active", "proposed"):
            continue
        for part in team.get("participant") or []:
            if KEY_WORKER_RE.search(_role(part) or "") and _active(part, now):
                m = _member(part, now)
                m["care_team"] = team.get("id")
                return m
    return None


def key_worker(*, gate: Gate, who: Principal, patient_id: str) -> dict[str, Any] | None:
    """The person's named key worker {practitioner_id, name, organization_id, organization, role, since}."""
    now = now_iso()
    teams = _teams(gate, who, patient_id)
    kw = key_worker_of([t.content for t in teams], now)
    if kw is not None:
        _names(gate, who, [kw])
    return kw


def care_team(*, gate: Gate, who: Principal, patient_id: str) -> dict[str, Any]:
    """The care team across organisations, its key worker and the handover history."""
    now = now_iso()
    teams = _teams(gate, who, patient_id)
    members: list[dict[str, Any]] = []
    handovers: list[dict[str, Any]] = []
    for t in teams:
        for part in t.content.get("participant") or []:
            m = _member(part, now)
            m["care_team"] = t.id
            members.append(m)
        for ext in t.content.get("extension") or []:
            if ext.get("url") == EXT_HANDOVER:
                handovers.append(_handover_entry(ext))
    _names(gate, who, members)
    kw = next((m for m in members if m["key_worker"]), None)
    handovers.sort(key=lambda h: h.get("when") or "", reverse=True)
    main = teams[0] if teams else None
    if kw:
        main = next(t for t in teams if t.id == kw["care_team"])
    return {"patient": f"Patient/{patient_id}", "key_worker": kw,
            "members": [m for m in members if m["active"]], "former_members": [m for m in members if not m["active"]],
            "handovers": handovers, "care_team": main.id if main else None,
            "version": str(main.version) if main else None}


def _handover_entry(ext: dict[str, Any]) -> dict[str, Any]:
    parts = {e.get("url"): e for e in ext.get("extension") or []}

    def ref(name: str) -> dict[str, Any] | None:
        v = (parts.get(name) or {}).get("valueReference")
        return {"reference": v.get("reference"), "name": v.get("display")} if v else None

    return {"when": (parts.get("when") or {}).get("valueDateTime"), "from": ref("from"), "to": ref("to"),
            "to_organization": ref("toOrganization"), "reason": (parts.get("reason") or {}).get("valueString"),
            "by": (parts.get("by") or {}).get("valueString")}


def handover(*, gate: Gate, who: Principal, patient_id: str, to_practitioner: str | None,
             to_organization: str | None, reason: str | None) -> dict[str, Any]:
    """Hand the key worker role to another practitioner: explicit, with a reason, recorded and audited."""
    require_person(gate=gate, who=who, patient_id=patient_id)
    reason = (reason or "").strip()
    if not reason:
        raise FhirError(422, "Say why the key worker role is being handed over (reason is required)",
                        code="required", expression=["reason"])
    if len(reason) > MAX_REASON:
        raise FhirError(422, f"The reason is too long ({len(reason)} characters; at most {MAX_REASON})",
                        code="value", expression=["reason"])
    to = professional(gate=gate, who=who, practitioner=to_practitioner, organization=to_organization,
                      what="The new key worker")
    now = now_iso()
    teams = _teams(gate, who, patient_id)
    team = None
    current = None
    for t in teams:
        kw = key_worker_of([t.content], now)
        if kw:
            team, current = t, kw
            break
    if current and current["practitioner_id"] == to["practitioner_id"]:
        raise FhirError(409, f"{to['name']} is already this person's key worker", code="business-rule")
    if team is None and teams:
        team = teams[0]
    if team is None:
        resource: dict[str, Any] = {"resourceType": "CareTeam", "status": "active", "name": "Care team",
                                    "subject": {"reference": f"Patient/{patient_id}"}, "participant": []}
        if who.organization_id:
            resource["managingOrganization"] = [{"reference": f"Organization/{who.organization_id}"}]
        version = None
    else:
        import copy

        resource = copy.deepcopy(team.content)
        resource.pop("meta", None)
        resource["meta"] = {k: v for k, v in (team.content.get("meta") or {}).items()
                            if k in ("source", "security", "tag")} or None
        if resource["meta"] is None:
            resource.pop("meta")
        version = team.version
    parts = resource.setdefault("participant", [])
    for part in parts:
        if KEY_WORKER_RE.search(_role(part) or "") and _active(part, now):
            part["role"] = [{"text": PREVIOUS_ROLE}]
            part["period"] = {**(part.get("period") or {}), "end": now}
    parts.append({"role": [{"text": KEY_WORKER_ROLE}],
                  "member": {"reference": f"Practitioner/{to['practitioner_id']}", "display": to["name"]},
                  "onBehalfOf": {"reference": f"Organization/{to['organization_id']}", "display": to["organization"]},
                  "period": {"start": now}})
    entry = [{"url": "when", "valueDateTime": now},
             {"url": "to", "valueReference": {"reference": f"Practitioner/{to['practitioner_id']}",
                                              "display": to["name"]}},
             {"url": "toOrganization", "valueReference": {"reference": f"Organization/{to['organization_id']}",
                                                          "display": to["organization"]}},
             {"url": "reason", "valueString": reason},
             {"url": "by", "valueString": who_text(gate, who)}]
    if current:
        entry.insert(1, {"url": "from", "valueReference": {"reference": f"Practitioner/{current['practitioner_id']}",
                                                           "display": current["name"] or current["practitioner_id"]}})
    resource.setdefault("extension", []).append({"url": EXT_HANDOVER, "extension": entry})
    if version is None:
        written = gate.create(who, resource)
    else:
        written = gate.update(who, "CareTeam", team.id, resource, if_match=f'W/"{version}"')
    gate.record(who, "key-worker-handover", allowed=True, reason=reason, entity=f"CareTeam/{written.id}",
                patient_id=patient_id,
                detail={"from": f"Practitioner/{current['practitioner_id']}" if current else None,
                        "to": f"Practitioner/{to['practitioner_id']}",
                        "to_organization": f"Organization/{to['organization_id']}"})
    return care_team(gate=gate, who=who, patient_id=patient_id)
