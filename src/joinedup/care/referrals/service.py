"""Referrals and advice and guidance: ServiceRequests with a Communication thread, through the one gate.

A referral or an advice request is a FHIR ServiceRequest (category `referral` or `advice`, system
REQUEST_CATEGORY) whose `performer` names the recipient practitioner *and* their organisation, and whose
`requester` names the practitioner who asked. While it is `active` the governance facts (see
`joinedup.governance.facts.relationships_of`) give both the recipient practitioner and the recipient organisation a
legitimate "open referral or advice request" relationship with the person, so the specialist can read the record
they are asked about; the relationship ends when the conversation is closed.

Every message is a Communication (`basedOn` the ServiceRequest, `inResponseTo` the previous message, `sent`,
`sender`, `recipient`, category CONVERSATION_SYSTEM: question / reply / ask-more / answer / note). The
ServiceRequest carries the conversation's state in JoinedUp extensions (state, first response, last activity,
closed, outcome, requester organisation) so that inboxes need one search, and every change to it is written with
If-Match (optimistic locking): a reply that races a close is refused, never lost silently.

Response times (for the advice-and-guidance measure) are derived from `authoredOn`, the first reply's `sent` and
the closing time; `advice_response_times` gives their median and 90th percentile.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from joinedup.fhir import codes, words
from joinedup.fhir.errors import FhirError
from joinedup.fhir.search_params import split_reference
from joinedup.governance.facts import choices_of
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.system import service as directory

REQUEST_CATEGORY = codes.REQUEST_CATEGORY
CONVERSATION_SYSTEM = codes.CONVERSATION_MESSAGE
EXT = codes.EXTENSION
EXT_STATE = EXT + "conversation-state"
EXT_FIRST = EXT + "first-response"
EXT_LAST = EXT + "last-activity"
EXT_CLOSED = EXT + "closed"
EXT_OUTCOME = EXT + "request-outcome"
EXT_REQ_ORG = EXT + "requester-organization"
SNOMED = codes.SNOMED

KINDS = {
    "advice": {"display": "Advice and guidance", "snomed": None},
    "referral": {"display": "Referral", "snomed": ("3457005", "Patient referral")},
}
MESSAGE_TEXT = {
    "question": "Conversation: question",
    "reply": "Conversation: reply",
    "ask-more": "Conversation: more information asked",
    "answer": "Conversation: further information",
    "note": "Conversation: note",
}
STATE_TEXT = dict(words.vocabulary()["conversation"])  # the platform's one status vocabulary (fhir/words.py)
OPEN_STATES = {"awaiting-reply", "replied", "more-information-requested"}
# what each action does to an open conversation: {(state, action): new state}; a pair not here is refused
TRANSITIONS: dict[tuple[str, str], str] = {
    (state, action): new
    for state in OPEN_STATES
    for action, new in (("reply", "replied"), ("ask-more", "more-information-requested"),
                        ("answer", "awaiting-reply"), ("close", "closed"), ("convert", "converted"))
}
# how each action is named when it is refused
ACTION_LABELS = {"reply": "reply", "ask-more": "request for more information", "answer": "further information",
                 "close": "closing note", "convert": "conversion into a referral"}
MAX_TEXT = 10_000
PRIORITIES = ("routine", "urgent", "asap", "stat")


# -- schemas ---------------------------------------------------------------------------------------------------
class NewRequest(BaseModel):
    """A new referral or advice request."""

    patient_id: str = Field(..., description="the person it is about (Patient id)")
    to: str = Field(..., description="recipient: Practitioner/{id}, PractitionerRole/{id} or Organization/{id}")
    text: str = Field(..., description="the question or the reason for referral")
    reason: str | None = Field(None, description="short reason, e.g. the condition")
    priority: str = "routine"


class Message(BaseModel):
    """A message in a conversation."""

    text: str


class Closing(BaseModel):
    """Closing a conversation (an optional closing note)."""

    text: str | None = None


class Converting(BaseModel):
    """Converting advice into a referral (optional reason; defaults to the advice question)."""

    text: str | None = None
    priority: str | None = None


# -- helpers ---------------------------------------------------------------------------------------------------
def now_iso() -> str:
    """The current time as a FHIR instant (milliseconds, UTC): messages in one second keep their order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ext(resource: dict, url: str) -> Any:
    for e in resource.get("extension") or ():
        if e.get("url") == url:
            for k, v in e.items():
                if k.startswith("value"):
                    return v
    return None


def _set_ext(resource: dict, url: str, key: str, value: Any) -> None:
    exts = [e for e in resource.get("extension") or () if e.get("url") != url]
    if value is not None:
        exts.append({"url": url, key: value})
    resource["extension"] = exts


def _ref_id(node: Any, rtype: str) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("reference"), str):
        t, i = split_reference(node["reference"])
        if t == rtype:
            return i
    return None


def person_name(res: dict | None) -> str:
    """'Dr Jack Murray' from a Practitioner or Patient resource."""
    if not res:
        return ""
    names = res.get("name") or []
    n = next((x for x in names if x.get("use") in (None, "official", "usual")), names[0] if names else None)
    if not n:
        return res.get("id", "")
    if n.get("text"):
        return n["text"]
    return " ".join([*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]).strip()


def kind_of(sr: dict) -> str | None:
    """'advice', 'referral' (or another JoinedUp category such as 'mdt-review') of a ServiceRequest."""
    for cat in sr.get("category") or ():
        for c in cat.get("coding") or ():
            if c.get("system") == REQUEST_CATEGORY:
                return c.get("code")
    return None


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    v = value.replace("Z", "+00:00")
    if len(v) == 10:
        v += "T00:00:00+00:00"
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def hours_between(start: str | None, end: str | None) -> float | None:
    """Hours from one FHIR dateTime to another (None when either is missing)."""
    a, b = _parse_time(start), _parse_time(end)
    if a is None or b is None:
        return None
    return max(0.0, (b - a).total_seconds() / 3600)


def _check_text(text: str | None, what: str = "text", *, required: bool = True) -> str | None:
    t = (text or "").strip()
    if not t:
        if required:
            raise FhirError(422, f"The {what} is empty: write the message before sending it", code="required",
                            expression=[what])
        return None
    if len(t) > MAX_TEXT:
        raise FhirError(422, f"The {what} is {len(t):,} characters long; the limit is {MAX_TEXT:,}", code="too-long",
                        expression=[what])
    return t


# -- the directory: who can receive a referral -----------------------------------------------------------------
def recipients(*, gate: Gate, who: Principal, need: str | None = None) -> list[dict[str, Any]]:
    """Practitioners (with their organisation, specialty and the directory services they work in) who can receive
    referrals and advice requests; with `need`, those whose organisation offers a service that meets it come first
    (`offers`: the services directory, joinedup.system.service)."""
    found = gate.search(who, "PractitionerRole", [("active", "true"), ("_include", "PractitionerRole:practitioner"),
                                                  ("_include", "PractitionerRole:organization"),
                                                  ("_include", "PractitionerRole:service"), ("_count", "1000")])
    inc = {f"{s.rtype}/{s.id}": s.content for s in found.included}
    offering: dict[str, list[str]] = {}
    if need and need.strip():
        try:
            offering = directory.organisations_meeting(gate=gate, who=who, need=need)
        except FhirError as exc:  # a reason that is not a searchable need: no ordering by need
            if exc.status != 400:
                raise
            need = None
    out = []
    for s in found.matches:
        r = s.content
        prac = inc.get((r.get("practitioner") or {}).get("reference", ""))
        org = inc.get((r.get("organization") or {}).get("reference", ""))
        if not prac or not org or prac.get("active") is False:
            continue
        if who.practitioner_id and prac.get("id") == who.practitioner_id:
            continue
        out.append({"role_id": s.id, "practitioner_id": prac["id"], "name": person_name(prac),
                    "role": ", ".join(c.get("text") or "" for c in r.get("code") or []) or None,
                    "specialty": ", ".join(c.get("text") or "" for c in r.get("specialty") or []) or None,
                    "organization_id": org["id"], "organization": org.get("name") or org["id"],
                    "services": [inc[h["reference"]].get("name") for h in r.get("healthcareService") or ()
                                 if inc.get(h.get("reference") or "", {}).get("name")],
                    **({"offers": offering.get(org["id"], [])} if need else {})})
    out.sort(key=lambda x: (not x.get("offers"), x["organization"], x["specialty"] or "", x["name"]))
    return out


def resolve_recipient(*, gate: Gate, who: Principal, to: str) -> dict[str, Any]:
    """Practitioner and organisation for 'Practitioner/x', 'PractitionerRole/x' or 'Organization/x' (404/422)."""
    t, i = split_reference((to or "").strip())
    if not t or not i or t not in ("Practitioner", "PractitionerRole", "Organization"):
        raise FhirError(422, f"'{to}' is not a recipient: give Practitioner/ID, PractitionerRole/ID or "
                             "Organization/ID", code="value", expression=["to"])
    prac = org = None
    if t == "Organization":
        org = gate.read(who, "Organization", i).content
        if org.get("active") is False:
            raise FhirError(422, f"{org.get('name') or to} is no longer active and cannot receive referrals",
                            code="business-rule", expression=["to"])
        return {"practitioner": None, "organization": org}
    if t == "PractitionerRole":
        role = gate.read(who, "PractitionerRole", i).content
        prac_id = _ref_id(role.get("practitioner"), "Practitioner")
        org_id = _ref_id(role.get("organization"), "Organization")
        if role.get("active") is False or not prac_id or not org_id:
            raise FhirError(422, f"{to} is not an active role of a practitioner at an organisation", code="business-rule",
                            expression=["to"])
        prac = gate.read(who, "Practitioner", prac_id).content
        org = gate.read(who, "Organization", org_id).content
    else:
        prac = gate.read(who, "Practitioner", i).content
        roles = gate.search(who, "PractitionerRole", [("practitioner", f"Practitioner/{i}"), ("_count", "20")])
        org_ids = [_ref_id(r.content.get("organization"), "Organization") for r in roles.matches
                   if r.content.get("active") is not False]
        org_ids = [o for o in org_ids if o]
        if not org_ids:
            raise FhirError(422, f"{person_name(prac) or to} has no current role at any organisation, so there is no "
                                 "route by which they could receive this and see the person's record",
                            code="business-rule", expression=["to"])
        org = gate.read(who, "Organization", org_ids[0]).content
    if prac.get("active") is False:
        raise FhirError(422, f"{person_name(prac)} is no longer active and cannot receive referrals",
                        code="business-rule", expression=["to"])
    return {"practitioner": prac, "organization": org}


def check_route(*, gate: Gate, who: Principal, patient_id: str, organization_id: str | None,
                what: str = "this referral") -> None:
    """Refuse (422) when the person has objected to sharing their record with the recipient's organisation."""
    if not organization_id:
        return
    try:
        consents = gate.search(who, "Consent", [("patient", f"Patient/{patient_id}"), ("status", "active"),
                                                ("_count", "200")])
    except FhirError as exc:
        if exc.status == 403:
            return  # the caller cannot read the person's choices; the gate still honours them on every read
        raise
    for s in consents.matches:
        choices, _ = choices_of(s.content)
        for kind, org in choices:
            if kind == "all" and organization_id != who.organization_id:
                raise FhirError(422, f"There is no route for {what}: the person has objected to sharing their record "
                                     "outside the organisations that recorded it, so the recipient could not see it. "
                                     "Talk to the person first.", code="business-rule", expression=["to"])
            if kind == "organization" and org == organization_id:
                raise FhirError(422, f"There is no route for {what}: the person has objected to sharing their record "
                                     "with the recipient's organisation. Choose another recipient or talk to the "
                                     "person.", code="business-rule", expression=["to"])


def _me(gate: Gate, who: Principal) -> dict[str, Any]:
    """The principal as a reference with a display name (their Practitioner record when there is one)."""
    if not who.practitioner_id:
        raise gate.refuse(who, "Only a professional linked to a practitioner record can send or answer referrals and "
                               "advice requests", action="create", entity="ServiceRequest")
    try:
        prac = gate.read(who, "Practitioner", who.practitioner_id).content
        name = person_name(prac)
    except FhirError:
        name = who.display or who.name
    return {"reference": f"Practitioner/{who.practitioner_id}", "display": name or who.name}


def _org_ref(gate: Gate, who: Principal, org_id: str | None) -> dict[str, Any] | None:
    if not org_id:
        return None
    try:
        name = gate.read(who, "Organization", org_id).content.get("name")
    except FhirError:
        name = None
    return {"reference": f"Organization/{org_id}", **({"display": name} if name else {})}


# -- create ------------------------------------------------------------------------------------------------------
def create_request(*, gate: Gate, who: Principal, kind: str, patient_id: str, to: str, text: str,
                   reason: str | None = None, priority: str = "routine", replaces: str | None = None,
                   based_on: str | None = None, at: str | None = None) -> dict[str, Any]:
    """Send a referral or an advice request (ServiceRequest + the first message), atomically; returns the view."""
    if kind not in KINDS:
        raise FhirError(422, f"Unknown kind '{kind}': use advice or referral", code="value", expression=["kind"])
    text = _check_text(text)
    reason = _check_text(reason, "reason", required=False)
    if priority not in PRIORITIES:
        raise FhirError(422, f"Unknown priority '{priority}': use one of {', '.join(PRIORITIES)}", code="value",
                        expression=["priority"])
    me = _me(gate, who)
    patient = gate.read(who, "Patient", patient_id).content
    if (to or "").strip() == f"Practitioner/{who.practitioner_id}":
        raise FhirError(422, "You cannot send a referral or advice request to yourself", code="business-rule",
                        expression=["to"])
    rcpt = resolve_recipient(gate=gate, who=who, to=to)
    prac, org = rcpt["practitioner"], rcpt["organization"]
    if prac and prac.get("id") == who.practitioner_id:
        raise FhirError(422, "You cannot send a referral or advice request to yourself", code="business-rule",
                        expression=["to"])
    check_route(gate=gate, who=who, patient_id=patient_id, organization_id=org.get("id"),
                what="this advice request" if kind == "advice" else "this referral")
    at = at or now_iso()
    performer = _performer(prac, org)
    specialty = _specialty(gate, who, prac, org)
    title = (f"Advice: {specialty}" if kind == "advice" else f"Referral to {specialty}")
    sr_url, msg_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    sr = _build_request(kind=kind, priority=priority, title=title,
                        subject={"reference": f"Patient/{patient_id}", "display": person_name(patient)},
                        requester=me, performer=performer, text=text, author=me, at=at,
                        reason_code=[{"text": reason}] if reason else None, replaces=replaces, based_on=based_on,
                        requester_org=_org_ref(gate, who, who.organization_id))
    msg = _message(kind="question", text=text, sr_ref=sr_url, patient_id=patient_id, sender=me,
                   recipient=performer[0], previous=None, at=at)
    entries = [{"fullUrl": sr_url, "resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}},
               {"fullUrl": msg_url, "resource": msg, "request": {"method": "POST", "url": "Communication"}}]
    result = gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    sr_id = result["entry"][0]["response"]["location"].split("/")[1]
    return get_request(gate=gate, who=who, request_id=sr_id)


def _performer(prac: dict | None, org: dict) -> list[dict[str, Any]]:
    """The recipient practitioner (when there is one) and their organisation, as ServiceRequest.performer."""
    performer = []
    if prac:
        performer.append({"reference": f"Practitioner/{prac['id']}", "display": person_name(prac)})
    performer.append({"reference": f"Organization/{org['id']}", "display": org.get("name") or org["id"]})
    return performer


def _build_request(*, kind: str, priority: str, title: str, subject: Any, requester: Any, performer: list[dict],
                   text: str, author: dict, at: str, reason_code: list | None = None, replaces: str | None = None,
                   based_on: str | None = None, requester_org: Any = None) -> dict[str, Any]:
    """A new, open ServiceRequest (awaiting reply): the one builder behind `create_request` and `convert`."""
    spec = KINDS[kind]
    coding = [{"system": REQUEST_CATEGORY, "code": kind, "display": spec["display"]}]
    if spec["snomed"]:
        coding.append({"system": SNOMED, "code": spec["snomed"][0], "display": spec["snomed"][1]})
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order" if kind == "referral" else "proposal",
        "category": [{"coding": coding, "text": spec["display"]}], "priority": priority,
        "code": {"text": title}, "subject": subject,
        "authoredOn": at, "requester": requester, "performer": performer,
        "note": [{"text": text, "authorReference": author, "time": at}],
    }
    if reason_code:
        sr["reasonCode"] = reason_code
    if replaces:
        sr["replaces"] = [{"reference": replaces}]
    if based_on:
        sr["basedOn"] = [{"reference": based_on}]
    if requester_org:
        _set_ext(sr, EXT_REQ_ORG, "valueReference", requester_org)
    _set_ext(sr, EXT_STATE, "valueCode", "awaiting-reply")
    _set_ext(sr, EXT_LAST, "valueDateTime", at)
    return sr


def _specialty(gate: Gate, who: Principal, prac: dict | None, org: dict) -> str:
    if prac:
        roles = gate.search(who, "PractitionerRole", [("practitioner", f"Practitioner/{prac['id']}"), ("_count", "20")])
        for r in roles.matches:
            for s in r.content.get("specialty") or ():
                if s.get("text"):
                    return f"{s['text']} ({person_name(prac)})"
        return person_name(prac)
    return org.get("name") or org["id"]


def _message(*, kind: str, text: str, sr_ref: str, patient_id: str, sender: dict, recipient: dict | None,
             previous: str | None, at: str) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [{"system": CONVERSATION_SYSTEM, "code": kind}], "text": MESSAGE_TEXT[kind]}],
        "basedOn": [{"reference": sr_ref}], "subject": {"reference": f"Patient/{patient_id}"},
        "sent": at, "sender": sender, "payload": [{"contentString": text}],
    }
    if recipient:
        msg["recipient"] = [recipient]
    if previous:
        msg["inResponseTo"] = [{"reference": previous}]
    return msg


# -- read ----------------------------------------------------------------------------------------------------------
def _side(who: Principal, sr: dict) -> str | None:
    """'requester', 'recipient' or None: which side of the conversation the principal is on."""
    if who.practitioner_id and _ref_id(sr.get("requester"), "Practitioner") == who.practitioner_id:
        return "requester"
    perf = sr.get("performer") or []
    if who.practitioner_id and any(_ref_id(p, "Practitioner") == who.practitioner_id for p in perf):
        return "recipient"
    if who.organization_id and any(_ref_id(p, "Organization") == who.organization_id for p in perf):
        return "recipient"
    if who.organization_id and _ref_id(_ext(sr, EXT_REQ_ORG), "Organization") == who.organization_id:
        return "requester"
    return None


def state_of(sr: dict) -> str:
    """The conversation state of a ServiceRequest (from its extension and FHIR status; fhir/words.py)."""
    return words.request_state(sr) or "awaiting-reply"


def summary_of(sr: dict, who: Principal, patient_name: str | None = None) -> dict[str, Any]:
    """One line of an inbox or outbox."""
    state = state_of(sr)
    req_org = _ext(sr, EXT_REQ_ORG) or {}
    perf = sr.get("performer") or []
    first = _ext(sr, EXT_FIRST)
    closed = _ext(sr, EXT_CLOSED)
    waiting_on = None
    if state in ("awaiting-reply",):
        waiting_on = "recipient"
    elif state in ("replied", "more-information-requested"):
        waiting_on = "requester"
    return {
        "id": sr.get("id"), "kind": kind_of(sr), "title": (sr.get("code") or {}).get("text"),
        "patient_id": _ref_id(sr.get("subject"), "Patient"),
        "patient": patient_name or (sr.get("subject") or {}).get("display"),
        "status": sr.get("status"), "state": state, "state_text": STATE_TEXT.get(state, state),
        "open": state in OPEN_STATES, "waiting_on": waiting_on, "priority": sr.get("priority"),
        "requester": (sr.get("requester") or {}).get("display"),
        "requester_id": _ref_id(sr.get("requester"), "Practitioner"),
        "requester_organization": req_org.get("display"),
        "recipient": next((p.get("display") for p in perf if _ref_id(p, "Practitioner")), None),
        "recipient_id": next((_ref_id(p, "Practitioner") for p in perf if _ref_id(p, "Practitioner")), None),
        "recipient_organization": next((p.get("display") for p in perf if _ref_id(p, "Organization")), None),
        "authored": sr.get("authoredOn"), "last_activity": _ext(sr, EXT_LAST), "first_response": first,
        "closed": closed, "outcome": _ext(sr, EXT_OUTCOME),
        "first_response_hours": hours_between(sr.get("authoredOn"), first),
        "total_hours": hours_between(sr.get("authoredOn"), closed),
        "replaces": [r.get("reference") for r in sr.get("replaces") or []],
        "side": _side(who, sr), "version": (sr.get("meta") or {}).get("versionId"),
    }


def _read_request(gate: Gate, who: Principal, request_id: str) -> tuple[dict, str]:
    s = gate.read(who, "ServiceRequest", request_id)
    if kind_of(s.content) not in KINDS:
        raise FhirError(404, f"ServiceRequest/{request_id} is not a referral or an advice request", code="not-found")
    return s.content, str(s.version)


def thread(*, gate: Gate, who: Principal, request_id: str) -> list[dict[str, Any]]:
    """The messages of a conversation, oldest first."""
    found = gate.search(who, "Communication", [("based-on", f"ServiceRequest/{request_id}"), ("_sort", "sent"),
                                               ("_count", "1000")])
    out = []
    for s in found.matches:
        c = s.content
        code = next((x.get("code") for cat in c.get("category") or () for x in cat.get("coding") or ()
                     if x.get("system") == CONVERSATION_SYSTEM), None)
        out.append({"id": s.id, "kind": code, "kind_text": MESSAGE_TEXT.get(code or "", "Message"),
                    "sent": c.get("sent"), "sender": (c.get("sender") or {}).get("display"),
                    "sender_id": _ref_id(c.get("sender"), "Practitioner"),
                    "organization": ((c.get("meta") or {}).get("source") or "").removeprefix("Organization/"),
                    "text": next((p.get("contentString") for p in c.get("payload") or [] if p.get("contentString")),
                                 ""),
                    "in_response_to": next((r.get("reference") for r in c.get("inResponseTo") or []), None),
                    "_order": (_parse_time(c.get("sent")) or datetime.min.replace(tzinfo=UTC), s.last_updated or "")})
    out.sort(key=lambda m: m["_order"])
    for m in out:
        del m["_order"]
    return out


def get_request(*, gate: Gate, who: Principal, request_id: str) -> dict[str, Any]:
    """A referral or advice request with its status, its thread and what the principal may do next."""
    sr, _ = _read_request(gate, who, request_id)
    view = summary_of(sr, who)
    view["text"] = next((n.get("text") for n in sr.get("note") or []), None)
    view["reason"] = ", ".join(r.get("text") or "" for r in sr.get("reasonCode") or []) or None
    view["messages"] = thread(gate=gate, who=who, request_id=request_id)
    replaced_by = gate.search(who, "ServiceRequest", [("replaces", f"ServiceRequest/{request_id}"), ("_count", "5")])
    view["replaced_by"] = [s.id for s in replaced_by.matches]
    side, is_open = view["side"], view["open"]
    view["can"] = {
        "reply": is_open and side == "recipient",
        "ask_more": is_open and side == "recipient",
        "answer": is_open and side == "requester",
        "convert": is_open and view["kind"] == "advice" and side in ("requester", "recipient"),
        "close": is_open and side in ("requester", "recipient"),
    }
    return view


def list_requests(*, gate: Gate, who: Principal, box: str = "inbox", kind: str | None = None,
                  state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Inbox (sent to me or my organisation) or outbox (sent by me), newest activity first."""
    if box not in ("inbox", "outbox"):
        raise FhirError(400, f"Unknown box '{box}': use inbox or outbox", code="value", expression=["box"])
    if kind and kind not in KINDS:
        raise FhirError(400, f"Unknown kind '{kind}': use advice or referral", code="value", expression=["kind"])
    if state and state not in STATE_TEXT and state not in ("open", "done"):
        raise FhirError(400, f"Unknown state '{state}': use open, done or one of {', '.join(STATE_TEXT)}",
                        code="value", expression=["state"])
    if not who.practitioner_id and not who.organization_id:
        return []
    cats = ",".join(f"{REQUEST_CATEGORY}|{k}" for k in ([kind] if kind else KINDS))
    searches = []
    if box == "inbox":
        refs = [r for r in (f"Practitioner/{who.practitioner_id}" if who.practitioner_id else None,
                            f"Organization/{who.organization_id}" if who.organization_id else None) if r]
        searches.append([("performer", ",".join(refs))])
    else:
        if not who.practitioner_id:
            return []
        searches.append([("requester", f"Practitioner/{who.practitioner_id}")])
    rows: dict[str, dict] = {}
    for params in searches:
        found = gate.search(who, "ServiceRequest", params + [("category", cats), ("_include", "ServiceRequest:subject"),
                                                             ("_sort", "-authored"), ("_count", str(limit))])
        names = {s.id: person_name(s.content) for s in found.included if s.rtype == "Patient"}
        for s in found.matches:
            row = summary_of(s.content, who, names.get(_ref_id(s.content.get("subject"), "Patient") or ""))
            rows[s.id] = row
    out = list(rows.values())
    if state == "open":
        out = [r for r in out if r["open"]]
    elif state == "done":
        out = [r for r in out if not r["open"]]
    elif state:
        out = [r for r in out if r["state"] == state]
    out.sort(key=lambda r: (not r["open"], r["last_activity"] or r["authored"] or ""), reverse=False)
    open_rows = sorted([r for r in out if r["open"]], key=lambda r: r["last_activity"] or "", reverse=True)
    done_rows = sorted([r for r in out if not r["open"]], key=lambda r: r["last_activity"] or "", reverse=True)
    return open_rows + done_rows


# -- act on a conversation -------------------------------------------------------------------------------------------
def _refuse_closed(view_state: str, action: str) -> FhirError:
    return FhirError(409, f"This conversation is {STATE_TEXT.get(view_state, view_state).lower()}, so it cannot take "
                          f"a {action}. Your text was not sent and nothing was changed: copy it into a new advice "
                          "request or referral if it is still needed.", code="conflict")


def _act(*, gate: Gate, who: Principal, request_id: str, action: str, text: str | None, at: str | None,
         attempts: int = 3) -> dict[str, Any]:
    """Add a message and/or change the request's state in one transaction guarded by If-Match (retried on races)."""
    required = action in ("reply", "ask-more", "answer")
    body = _check_text(text, "text", required=required)
    me = _me(gate, who)
    for attempt in range(attempts):
        sr, version = _read_request(gate, who, request_id)
        state = state_of(sr)
        new_state = TRANSITIONS.get((state, action))
        if new_state is None:
            raise _refuse_closed(state, ACTION_LABELS.get(action, action))
        side = _side(who, sr)
        if side is None:
            raise gate.refuse(who, "Only the requester's side or the recipient's side can take part in this "
                                   "conversation; you can read it because you care for the person.", action="update",
                              entity=f"ServiceRequest/{request_id}", patient_id=_ref_id(sr.get("subject"), "Patient"))
        if action in ("reply", "ask-more") and side != "recipient":
            raise FhirError(422, "Replies and requests for more information come from the recipient; as the requester "
                                 "add further information instead", code="business-rule")
        if action == "answer" and side != "requester":
            raise FhirError(422, "Further information comes from the requester; as the recipient reply or ask for "
                                 "more information instead", code="business-rule")
        when = at or now_iso()
        msgs = thread(gate=gate, who=who, request_id=request_id)
        previous = f"Communication/{msgs[-1]['id']}" if msgs else None
        if side == "recipient":
            recipient = sr.get("requester")
        else:
            recipient = next((p for p in sr.get("performer") or [] if _ref_id(p, "Practitioner")),
                             (sr.get("performer") or [None])[0])
        new = dict(sr)
        new.pop("meta", None)
        new["extension"] = list(sr.get("extension") or [])
        _set_ext(new, EXT_LAST, "valueDateTime", when)
        if action in ("reply", "ask-more") and not _ext(sr, EXT_FIRST):
            _set_ext(new, EXT_FIRST, "valueDateTime", when)
        if action == "close":
            new["status"] = "completed"
        _set_ext(new, EXT_STATE, "valueCode", new_state)
        if action == "close":
            _set_ext(new, EXT_CLOSED, "valueDateTime", when)
            _set_ext(new, EXT_OUTCOME, "valueCode", "advice-given" if kind_of(sr) == "advice" else "completed")
        entries = [{"resource": new, "request": {"method": "PUT", "url": f"ServiceRequest/{request_id}",
                                                 "ifMatch": f'W/"{version}"'}}]
        if body:
            kind = "note" if action == "close" else action
            entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Communication"},
                            "resource": _message(kind=kind, text=body, sr_ref=f"ServiceRequest/{request_id}",
                                                 patient_id=_ref_id(sr.get("subject"), "Patient") or "",
                                                 sender=me, recipient=recipient, previous=previous, at=when)})
        try:
            gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except FhirError as exc:
            if exc.status == 412 and attempt < attempts - 1:
                continue  # someone else changed it meanwhile: re-read and check again
            raise
        break
    try:
        return get_request(gate=gate, who=who, request_id=request_id)
    except FhirError as exc:
        if exc.status != 403 or action != "close":
            raise
        # closing ended the open-referral relationship: the recipient may no longer read the record
        closed = summary_of({**new, "id": request_id}, who)
        closed.update(messages=[], replaced_by=[], text=None, reason=None,
                      can={k: False for k in ("reply", "ask_more", "answer", "convert", "close")})
        return closed


def reply(*, gate: Gate, who: Principal, request_id: str, text: str, at: str | None = None) -> dict[str, Any]:
    """The recipient answers the question (the first reply sets the first-response time)."""
    return _act(gate=gate, who=who, request_id=request_id, action="reply", text=text, at=at)


def ask_more(*, gate: Gate, who: Principal, request_id: str, text: str, at: str | None = None) -> dict[str, Any]:
    """The recipient asks the requester for more information."""
    return _act(gate=gate, who=who, request_id=request_id, action="ask-more", text=text, at=at)


def answer(*, gate: Gate, who: Principal, request_id: str, text: str, at: str | None = None) -> dict[str, Any]:
    """The requester adds further information (puts the conversation back with the recipient)."""
    return _act(gate=gate, who=who, request_id=request_id, action="answer", text=text, at=at)


def close(*, gate: Gate, who: Principal, request_id: str, text: str | None = None,
          at: str | None = None) -> dict[str, Any]:
    """Either side closes the conversation (completed; the total time is recorded)."""
    return _act(gate=gate, who=who, request_id=request_id, action="close", text=text, at=at)


def convert(*, gate: Gate, who: Principal, request_id: str, text: str | None = None, priority: str | None = None,
            at: str | None = None) -> dict[str, Any]:
    """Turn an advice request into a referral to the same recipient: a new ServiceRequest that replaces it."""
    sr, version = _read_request(gate, who, request_id)
    if kind_of(sr) != "advice":
        raise FhirError(422, "Only an advice request can be converted into a referral", code="business-rule")
    state = state_of(sr)
    new_state = TRANSITIONS.get((state, "convert"))
    if new_state is None:
        raise _refuse_closed(state, ACTION_LABELS["convert"])
    side = _side(who, sr)
    if side is None:
        raise gate.refuse(who, "Only the requester's side or the recipient's side can convert this advice request",
                          action="update", entity=f"ServiceRequest/{request_id}", patient_id=_ref_id(sr.get("subject"), "Patient"))
    body = _check_text(text, "text", required=False) or next((n.get("text") for n in sr.get("note") or []), "") \
        or "Referral following advice and guidance"
    when = at or now_iso()
    patient_id = _ref_id(sr.get("subject"), "Patient") or ""
    perf = sr.get("performer") or []
    if side == "requester":
        to = next((p["reference"] for p in perf if _ref_id(p, "Practitioner")), perf[0]["reference"] if perf else "")
    else:
        to = f"Practitioner/{who.practitioner_id}"
    me = _me(gate, who)
    requester = sr.get("requester") if side == "recipient" else me
    rcpt = resolve_recipient(gate=gate, who=who, to=to)
    prac, org = rcpt["practitioner"], rcpt["organization"]
    performer = _performer(prac, org)
    title = ((sr.get("code") or {}).get("text") or "").removeprefix("Advice: ")
    ref_url = f"urn:uuid:{uuid.uuid4()}"
    referral = _build_request(kind="referral", priority=priority or sr.get("priority") or "routine",
                              title=f"Referral to {title}", subject=sr.get("subject"), requester=requester,
                              performer=performer, text=body, author=me, at=when, reason_code=sr.get("reasonCode"),
                              replaces=f"ServiceRequest/{request_id}", based_on=f"ServiceRequest/{request_id}",
                              requester_org=_ext(sr, EXT_REQ_ORG))
    old = dict(sr)
    old.pop("meta", None)
    old["status"] = "completed"
    old["extension"] = list(sr.get("extension") or [])
    _set_ext(old, EXT_STATE, "valueCode", new_state)
    _set_ext(old, EXT_CLOSED, "valueDateTime", when)
    _set_ext(old, EXT_LAST, "valueDateTime", when)
    _set_ext(old, EXT_OUTCOME, "valueCode", "converted-to-referral")
    msgs = thread(gate=gate, who=who, request_id=request_id)
    note = _message(kind="note", text=f"Converted into a referral: {body}", sr_ref=f"ServiceRequest/{request_id}",
                    patient_id=patient_id, sender=me,
                    recipient=sr.get("requester") if side == "recipient" else (perf[0] if perf else None),
                    previous=f"Communication/{msgs[-1]['id']}" if msgs else None, at=when)
    entries = [
        {"fullUrl": ref_url, "resource": referral, "request": {"method": "POST", "url": "ServiceRequest"}},
        {"resource": old, "request": {"method": "PUT", "url": f"ServiceRequest/{request_id}",
                                      "ifMatch": f'W/"{version}"'}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": note,
         "request": {"method": "POST", "url": "Communication"}},
    ]
    try:
        result = gate.bundle(who, {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    except FhirError as exc:
        if exc.status == 412:
            raise FhirError(409, "Someone changed this advice request while you were converting it; reload it and "
                                 "try again (nothing was changed).", code="conflict") from None
        raise
    new_id = result["entry"][0]["response"]["location"].split("/")[1]
    return get_request(gate=gate, who=who, request_id=new_id)


# -- measurement -----------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def measure_response_times(*, requests: list[dict], messages: list[dict], since: str | None = None) -> dict[str, Any]:
    """Advice response times from resources: JoinedUp advice ServiceRequests, and Communication-only exchanges.

    A ServiceRequest (category advice) counts from `authoredOn` to its first reply (first-response extension, else
    the first reply/ask-more message based on it) and to its closing. A Communication request without a
    ServiceRequest (as GP systems send them: category text "Advice and guidance request", no inResponseTo) counts
    from its `sent` to the first Communication `inResponseTo` it; its total time is the same (answered = done).
    """
    first: list[float] = []
    total: list[float] = []
    n = answered = closed = 0
    by_request: dict[str, list[dict]] = {}
    replies_to: dict[str, list[str]] = {}
    for m in messages:
        for b in m.get("basedOn") or ():
            by_request.setdefault(b.get("reference", ""), []).append(m)
        for r in m.get("inResponseTo") or ():
            if m.get("sent"):
                replies_to.setdefault(r.get("reference", ""), []).append(m["sent"])
    for sr in requests:
        if kind_of(sr) != "advice" or (since and (sr.get("authoredOn") or "") < since):
            continue
        n += 1
        start = sr.get("authoredOn")
        f = _ext(sr, EXT_FIRST)
        if not f:
            sent = [m.get("sent") for m in by_request.get(f"ServiceRequest/{sr.get('id')}", [])
                    if any(c.get("code") in ("reply", "ask-more") for cat in m.get("category") or ()
                           for c in cat.get("coding") or ())]
            f = min((s for s in sent if s), default=None)
        h = hours_between(start, f)
        if h is not None:
            answered += 1
            first.append(h)
        t = hours_between(start, _ext(sr, EXT_CLOSED))
        if t is not None:
            closed += 1
            total.append(t)
    for m in messages:
        if m.get("basedOn") or m.get("inResponseTo"):
            continue
        cat = " ".join(c.get("text") or "" for c in m.get("category") or ()).lower()
        if "advice" not in cat or "request" not in cat:
            continue
        if since and (m.get("sent") or "") < since:
            continue
        n += 1
        reps = sorted(replies_to.get(f"Communication/{m.get('id')}", []))
        if reps:
            h = hours_between(m.get("sent"), reps[0])
            if h is not None:
                answered += 1
                closed += 1
                first.append(h)
                total.append(h)

    def stats(xs: list[float]) -> dict[str, Any]:
        return {"n": len(xs), "median": _round(percentile(xs, 50)), "p90": _round(percentile(xs, 90))}

    return {"since": since, "requests": n, "answered": answered, "unanswered": n - answered, "closed": closed,
            "first_reply_hours": stats(first), "total_hours": stats(total)}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _search_all(gate: Gate, who: Principal, rtype: str, params: list[tuple[str, str]]) -> list[dict]:
    out: list[dict] = []
    offset = 0
    while True:
        found = gate.search(who, rtype, params + [("_count", "1000"), ("_offset", str(offset))], max_count=1000)
        out.extend(s.content for s in found.matches)
        if not found.has_more or not found.matches:
            return out
        offset += len(found.matches)


def advice_response_times(*, gate: Gate, who: Principal, since: str | None = None) -> dict[str, Any]:
    """Advice-and-guidance volumes and response times (median and 90th percentile, hours) visible to `who`."""
    if since:
        if _parse_time(since) is None:
            raise FhirError(400, f"'{since}' is not a date: use YYYY-MM-DD", code="value", expression=["since"])
    else:
        since = (datetime.now(UTC) - timedelta(days=365)).strftime("%Y-%m-%d")
    requests = _search_all(gate, who, "ServiceRequest", [("category", f"{REQUEST_CATEGORY}|advice"),
                                                         ("authored", f"ge{since}")])
    replies = f"{CONVERSATION_SYSTEM}|reply,{CONVERSATION_SYSTEM}|ask-more"
    conv = _search_all(gate, who, "Communication", [("category", replies),
                                                    ("sent", f"ge{since}")])
    legacy = _search_all(gate, who, "Communication", [("category:text", "advice and guidance"),
                                                      ("sent", f"ge{since}")])
    return measure_response_times(requests=requests, messages=conv + legacy, since=since)
