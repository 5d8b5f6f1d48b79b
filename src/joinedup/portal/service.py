"""The person's portal through the one gate: their plan and next steps, messages to their care team (and the
replies), correction requests with their status, and their sharing choices.

Sharing choices are the gate's own (governance/facts.py reads them from Consent): an objection to sharing with
everyone or with one organisation (a deny provision, with no actor or an Organization actor), an entry kept private
(a deny provision naming it in `data`), and the National Data Opt-out (policyRule `national-data-opt-out`). Each is
one Consent the person writes; withdrawing it sets its status to inactive. The gate applies them on its next
decision, in every process within `JOINEDUP_POLICY_REFRESH_MS`.
"""

from __future__ import annotations

import re
import time
from typing import Any

from joinedup.care.plans import service as plans
from joinedup.fhir import codes, words
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.governance.facts import OPT_OUT_CODE, OPT_OUT_SYSTEM, choices_of, proxy_grant_of
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.governance.policy import is_proxy
from joinedup.record import service as record

MAX_WORDS = 2000
CATEGORY = [{"coding": [{"system": codes.LOINC, "code": "59284-0", "display": "Patient Consent"}]}]
SCOPE = {"coding": [{"system": codes.CONSENT_SCOPE, "code": "patient-privacy", "display": "Privacy Consent"}]}
RECIPIENT_ROLE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                              "code": "IRCP", "display": "information recipient"}]}
REPLY = {"system": codes.CONVERSATION_MESSAGE, "code": "reply", "display": "Reply"}
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# what a person can keep private, by kind of entry (the summary's sections)
PRIVATE_KINDS = ("problems", "medicines", "allergies", "results", "visits and letters")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def person_of(gate: Gate, who: Principal, *, action: str = "read", writes: bool = False) -> str:
    """The person whose portal this is: a patient's own record, or (reading only) the record a carer was given."""
    if who.patient_id and (who.role == "patient" or (is_proxy(who) and not writes)):
        return who.patient_id
    message = ("Only the person can do this from their own portal." if writes else
               "This is a person's own portal: professionals see people's records from their pages.")
    raise gate.refuse(who, message, action=action, entity="portal")


def _words(text: str | None, empty: str) -> str:
    value = (text or "").strip()
    if not value:
        raise FhirError(422, empty, code="required")
    if len(value) > MAX_WORDS:
        raise FhirError(422, f"That is longer than {MAX_WORDS:,} characters: please shorten it.", code="too-long")
    return value


def _payload(c: dict) -> str:
    return next((p.get("contentString") for p in c.get("payload") or () if p.get("contentString")), "")


def _ref(node: Any) -> str:
    return (node or {}).get("reference") or "" if isinstance(node, dict) else ""


# -- plan, what matters, appointments and next steps ----------------------------------------------------------
def overview(*, gate: Gate, who: Principal) -> dict[str, Any]:
    """The person's plan and what matters, goals, appointments and next steps (what the reader may see of them)."""
    pid = person_of(gate, who)
    s = record.summarise(gate=gate, who=who, patient_id=pid)
    try:
        plan = plans.get_plan(gate=gate, who=who, patient_id=pid)
    except FhirError as exc:
        if exc.status != 403:
            raise
        plan = None
    appointments = [e for e in s.timeline if e.kind == "Appointment"]
    upcoming = sorted((e for e in appointments if e.upcoming), key=lambda e: e.date or "")
    past = [e for e in appointments if not e.upcoming][:10]
    return {"s": s, "plan": plan, "upcoming": upcoming, "past": past, "pid": pid}


# -- messages to the care team, replies, correction requests ---------------------------------------------------
def recipients(s) -> list[dict[str, str]]:
    """Whom the person can write to: their care team, their key worker, their GP practice (from their record)."""
    out = [{"key": "team", "label": "My care team"}]
    if s.key_worker and s.key_worker.practitioner_id:
        out.append({"key": f"Practitioner/{s.key_worker.practitioner_id}",
                    "label": f"My key worker, {s.key_worker.name}"})
    if s.gp_practice.practice_id:
        out.append({"key": f"Organization/{s.gp_practice.practice_id}",
                    "label": f"My GP practice, {s.gp_practice.practice}"})
    return out


def _care_teams(gate: Gate, who: Principal, pid: str) -> list[str]:
    found = gate.search(who, "CareTeam", [("patient", f"Patient/{pid}"), ("_count", "20")])
    return [f"CareTeam/{t.id}" for t in found.matches if t.content.get("status") in (None, "active")]


def send_message(*, gate: Gate, who: Principal, text: str | None, to: str | None) -> str:
    """A message from the person to their care team (a Communication from them, status completed: it creates no
    relationship), addressed to the care team, their key worker or their GP practice. Returns its id."""
    pid = person_of(gate, who, action="create", writes=True)
    words_ = _words(text, "Write your message before sending it.")
    to = (to or "team").strip()
    s = record.summarise(gate=gate, who=who, patient_id=pid)
    allowed = {r["key"] for r in recipients(s)}
    if to not in allowed:
        raise FhirError(422, "Choose who the message is for from the list.", code="value")
    if to == "team":
        refs = _care_teams(gate, who, pid) or ([f"Organization/{s.gp_practice.practice_id}"]
                                               if s.gp_practice.practice_id else [])
    else:
        refs = [to]
    if not refs:
        raise FhirError(422, "No care team or GP practice is recorded to send this to; ask your GP practice.",
                        code="business-rule")
    written = gate.create(who, {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [codes.PERSON_MESSAGE], "text": codes.PERSON_MESSAGE["display"]}],
        "subject": {"reference": f"Patient/{pid}"}, "sender": {"reference": f"Patient/{pid}"},
        "recipient": [{"reference": r} for r in refs], "sent": _now(), "payload": [{"contentString": words_}]})
    return written.id


def _is_person_thread(c: dict, pid: str) -> bool:
    return _ref(c.get("sender")) == f"Patient/{pid}" and words.message_kind(c) in ("message", "correction")


def threads(*, gate: Gate, who: Principal, patient_id: str) -> list[dict[str, Any]]:
    """The person's messages and correction requests, newest first, each with its replies and its state in the
    platform's words ("Awaiting reply", "Replied")."""
    found = gate.search(who, "Communication", [("patient", f"Patient/{patient_id}"), ("_count", "1000")])
    comms = [s.content for s in found.matches]
    by_root: dict[str, list[dict]] = {}
    for c in comms:
        for r in c.get("inResponseTo") or ():
            by_root.setdefault(_ref(r), []).append(c)
    names: dict[str, str] = {}

    def name_of(ref: str) -> str:
        if ref not in names:
            rtype, _, rid = ref.partition("/")
            try:
                names[ref] = human_name(gate.read(who, rtype, rid).content) if rtype in (
                    "Practitioner", "Organization", "CareTeam") else ""
            except FhirError:
                names[ref] = ""
        return names[ref]

    out = []
    for c in comms:
        if not _is_person_thread(c, patient_id):
            continue
        replies = sorted(by_root.get(f"Communication/{c.get('id')}", []), key=lambda r: r.get("sent") or "")
        kind = words.message_kind(c)
        out.append({
            "id": c.get("id"), "kind": kind, "kind_words": words.message_words(c), "text": _payload(c),
            "sent": c.get("sent"), "sent_words": words.status_words("Communication", c.get("status")),
            "to": [n for n in (name_of(_ref(r)) for r in c.get("recipient") or ()) if n],
            "state": words.conversation_words("replied" if replies else "awaiting-reply"),
            "replies": [{"text": _payload(r), "sent": r.get("sent"), "kind_words": words.message_words(r),
                         "from": ", ".join(x for x in (name_of(_ref(r.get("sender"))), _display(r)) if x)}
                        for r in replies]})
    out.sort(key=lambda t: t["sent"] or "", reverse=True)
    return out


def _display(c: dict) -> str:
    """The role and organisation a reply was sent as (written with the reply)."""
    return (c.get("sender") or {}).get("display") or ""


def my_messages(*, gate: Gate, who: Principal) -> dict[str, Any]:
    pid = person_of(gate, who)
    s = record.summarise(gate=gate, who=who, patient_id=pid)
    return {"threads": threads(gate=gate, who=who, patient_id=pid), "recipients": recipients(s), "s": s,
            "pid": pid, "can_write": who.role == "patient"}


def reply(*, gate: Gate, who: Principal, patient_id: str, message_id: str, text: str | None) -> str:
    """A professional's reply to a person's message or correction request (a Communication inResponseTo it, to the
    person), through the gate as the professional (the relationship and the role's activity are checked there)."""
    if who.role == "patient" or is_proxy(who):
        raise gate.refuse(who, "Replies come from the care team; write a new message instead.", action="create",
                          entity=f"Communication/{message_id}", patient_id=patient_id)
    body = _words(text, "Write your reply before sending it.")
    if not _ID.fullmatch(message_id or ""):
        raise FhirError(404, "No such message.", code="not-found")
    original = gate.read(who, "Communication", message_id).content
    if not _is_person_thread(original, patient_id) or record_of(original) != patient_id:
        raise FhirError(404, "That is not a message from this person.", code="not-found")
    from joinedup.governance.policy import rules

    role = (rules()["roles"].get(who.role) or {}).get("display", "")
    org = ""
    if who.organization_id:
        try:
            org = gate.read(who, "Organization", who.organization_id).content.get("name") or ""
        except FhirError:
            org = ""
    sender: dict[str, str] = {"display": ", ".join(x for x in (role, org) if x)}
    if who.practitioner_id:
        sender["reference"] = f"Practitioner/{who.practitioner_id}"
    elif who.organization_id:
        sender["reference"] = f"Organization/{who.organization_id}"
    written = gate.create(who, {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [REPLY], "text": "Reply"}], "subject": {"reference": f"Patient/{patient_id}"},
        "sender": sender, "recipient": [{"reference": f"Patient/{patient_id}"}],
        "inResponseTo": [{"reference": f"Communication/{message_id}"}], "sent": _now(),
        "payload": [{"contentString": body}]})
    return written.id


def record_of(c: dict) -> str:
    return _ref(c.get("subject")).removeprefix("Patient/")


def professional_view(*, gate: Gate, who: Principal, patient_id: str) -> dict[str, Any]:
    """The person's messages as the care team sees them (to reply)."""
    if who.role == "patient" or is_proxy(who):
        raise gate.refuse(who, "This page is for the care team; your messages are under Messages.", action="read",
                          entity="messages", patient_id=patient_id)
    person = gate.read(who, "Patient", patient_id).content
    return {"threads": threads(gate=gate, who=who, patient_id=patient_id), "pid": patient_id,
            "name": human_name(person)}


# -- sharing choices -------------------------------------------------------------------------------------------
def _consent(pid: str, provision: dict | None = None, policy_rule: dict | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"resourceType": "Consent", "status": "active", "scope": SCOPE, "category": CATEGORY,
                         "patient": {"reference": f"Patient/{pid}"}, "dateTime": _now(),
                         "performer": [{"reference": f"Patient/{pid}"}]}
    if provision is not None:
        c["provision"] = provision
    if policy_rule is not None:
        c["policyRule"] = policy_rule
    return c


def entries_to_keep_private(s) -> list[tuple[str, list[tuple[str, str]]]]:
    """(kind, [(Type/id, label)]) of the person's entries that can be kept private, from their summary."""
    def who_recorded(p) -> str:
        return f" (recorded by {p.source.name})"

    groups: list[tuple[str, list[tuple[str, str]]]] = [
        ("problems", [(e.provenance.ref, f"{p.display}{who_recorded(e.provenance)}") for p in s.problems
                      for e in p.entries]),
        ("medicines", [(e.provenance.ref, f"{m.name}{who_recorded(e.provenance)}") for m in s.medicines
                       for e in m.entries]),
        ("allergies", [(a.provenance.ref, f"{a.substance}{who_recorded(a.provenance)}") for a in s.allergies]),
        ("results", [(r.provenance.ref, f"{r.display}{who_recorded(r.provenance)}") for r in s.results]),
        ("visits and letters", [(e.provenance.ref, f"{e.title} {e.date[:10] if e.date else ''}"
                                 f"{who_recorded(e.provenance)}") for e in s.timeline[:200]]),
    ]
    return [(k, list(dict.fromkeys(items))) for k, items in groups if items]


def sharing(*, gate: Gate, who: Principal) -> dict[str, Any]:
    """The person's sharing choices in force, in words, each with how to withdraw it, and what they can choose (organisations that hold part of their record, entries they can keep private)."""
    pid = person_of(gate, who)
    s = record.summarise(gate=gate, who=who, patient_id=pid)
    orgs = {o.id: o.name for o in s.organisations if o.id}
    found = gate.search(who, "Consent", [("patient", f"Patient/{pid}"), ("_count", "500")])
    labels = {ref: label for _, items in entries_to_keep_private(s) for ref, label in items}
    choices = []
    for c in found.matches:
        kinds, private = choices_of(c.content)
        if c.content.get("status") != "active" or proxy_grant_of(c.content, pid) is not None:
            continue
        for kind, org in kinds:
            name = orgs.get(org or "") or _name(gate, who, "Organization", org)
            text = {"all": "You object to sharing your record: each organisation sees only what it recorded "
                           "itself.",
                    "organization": f"You object to sharing your record with {name}: they see only what they "
                                    "recorded themselves.",
                    "opt-out": "You have opted out of your information being used for research and planning "
                               "(National Data Opt-out). It is still used for your care."}[kind]
            choices.append({"id": c.id, "kind": kind, "text": text, "since": c.content.get("dateTime")})
        for rtype, rid in private:
            what = labels.get(f"{rtype}/{rid}") or "an entry of your record"
            choices.append({"id": c.id, "kind": "private", "text": f"Kept private: {what}. Only the organisation "
                            "that recorded it can see it.", "since": c.content.get("dateTime")})
    choices.sort(key=lambda x: x["since"] or "", reverse=True)
    opted_out = any(c["kind"] == "opt-out" for c in choices)
    objects_all = any(c["kind"] == "all" for c in choices)
    return {"pid": pid, "s": s, "choices": choices, "organisations": sorted(orgs.items(), key=lambda kv: kv[1]),
            "entries": entries_to_keep_private(s), "opted_out": opted_out, "objects_all": objects_all,
            "can_change": who.role == "patient"}


def _name(gate: Gate, who: Principal, rtype: str, rid: str | None) -> str:
    if not rid:
        return "that organisation"
    try:
        return human_name(gate.read(who, rtype, rid).content) or "that organisation"
    except FhirError:
        return "that organisation"


def choose(*, gate: Gate, who: Principal, choice: str, organisation: str | None = None,
           entry: str | None = None) -> str:
    """Record one sharing choice (a Consent the gate applies at once): 'object-all', 'object-organisation' (with
    `organisation`), 'private' (with `entry`, Type/id of an entry of the person's record) or 'opt-out'."""
    pid = person_of(gate, who, action="create", writes=True)
    if choice == "object-all":
        consent = _consent(pid, {"type": "deny"})
    elif choice == "object-organisation":
        if not organisation or not _ID.fullmatch(organisation):
            raise FhirError(422, "Choose the organisation you do not want to share your record with.",
                            code="required")
        gate.read(who, "Organization", organisation)  # it exists (directory), else 404
        consent = _consent(pid, {"type": "deny", "actor": [
            {"role": RECIPIENT_ROLE, "reference": {"reference": f"Organization/{organisation}"}}]})
    elif choice == "private":
        rtype, _, rid = (entry or "").partition("/")
        if not rtype or not _ID.fullmatch(rid or "") or not rtype.isalpha():
            raise FhirError(422, "Choose the entry you want to keep private.", code="required")
        item = gate.read(who, rtype, rid)  # one of the person's own entries (the gate refuses anyone else's)
        if item.patient_id != pid:
            raise FhirError(422, "Choose an entry of your own record.", code="value")
        consent = _consent(pid, {"type": "deny", "data": [{"meaning": "instance",
                                                            "reference": {"reference": f"{rtype}/{rid}"}}]})
    elif choice == "opt-out":
        consent = _consent(pid, None, {"coding": [{"system": OPT_OUT_SYSTEM, "code": OPT_OUT_CODE,
                                                   "display": "National Data Opt-out"}]})
    else:
        raise FhirError(422, "Choose one of the sharing choices listed.", code="value")
    return gate.create(who, consent).id


def withdraw(*, gate: Gate, who: Principal, consent_id: str) -> str:
    """Withdraw one of the person's choices (the Consent becomes inactive): sharing resumes at once."""
    pid = person_of(gate, who, action="update", writes=True)
    if not _ID.fullmatch(consent_id or ""):
        raise FhirError(404, "No such choice.", code="not-found")
    current = gate.read(who, "Consent", consent_id)
    if current.patient_id != pid:
        raise FhirError(404, "No such choice.", code="not-found")
    content = dict(current.content)
    if content.get("status") != "active":
        return consent_id
    content["status"] = "inactive"
    gate.update(who, "Consent", consent_id, content)
    return consent_id
