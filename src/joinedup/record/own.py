"""The person's own voice in their record: what matters to them in their own words, a request to correct their
record, and who has looked at it - all through the gate as the person (a patient account)."""

from __future__ import annotations

import re
import time
from typing import Any

from joinedup.fhir.codes import CORRECTION_REQUEST as CORRECTION
from joinedup.fhir.errors import FhirError
from joinedup.fhir.values import human_name
from joinedup.governance.gate import Gate
from joinedup.governance.identity import Principal
from joinedup.governance.policy import rules

MAX_WORDS = 2000
# what a person reads in their access log instead of FHIR resource type names
PLAIN_TYPES = {"Patient": "personal details", "Condition": "problems", "MedicationRequest": "prescriptions",
               "MedicationStatement": "medicines lists", "Observation": "results", "Encounter": "appointments and "
               "visits", "AllergyIntolerance": "allergies", "DocumentReference": "letters", "CarePlan": "care plan",
               "Goal": "goals", "Task": "tasks", "ServiceRequest": "referrals", "Communication": "messages",
               "CareTeam": "care team", "Consent": "sharing choices", "EpisodeOfCare": "care episodes",
               "ClinicalImpression": "reviews", "RelatedPerson": "carers and contacts"}


OWN_CHOICES = ("carer-grant", "carer-revoke")
_KIND_WORDS = {"registered": "you are registered with them", "named-gp": "they are your named GP",
               "holding": "they hold part of your record", "care-team": "they are in your care team",
               "episode": "they are caring for you now", "referral": "you were referred to them or they were asked "
               "for advice"}


def plain_reason(e: dict[str, Any]) -> str:
    """Why an access was allowed or refused, in words for the person (no role or activity ids)."""
    reason = e.get("reason") or ""
    if e.get("action") in OWN_CHOICES:
        return reason[:1].upper() + reason[1:]
    if e.get("outcome") == "refused":
        return "Refused: it was outside what they may see."
    if "relationship: " in reason:
        kind = reason.split("relationship: ", 1)[1].split(";")[0].strip()
        linked = kind.startswith("linked record (")
        kind = kind.removeprefix("linked record (").rstrip(")")
        words = _KIND_WORDS.get(kind, "they are caring for you")
        return f"Because {words}" + (" (through another of your records)." if linked else ".")
    if "break-glass" in reason:
        return "Emergency access (break glass): checked by the privacy officer."
    if "carer access" in reason:
        return "Access you gave them."
    if "subject access" in reason:
        return "To prepare a copy of your record you asked for."
    if reason.startswith("own record") or "may see who looked" in reason:
        return ""
    return ""


def _carer_names(gate: Gate, who: Principal, pid: str) -> dict[str, str]:
    """Carer account -> the carer's name as the person recorded it in their grant (so accounts never show)."""
    from joinedup.governance.facts import proxy_grant_of

    out: dict[str, str] = {}
    for c in gate.search(who, "Consent", [("patient", f"Patient/{pid}"), ("_count", "500")]).matches:
        g = proxy_grant_of({**c.content, "status": "active"}, pid)
        if g is not None:
            actor = next(iter((c.content.get("provision") or {}).get("actor") or ()), {})
            out[g.account] = f"{(actor.get('reference') or {}).get('display') or 'Your carer'} (your carer)"
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _person(gate: Gate, who: Principal, refusal: str, action: str) -> str:
    if who.role != "patient" or not who.patient_id:
        raise gate.refuse(who, refusal, action=action, entity="own-record")
    return who.patient_id


def _words(text: str, empty: str) -> str:
    words = (text or "").strip()
    if not words:
        raise FhirError(422, empty, code="required")
    if len(words) > MAX_WORDS:
        raise FhirError(422, f"That is longer than {MAX_WORDS:,} characters: please shorten it.", code="too-long")
    return words


def add_what_matters(*, gate: Gate, who: Principal, text: str) -> str:
    """What matters to the person, in their own words: an Observation they write (the gate marks it as theirs),
    shown to everyone caring for them under About me. Returns the person's id."""
    pid = _person(gate, who, "Only the person can add to their record in their own words here; professionals record "
                       "what matters in the care plan.", "create")
    words = _words(text, "Write what matters to you before adding it.")
    gate.create(who, {"resourceType": "Observation", "status": "final", "code": {"text": "What matters to me"},
                      "subject": {"reference": f"Patient/{pid}"}, "performer": [{"reference": f"Patient/{pid}"}],
                      "effectiveDateTime": _now(), "valueString": words})
    return pid


def ask_correction(*, gate: Gate, who: Principal, text: str, organisation: str = "") -> str:
    """A request from the person to correct their record: a Communication from them, addressed to the organisation
    they name (if any); it reaches their GP, care team and that organisation as a notification. Returns their id."""
    pid = _person(gate, who, "Only the person can ask for their own record to be corrected here.", "create")
    words = _words(text, "Say what is wrong or missing before sending.")
    if organisation and not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", organisation):
        raise FhirError(422, "Choose one of the organisations listed.", code="value")
    message: dict[str, Any] = {
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [CORRECTION], "text": CORRECTION["display"]}],
        "subject": {"reference": f"Patient/{pid}"}, "sender": {"reference": f"Patient/{pid}"},
        "sent": _now(), "payload": [{"contentString": words}]}
    if organisation:
        message["recipient"] = [{"reference": f"Organization/{organisation}"}]
    gate.create(who, message)
    return pid


def access_log(*, gate: Gate, who: Principal, mine: bool = False, everything: bool = False) -> dict[str, Any]:
    """Who looked at the person's record, newest first, in plain words (directory names, roles, what was opened);
    the person's own visits are left out unless `mine`."""
    pid = _person(gate, who, "This page is a person's view of their own record. Privacy officers see access logs under "
                       "Privacy reviews.", "search")
    gate.flush_audit()
    total, entries = gate.access_log(who, count=1000 if everything else 200)
    # the person's own visits are left out unless asked for; their sharing choices and carer grants never are
    shown = [e for e in entries if mine or e.get("practitioner") != f"Patient/{pid}"
             or e.get("action") in OWN_CHOICES or any(w.startswith("Consent/") for w in e.get("what") or ())]
    names: dict[str, str] = {}

    def name_of(ref: str) -> str:
        """The directory name of a practitioner or organisation (read through the gate, once per page)."""
        if ref not in names:
            rtype, _, rid = ref.partition("/")
            try:
                names[ref] = human_name(gate.read(who, rtype, rid).content)
            except FhirError:
                names[ref] = ""
        return names[ref]

    roles = rules()["roles"]
    carers = _carer_names(gate, who, pid) if any(e.get("role") == "carer" for e in shown) else {}
    for e in shown:
        org, prac = e.get("organisation") or "", e.get("practitioner") or ""
        e["organisation_name"] = name_of(org) if org.startswith("Organization/") else ""
        # in plain words: a professional's directory name, a carer's name as the person gave it; never an account
        e["who_name"] = (name_of(prac) if prac.startswith("Practitioner/") else "") or (
            "You" if prac == f"Patient/{pid}" else carers.get(e.get("who") or "", "") if e.get("role") == "carer"
            else "JoinedUp (automatic)" if e.get("role") == "system" else "")
        e["role_name"] = (roles.get(e.get("role") or "") or {}).get("display", e.get("role") or "")
        e["why"] = plain_reason(e)
        kinds = dict.fromkeys(PLAIN_TYPES.get(r.split("/", 1)[0], r.split("/", 1)[0]) for r in e.get("what") or []
                              if r)
        e["what_text"] = ", ".join(kinds)
    return {"total": total, "entries": shown, "all": everything, "mine": mine, "hidden": len(entries) - len(shown)}
